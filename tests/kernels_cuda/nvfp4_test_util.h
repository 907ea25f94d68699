// Shared by the NVFP4 CUDA kernel tests: guarded device buffers, a seeded generator, quantized test weights with
// planted edge cases (zero block, subnormal scale, amax row), and their device form in any row order with the
// swizzled scales' padding poisoned (e4m3 NaN), so a kernel that reads padding fails. Needs the CUDA backend.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "format/bf16.h"
#include "format/layout.h"
#include "format/nvfp4.h"
#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_gemm.h"

namespace fp4serve::test {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(status));
}

// Device allocation fenced by kGuardBytes of a known pattern on each side.
class GuardedBuffer {
 public:
  static constexpr size_t kGuardBytes = 512;
  static constexpr uint8_t kGuardByte = 0xA5;
  explicit GuardedBuffer(size_t bytes) : bytes_(bytes) {
    check_cuda(cudaMalloc(&base_, bytes + 2 * kGuardBytes), "cudaMalloc");
    check_cuda(cudaMemset(base_, kGuardByte, bytes + 2 * kGuardBytes), "cudaMemset");
  }
  ~GuardedBuffer() { cudaFree(base_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  template <typename T>
  T* data() const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(base_) + kGuardBytes);
  }
  void upload(const void* host) {
    check_cuda(cudaMemcpy(data<uint8_t>(), host, bytes_, cudaMemcpyHostToDevice), "upload");
  }
  void download(void* host) const {
    check_cuda(cudaMemcpy(host, data<uint8_t>(), bytes_, cudaMemcpyDeviceToHost), "download");
  }
  void fill(uint8_t byte) { check_cuda(cudaMemset(data<uint8_t>(), byte, bytes_), "cudaMemset"); }
  bool guards_intact() const {
    std::vector<uint8_t> guard(kGuardBytes);
    for (const uint8_t* start : {static_cast<const uint8_t*>(base_), data<const uint8_t>() + bytes_}) {
      check_cuda(cudaMemcpy(guard.data(), start, kGuardBytes, cudaMemcpyDeviceToHost), "guard download");
      if (std::any_of(guard.begin(), guard.end(), [](uint8_t b) { return b != kGuardByte; })) return false;
    }
    return true;
  }

 private:
  void* base_ = nullptr;
  size_t bytes_;
};

// splitmix64: fast, fixed-seed reproducible.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * 0x1p-24f; }  // [0, 1)
  float normal() {  // Irwin-Hall: sum of 4 uniforms, centred, unit variance; good enough for test data
    return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f;
  }

 private:
  uint64_t state_;
};

struct Shard {
  int64_t rows;
  float stddev;
};

// A quantized linear in the checkpoint layout (linear rows and scales) plus its exact dequantization.
struct HostWeight {
  int64_t n = 0, k = 0;
  std::vector<uint8_t> packed;                 // [n, k/2] e2m1, low nibble first
  std::vector<uint8_t> scales;                 // [n, k/16] e4m3, linear
  std::vector<float> dequantized;              // [n, k] e2m1 * e4m3, exact
  std::vector<float> row_alpha;                // [n] weight_scale_2 of the row's shard
  std::vector<cuda::Nvfp4AlphaRange> alphas;
};

// Random bf16 weights per shard, with edge cases planted: an all-zero block, a block small enough for a subnormal
// e4m3 scale, and a row holding the tensor's amax (scale 448, codes +-6).
inline HostWeight make_weight(int64_t k, const std::vector<Shard>& shards, Random& random) {
  HostWeight w;
  w.k = k;
  for (const Shard& s : shards) w.n += s.rows;
  w.packed.resize(w.n * k / 2);
  w.scales.resize(w.n * k / 16);
  w.dequantized.resize(w.n * k);
  w.row_alpha.resize(w.n);
  int64_t first_row = 0;
  for (const Shard& shard : shards) {
    std::vector<bf16_bits> values(shard.rows * k);
    for (auto& v : values) v = float_to_bf16(random.normal() * shard.stddev);
    for (int64_t i = 0; i < 16; ++i) values[i] = 0;                                       // zero block
    for (int64_t i = 16; i < 32 && i < k; ++i) values[i] = float_to_bf16(5e-5f * shard.stddev * random.normal());
    values[(shard.rows - 1) * k] = float_to_bf16(-8.0f * shard.stddev);                   // the amax
    const float global_scale = nvfp4_global_scale(amax_abs(values.data(), shard.rows * k));
    nvfp4_quantize(values.data(), shard.rows, k, global_scale, w.packed.data() + first_row * k / 2,
                   w.scales.data() + first_row * k / 16);
    nvfp4_dequantize(w.packed.data() + first_row * k / 2, w.scales.data() + first_row * k / 16, 1.0f, shard.rows, k,
                     w.dequantized.data() + first_row * k);
    std::fill(w.row_alpha.begin() + first_row, w.row_alpha.begin() + first_row + shard.rows, global_scale);
    first_row += shard.rows;
    w.alphas.push_back({first_row, global_scale});
  }
  return w;
}

// The weight as a kernel reads it: rows in `order`, scales swizzled over the physical rows, padding poisoned.
// The weight's bytes as a kernel reads them: rows in `order`, scales swizzled over the physical rows, padding
// poisoned.
struct DeviceLayout {
  std::vector<uint8_t> packed, scales;
};
inline DeviceLayout device_layout(const HostWeight& w, Nvfp4RowOrder order) {
  const ByteMatrixShape code_shape{1, w.n, w.k / 2, "packed"}, scale_shape{1, w.n, w.k / 16, "scales"};
  const SwizzledScaleShape padded = swizzled_scale_shape(w.n, w.k / 16);
  DeviceLayout layout{w.packed, std::vector<uint8_t>(static_cast<size_t>(padded.padded_rows * padded.padded_cols))};
  std::vector<uint8_t> linear_scales = w.scales;
  if (order == Nvfp4RowOrder::GatedShuffled) {
    reorder_rows_gated_in_place(layout.packed.data(), code_shape);
    reorder_rows_gated_in_place(linear_scales.data(), scale_shape);
  }
  if (order == Nvfp4RowOrder::Linear) {
    swizzle_block_scales(linear_scales.data(), scale_shape, layout.scales.data());
  } else {
    shuffle_rows_in_place(layout.packed.data(), code_shape);
    shuffle_swizzle_block_scales(linear_scales.data(), scale_shape, layout.scales.data());
  }
  std::vector<bool> used(layout.scales.size(), false);
  for (int64_t m = 0; m < w.n; ++m)
    for (int64_t b = 0; b < w.k / 16; ++b) used[swizzled_scale_offset(m, b, padded.padded_cols)] = true;
  for (size_t i = 0; i < layout.scales.size(); ++i)
    if (!used[i]) layout.scales[i] = 0x7F;  // e4m3 NaN
  return layout;
}

struct DeviceWeight {
  GuardedBuffer packed, scales;
  DeviceWeight(const HostWeight& w, Nvfp4RowOrder order) : DeviceWeight(device_layout(w, order)) {}
  explicit DeviceWeight(const DeviceLayout& layout) : packed(layout.packed.size()), scales(layout.scales.size()) {
    packed.upload(layout.packed.data());
    scales.upload(layout.scales.data());
  }
};

inline std::vector<bf16_bits> random_activations(int64_t m, int64_t k, Random& random) {
  std::vector<bf16_bits> x(m * k);
  for (auto& v : x) v = float_to_bf16(random.normal());
  return x;
}

// Output rounding to bf16 moves an element by at most 2^-9 of itself; fp32 accumulation (any order) by far less
// than 2^-14 of sum |x w|. Normwise, bf16 rounding alone gives about 2^-9 / sqrt(3) = 1.1e-3.
inline constexpr double kElementRelative = 0x1p-8, kElementAbsolute = 0x1p-14, kNormRelative = 3e-3;

// Checks y[t, :] (bf16, w.n per row) against x[t, :] . dequant(W)^T * alpha summed in float64, for each t listed:
// every element within kElementRelative of itself plus kElementAbsolute of sum |x w|, and the normwise error.
inline void expect_rows_match_reference(const HostWeight& w, const bf16_bits* x, const bf16_bits* y,
                                        const std::vector<int64_t>& tokens, const std::string& what) {
  std::vector<double> reference(tokens.size() * w.n), magnitude(tokens.size() * w.n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(reference.size()); ++i) {
    const int64_t t = tokens[i / w.n], n = i % w.n;
    double sum = 0.0, abs_sum = 0.0;
    for (int64_t kk = 0; kk < w.k; ++kk) {
      const double product = static_cast<double>(bf16_to_float(x[t * w.k + kk])) * w.dequantized[n * w.k + kk];
      sum += product;
      abs_sum += std::fabs(product);
    }
    reference[i] = sum * w.row_alpha[n];
    magnitude[i] = abs_sum * std::fabs(w.row_alpha[n]);
  }
  double error_squares = 0.0, reference_squares = 0.0;
  int64_t bad = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const int64_t t = tokens[i / w.n], n = static_cast<int64_t>(i % w.n);
    const double got = bf16_to_float(y[t * w.n + n]), error = std::fabs(got - reference[i]);
    error_squares += error * error;
    reference_squares += reference[i] * reference[i];
    if (!(error <= kElementRelative * std::fabs(reference[i]) + kElementAbsolute * magnitude[i]) && bad++ < 5)
      ADD_FAILURE() << what << ": y[" << t << ", " << n << "] = " << got << ", reference " << reference[i];
  }
  EXPECT_EQ(bad, 0) << what << ": elements out of tolerance";
  if (reference_squares > 0) {
    EXPECT_LE(std::sqrt(error_squares / reference_squares), kNormRelative) << what;
  }
}

}  // namespace fp4serve::test
