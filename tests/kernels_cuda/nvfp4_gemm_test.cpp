// NVFP4 W4A16 GEMM paths (Auto, the streaming kernel with few warps, dequantize + cuBLAS) against a float64 CPU
// reference: weights quantized by format/nvfp4.h and dequantized from the LINEAR scale layout (so the kernels' swizzle
// and row-shuffle indexing is checked independently), x . W^T summed in double. Fresh random inputs per case; outputs
// are poisoned (NaN) before a run and fenced by guard bytes; the swizzled scales' padding is poisoned with e4m3 NaN.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "format/bf16.h"
#include "format/layout.h"
#include "format/nvfp4.h"
#include "kernels/cuda/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_kernels.h"
#endif

namespace fp4serve {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(Nvfp4GemmCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

#define SKIP_WITHOUT_GPU()                                                                         \
  if (cuda_device_count() == 0)                                                                    \
  GTEST_SKIP() << "no CUDA device on this machine; the NVFP4 GEMM tests run on the device machine"

void check_cuda(cudaError_t status, const char* what) {
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
HostWeight make_weight(int64_t k, const std::vector<Shard>& shards, Random& random) {
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
struct DeviceWeight {
  GuardedBuffer packed, scales;
  DeviceWeight(const HostWeight& w, Nvfp4RowOrder order)
      : packed(w.packed.size()),
        scales(static_cast<size_t>(swizzled_scale_shape(w.n, w.k / 16).padded_rows *
                                   swizzled_scale_shape(w.n, w.k / 16).padded_cols)) {
    const ByteMatrixShape code_shape{1, w.n, w.k / 2, "packed"}, scale_shape{1, w.n, w.k / 16, "scales"};
    const SwizzledScaleShape padded = swizzled_scale_shape(w.n, w.k / 16);
    std::vector<uint8_t> codes = w.packed, linear_scales = w.scales;
    std::vector<uint8_t> swizzled(static_cast<size_t>(padded.padded_rows * padded.padded_cols));
    if (order == Nvfp4RowOrder::GatedShuffled) {
      reorder_rows_gated_in_place(codes.data(), code_shape);
      reorder_rows_gated_in_place(linear_scales.data(), scale_shape);
    }
    if (order == Nvfp4RowOrder::Linear) {
      swizzle_block_scales(linear_scales.data(), scale_shape, swizzled.data());
    } else {
      shuffle_rows_in_place(codes.data(), code_shape);
      shuffle_swizzle_block_scales(linear_scales.data(), scale_shape, swizzled.data());
    }
    std::vector<bool> used(swizzled.size(), false);
    for (int64_t m = 0; m < w.n; ++m)
      for (int64_t b = 0; b < w.k / 16; ++b) used[swizzled_scale_offset(m, b, padded.padded_cols)] = true;
    for (size_t i = 0; i < swizzled.size(); ++i)
      if (!used[i]) swizzled[i] = 0x7F;  // e4m3 NaN
    packed.upload(codes.data());
    scales.upload(swizzled.data());
  }
};

std::vector<bf16_bits> random_activations(int64_t m, int64_t k, Random& random) {
  std::vector<bf16_bits> x(m * k);
  for (auto& v : x) v = float_to_bf16(random.normal());
  return x;
}

enum class Kernel { Auto, StreamingFewWarps, DequantCublas };
const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::Auto: return "Auto";
    case Kernel::StreamingFewWarps: return "StreamingFewWarps";
    case Kernel::DequantCublas: return "DequantCublas";
  }
  return "?";
}

void run_kernel(Kernel kernel, cuda::Nvfp4GemmContext& context, const cuda::Nvfp4GemmArgs& args) {
  if (kernel == Kernel::Auto || kernel == Kernel::DequantCublas) {
    cuda::Nvfp4GemmArgs public_args = args;
    public_args.path = kernel == Kernel::Auto ? cuda::Nvfp4GemmPath::Auto : cuda::Nvfp4GemmPath::DequantCublas;
    cuda::nvfp4_gemm_w4a16(context, public_args);
    return;
  }
  // The other kernels are reached directly, so that every tile shape is covered whatever Auto would pick.
  cuda::Nvfp4LaunchArgs launch{};
  launch.x = args.x;
  launch.m = static_cast<int32_t>(args.m);
  launch.packed = args.weight.packed;
  launch.block_scales = args.weight.block_scales;
  launch.n = static_cast<int32_t>(args.weight.n_rows);
  launch.k = static_cast<int32_t>(args.weight.k);
  launch.order = args.weight.row_order;
  launch.alphas.count = static_cast<int32_t>(args.alphas.size());
  for (size_t i = 0; i < args.alphas.size(); ++i) {
    launch.alphas.row_end[i] = static_cast<int32_t>(args.alphas[i].row_end);
    launch.alphas.alpha[i] = args.alphas[i].alpha;
  }
  launch.y = args.y;
  switch (kernel) {
    case Kernel::StreamingFewWarps: cuda::launch_nvfp4_streaming(launch, 3); break;
    default: break;
  }
}

struct GemmCase {
  std::string shape_name;  // Qwen3-30B-A3B layer, or "odd"
  int64_t k;
  std::vector<Shard> shards;
  int64_t m;
  Kernel kernel;
  Nvfp4RowOrder order;
};

std::string case_name(const testing::TestParamInfo<GemmCase>& info) {
  const GemmCase& c = info.param;
  const char* order = c.order == Nvfp4RowOrder::Linear ? "" : c.order == Nvfp4RowOrder::Shuffled ? "_shuffled"
                                                                                                  : "_gated";
  return c.shape_name + "_m" + std::to_string(c.m) + "_" + kernel_name(c.kernel) + order;
}

// Output rounding to bf16 moves an element by at most 2^-9 of itself; fp32 accumulation (any order) by far less
// than 2^-14 of sum |x w|. Normwise, bf16 rounding alone gives about 2^-9 / sqrt(3) = 1.1e-3.
constexpr double kElementRelative = 0x1p-8, kElementAbsolute = 0x1p-14, kNormRelative = 3e-3;

class Nvfp4GemmTest : public testing::TestWithParam<GemmCase> {};

TEST_P(Nvfp4GemmTest, MatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const GemmCase& c = GetParam();
  Random random(std::hash<std::string>{}(case_name({c, 0})));
  const HostWeight w = make_weight(c.k, c.shards, random);
  const DeviceWeight device_weight(w, c.order);
  const std::vector<bf16_bits> x = random_activations(c.m, c.k, random);
  GuardedBuffer x_device(x.size() * sizeof(bf16_bits)), y_device(static_cast<size_t>(c.m * w.n) * sizeof(bf16_bits));
  x_device.upload(x.data());
  y_device.fill(0xFF);  // bf16 NaN: an element the kernel does not write fails the comparison

  cuda::Nvfp4GemmContext context;
  cuda::Nvfp4GemmArgs args;
  args.x = x_device.data<bf16_bits>();
  args.m = c.m;
  args.weight = {device_weight.packed.data<uint8_t>(), device_weight.scales.data<uint8_t>(), w.n, w.k, c.order};
  args.alphas = w.alphas;
  args.y = y_device.data<bf16_bits>();
  run_kernel(c.kernel, context, args);
  check_cuda(cudaDeviceSynchronize(), "kernel");
  std::vector<bf16_bits> y(c.m * w.n);
  y_device.download(y.data());
  EXPECT_TRUE(y_device.guards_intact()) << "the kernel wrote outside y";

  // Every token for small m; for large m a fixed sample including the first and last (keeps the test fast).
  std::vector<int64_t> tokens;
  for (int64_t t = 0; t < c.m; t += c.m <= 16 ? 1 : c.m / 13) tokens.push_back(t);
  if (tokens.back() != c.m - 1) tokens.push_back(c.m - 1);
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
      ADD_FAILURE() << "y[" << t << ", " << n << "] = " << got << ", reference " << reference[i];
  }
  EXPECT_EQ(bad, 0) << "elements out of tolerance";
  EXPECT_LE(std::sqrt(error_squares / reference_squares), kNormRelative);
}

std::vector<GemmCase> gemm_cases() {
  struct Layer {
    std::string name;
    int64_t k;
    std::vector<Shard> shards;
  };
  // Qwen3-30B-A3B: fused q/k/v (three alphas), o_proj, one expert's gate/up (two alphas) and down; then an odd shape
  // whose scales need padding in both directions (96 rows, K/16 = 3 blocks).
  const std::vector<Layer> layers = {
      {"qkv", 2048, {{4096, 0.02f}, {512, 0.05f}, {512, 0.01f}}},
      {"o_proj", 4096, {{2048, 0.02f}}},
      {"gate_up", 2048, {{768, 0.03f}, {768, 0.015f}}},
      {"down", 768, {{2048, 0.04f}}},
      {"odd", 48, {{96, 1.0f}}},
  };
  std::vector<GemmCase> cases;
  for (const Layer& layer : layers)
    for (int64_t m : {1, 3, 16, 100, 512}) {
      // Auto streams for m <= 32 (then cuBLAS); the cuBLAS path runs at every m, and the streaming kernel with 3
      // warps per CTA (several batches of steps per warp, warps' steps interleaved) wherever it applies.
      std::vector<Kernel> kernels = {Kernel::Auto, Kernel::DequantCublas};
      if (m <= cuda::kNvfp4StreamingMaxTokens) kernels.push_back(Kernel::StreamingFewWarps);
      for (Kernel kernel : kernels)
        cases.push_back({layer.name, layer.k, layer.shards, m, kernel, Nvfp4RowOrder::Linear});
    }
  // TRT-LLM layouts (n % 128 == 0): a plain shuffle on qkv, the gated reorder + shuffle on gate_up.
  for (Kernel kernel : {Kernel::Auto, Kernel::StreamingFewWarps, Kernel::DequantCublas}) {
    cases.push_back({"qkv", 2048, layers[0].shards, 3, kernel, Nvfp4RowOrder::Shuffled});
    cases.push_back({"gate_up", 2048, layers[2].shards, 16, kernel, Nvfp4RowOrder::GatedShuffled});
  }
  cases.push_back({"gate_up", 2048, layers[2].shards, 512, Kernel::Auto, Nvfp4RowOrder::GatedShuffled});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Qwen3Shapes, Nvfp4GemmTest, testing::ValuesIn(gemm_cases()), case_name);

TEST(Nvfp4GemmCuda, ZeroTokensWritesNothing) {
  SKIP_WITHOUT_GPU();
  Random random(7);
  const HostWeight w = make_weight(64, {{32, 1.0f}}, random);
  const DeviceWeight device_weight(w, Nvfp4RowOrder::Linear);
  GuardedBuffer x_device(64 * sizeof(bf16_bits)), y_device(32 * sizeof(bf16_bits));
  y_device.fill(0x11);
  cuda::Nvfp4GemmContext context;
  cuda::Nvfp4GemmArgs args;
  args.x = x_device.data<bf16_bits>();
  args.weight = {device_weight.packed.data<uint8_t>(), device_weight.scales.data<uint8_t>(), w.n, w.k,
                 Nvfp4RowOrder::Linear};
  args.alphas = w.alphas;
  args.y = y_device.data<bf16_bits>();
  cuda::nvfp4_gemm_w4a16(context, args);
  check_cuda(cudaDeviceSynchronize(), "sync");
  std::vector<bf16_bits> y(32);
  y_device.download(y.data());
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](bf16_bits v) { return v == 0x1111; }));
  EXPECT_TRUE(y_device.guards_intact());
}

// Bad arguments are rejected on the host before any launch, so these run wherever the CUDA backend is built.
class Nvfp4GemmArgumentTest : public testing::Test {
 protected:
  void expect_rejected(const cuda::Nvfp4GemmArgs& args, const std::string& expected) {
    try {
      cuda::nvfp4_gemm_w4a16(context_, args);
      ADD_FAILURE() << "accepted; expected an error mentioning '" << expected << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
  cuda::Nvfp4GemmArgs valid_args() {
    cuda::Nvfp4GemmArgs args;
    args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x10000});  // never dereferenced: rejected first
    args.m = 4;
    args.weight = {reinterpret_cast<const uint8_t*>(uintptr_t{0x20000}),
                   reinterpret_cast<const uint8_t*>(uintptr_t{0x30000}), 256, 128, Nvfp4RowOrder::Linear};
    args.alphas = alphas_;
    args.y = reinterpret_cast<bf16_bits*>(uintptr_t{0x40000});
    return args;
  }
  cuda::Nvfp4GemmContext context_;
  std::vector<cuda::Nvfp4AlphaRange> alphas_ = {{192, 0.5f}, {256, 0.25f}};
};

TEST_F(Nvfp4GemmArgumentTest, RejectsKNotAMultipleOf16) {
  auto args = valid_args();
  args.weight.k = 120;
  expect_rejected(args, "weight.k = 120");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsAlphaRangesThatDoNotCoverTheRows) {
  auto args = valid_args();
  const std::vector<cuda::Nvfp4AlphaRange> short_ranges = {{192, 0.5f}};
  args.alphas = short_ranges;
  expect_rejected(args, "alphas cover rows [0, 192)");
  const std::vector<cuda::Nvfp4AlphaRange> decreasing = {{192, 0.5f}, {100, 0.5f}, {256, 0.5f}};
  args.alphas = decreasing;
  expect_rejected(args, "alphas[1].row_end = 100");
  const std::vector<cuda::Nvfp4AlphaRange> not_finite = {{256, NAN}};
  args.alphas = not_finite;
  expect_rejected(args, "alphas[0].alpha");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsShuffledRowsNotAMultipleOf32) {
  auto args = valid_args();
  args.weight.n_rows = 48;
  const std::vector<cuda::Nvfp4AlphaRange> ranges = {{48, 1.0f}};
  args.alphas = ranges;
  args.weight.row_order = Nvfp4RowOrder::Shuffled;
  expect_rejected(args, "n_rows % 32 == 0");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsMisalignedOrMissingPointers) {
  auto args = valid_args();
  args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x10002});
  expect_rejected(args, "x must be");
  args = valid_args();
  args.weight.block_scales = nullptr;
  expect_rejected(args, "weight.block_scales");
}

TEST_F(Nvfp4GemmArgumentTest, RejectsTooManyTokensForTheStreamingPath) {
  auto args = valid_args();
  args.m = 33;
  args.path = cuda::Nvfp4GemmPath::Streaming;
  expect_rejected(args, "m <= 32");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve
