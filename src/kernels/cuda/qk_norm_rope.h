// Qwen3's per-head q/k RMSNorm followed by neox RoPE, fused: each head is read and written once. The CUDA twin of
// rmsnorm_cpu over head_dim then rope_neox_cpu (same roundings; cos/sin of the double angle, as the CPU computes
// them). q and k may be views into one fused qkv projection output. Device pointers; asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve::cuda {

inline constexpr int64_t kMaxRopeHeadDim = 256;

struct QkNormRopeArgs {
  bf16_bits* q = nullptr;  // [n_tokens, row stride q_row_stride] holding n_heads heads of head_dim, in place
  int64_t q_row_stride = 0;
  int64_t n_heads = 0;
  bf16_bits* k = nullptr;  // [n_tokens, row stride k_row_stride] holding n_kv_heads heads, in place
  int64_t k_row_stride = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;                      // even, <= kMaxRopeHeadDim
  const bf16_bits* q_norm_weight = nullptr;  // [head_dim] bf16
  const bf16_bits* k_norm_weight = nullptr;  // [head_dim] bf16
  const int32_t* positions = nullptr;        // [n_tokens] device int32, >= 0
  int64_t n_tokens = 0;
  float eps = 0.0f;
  double theta = 0.0;  // rope_theta
  void* stream = nullptr;
};

void qk_norm_rope_cuda(const QkNormRopeArgs& args);

}  // namespace fp4serve::cuda
