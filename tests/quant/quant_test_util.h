// Test helpers for the quantization methods: random bf16 data, an in-memory "checkpoint" (name -> host tensor),
// a minimal loader that applies bindings by memcpy, and snapshots of every parameter's address and bytes.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "format/bf16.h"
#include "format/nvfp4.h"
#include "quant/method.h"
#include "tensor/parameter.h"

namespace fp4serve::test {

using TensorMap = std::map<std::string, Tensor>;

inline std::vector<bf16_bits> random_bf16(size_t n, uint32_t seed, float stddev = 0.05f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<bf16_bits> out(n);
  for (auto& v : out) v = float_to_bf16(dist(rng));
  return out;
}

inline std::vector<float> random_activations(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> out(static_cast<size_t>(m * k));
  for (auto& v : out) v = round_to_bf16(dist(rng));
  return out;
}

template <typename T>
Tensor host_tensor(const Shape& shape, DType dtype, const std::vector<T>& values) {
  Tensor t = Tensor::empty(shape, dtype, Device::CPU);
  EXPECT_EQ(t.nbytes(), values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.raw(), values.data(), t.nbytes());  // an empty vector's data() may be null
  return t;
}

inline Tensor scalar_f32(float value) { return host_tensor<float>({}, DType::F32, {value}); }

// An NVFP4 projection as a ModelOpt checkpoint holds it.
struct QuantizedProjection {
  std::vector<bf16_bits> source;  // [rows, k] bf16 it was made from
  std::vector<uint8_t> packed;    // [rows, k/2]
  std::vector<uint8_t> scales;    // [rows, k/16]
  float weight_scale_2;
};

// Quantizes random bf16 data with its own global scale times `scale_2_factor` (so fused shards can differ).
inline QuantizedProjection make_projection(int64_t rows, int64_t k, uint32_t seed, float scale_2_factor = 1.0f) {
  QuantizedProjection p;
  p.source = random_bf16(static_cast<size_t>(rows * k), seed);
  p.weight_scale_2 = nvfp4_global_scale(amax_abs(p.source.data(), rows * k)) * scale_2_factor;
  p.packed.resize(static_cast<size_t>(rows * k / 2));
  p.scales.resize(static_cast<size_t>(rows * k / 16));
  nvfp4_quantize(p.source.data(), rows, k, p.weight_scale_2, p.packed.data(), p.scales.data());
  return p;
}

// Adds `<prefix>.weight`, `.weight_scale`, `.weight_scale_2`, `.input_scale` to a checkpoint.
inline void add_projection(TensorMap& checkpoint, const std::string& prefix, const QuantizedProjection& p, int64_t rows,
                           int64_t k, float input_scale) {
  checkpoint[prefix + ".weight"] = host_tensor({rows, k / 2}, DType::U8, p.packed);
  checkpoint[prefix + ".weight_scale"] = host_tensor({rows, k / 16}, DType::F8_E4M3, p.scales);
  checkpoint[prefix + ".weight_scale_2"] = scalar_f32(p.weight_scale_2);
  checkpoint[prefix + ".input_scale"] = scalar_f32(input_scale);
}

// The lead's loader in miniature: every binding's tensor memcpy'd into its parameter (absent optional ones skipped).
inline void load_bindings(ParameterSet& params, const std::vector<CheckpointBinding>& bindings,
                          const TensorMap& checkpoint) {
  for (const auto& b : bindings) {
    auto it = checkpoint.find(b.checkpoint_name);
    if (it == checkpoint.end()) {
      ASSERT_TRUE(b.optional) << "missing " << b.checkpoint_name;
      continue;
    }
    const Tensor& src = it->second;
    ASSERT_EQ(src.dtype, b.dtype) << b.checkpoint_name;
    ASSERT_EQ(src.shape, b.shape) << b.checkpoint_name;
    const Tensor& param = params.get(b.param);
    ASSERT_LE(b.byte_offset + src.nbytes(), param.nbytes()) << b.checkpoint_name;
    std::memcpy(param.raw() + b.byte_offset, src.raw(), src.nbytes());
  }
}

// Every name's storage address and bytes.
struct ParamSnapshot {
  std::map<std::string, const uint8_t*> address;
  std::map<std::string, std::vector<uint8_t>> bytes;
};
inline ParamSnapshot snapshot(const ParameterSet& params) {
  ParamSnapshot s;
  for (const auto& name : params.names()) {
    const Tensor& t = params.get(name);
    s.address[name] = t.raw();
    s.bytes[name].assign(t.raw(), t.raw() + t.nbytes());
  }
  return s;
}

inline std::vector<uint8_t> bytes_of(const Tensor& t) { return {t.raw(), t.raw() + t.nbytes()}; }

// Exact W_q = e2m1 * e4m3 values of a checkpoint projection (nvfp4_dequantize with global scale 1).
inline std::vector<float> dequantize_unit(const std::vector<uint8_t>& packed, const std::vector<uint8_t>& scales,
                                          int64_t rows, int64_t k) {
  std::vector<float> out(static_cast<size_t>(rows * k));
  nvfp4_dequantize(packed.data(), scales.data(), 1.0f, rows, k, out.data());
  return out;
}

// Elementwise check against a float64 reference: |y - ref| <= rel * |ref| + abs_tol.
inline void expect_close(const std::vector<float>& y, const std::vector<double>& ref, double rel, double abs_tol,
                         const std::string& what) {
  ASSERT_EQ(y.size(), ref.size());
  int reported = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(y[i]) - ref[i]);
    if (!(diff <= rel * std::fabs(ref[i]) + abs_tol) && reported++ < 5)
      ADD_FAILURE() << what << ": element " << i << " is " << y[i] << ", reference " << ref[i];
  }
}

// ||y - ref|| / ||ref||.
inline double relative_error(const std::vector<float>& y, const std::vector<double>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    diff += (y[i] - ref[i]) * (y[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace fp4serve::test
