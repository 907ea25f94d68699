// q/k-norm + RoPE kernel: one CTA per token, one warp per head (q heads, then k heads). cos/sin of the token's angles
// are computed once per CTA in double, as the CPU does, so the rotation sees the same fp32 factors.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/row_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxHalf = static_cast<int>(kMaxRopeHeadDim / 2);

struct InvFreq {
  float values[kMaxHalf];
};

__device__ float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ float round_bf16(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }
__device__ uint16_t f32_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

__global__ void qk_norm_rope_kernel(QkNormRopeArgs a, InvFreq inv_freq) {
  __shared__ float cos_table[kMaxHalf], sin_table[kMaxHalf];
  const int64_t token = blockIdx.x;
  const int half = static_cast<int>(a.head_dim / 2);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double angle = static_cast<double>(a.positions[token]) * static_cast<double>(inv_freq.values[i]);
    double s, c;
    sincos(angle, &s, &c);
    cos_table[i] = static_cast<float>(c);
    sin_table[i] = static_cast<float>(s);
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  for (int64_t h = threadIdx.x / 32; h < a.n_heads + a.n_kv_heads; h += kWarps) {
    const bool is_q = h < a.n_heads;
    bf16_bits* head = is_q ? a.q + token * a.q_row_stride + h * a.head_dim
                           : a.k + token * a.k_row_stride + (h - a.n_heads) * a.head_dim;
    const bf16_bits* weight = is_q ? a.q_norm_weight : a.k_norm_weight;
    float sum_squares = 0.0f;
    for (int i = lane; i < a.head_dim; i += 32) sum_squares += bf16_to_f32(head[i]) * bf16_to_f32(head[i]);
    for (int offset = 16; offset > 0; offset /= 2) sum_squares += __shfl_xor_sync(0xffffffffu, sum_squares, offset);
    const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(a.head_dim) + a.eps);
    // Each lane owns whole pairs (i, i + half): it reads both before writing either.
    for (int i = lane; i < half; i += 32) {
      const float x1 = round_bf16(round_bf16(bf16_to_f32(head[i]) * inv_rms) * bf16_to_f32(weight[i]));
      const float x2 = round_bf16(round_bf16(bf16_to_f32(head[i + half]) * inv_rms) * bf16_to_f32(weight[i + half]));
      // Explicit roundings: no fused multiply-add, as in the CPU's x1 c - x2 s.
      head[i] = f32_to_bf16(__fsub_rn(__fmul_rn(x1, cos_table[i]), __fmul_rn(x2, sin_table[i])));
      head[i + half] = f32_to_bf16(__fadd_rn(__fmul_rn(x2, cos_table[i]), __fmul_rn(x1, sin_table[i])));
    }
  }
}

}  // namespace

void launch_qk_norm_rope(const QkNormRopeArgs& args, const float* inv_freq) {
  if (args.n_tokens == 0) return;
  InvFreq table{};
  for (int64_t i = 0; i < args.head_dim / 2; ++i) table.values[i] = inv_freq[i];
  qk_norm_rope_kernel<<<static_cast<unsigned>(args.n_tokens), kWarps * 32, 0, static_cast<cudaStream_t>(args.stream)>>>(
      args, table);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
