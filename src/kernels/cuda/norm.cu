// RMSNorm kernels: one CTA per row, a fixed-shape tree reduction of the fp32 sum of squares (deterministic).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/row_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int kThreads = 256;

__device__ float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ float round_bf16(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }
__device__ uint16_t f32_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Sum over the CTA, same tree every call; every thread gets the result.
__device__ float block_sum(float x) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = x;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums may be reused by the caller's next block_sum
  return total;
}

__global__ void rmsnorm_kernel(bf16_bits* residual, const bf16_bits* x, const bf16_bits* weight, int64_t dim, float eps,
                               bf16_bits* out) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * dim;
  float sum_squares = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    float value = bf16_to_f32(x[base + i]);
    if (residual != nullptr) {
      value = round_bf16(bf16_to_f32(residual[base + i]) + value);
      residual[base + i] = f32_to_bf16(value);
    }
    sum_squares += value * value;
  }
  const float inv_rms = 1.0f / sqrtf(block_sum(sum_squares) / static_cast<float>(dim) + eps);
  const bf16_bits* source = residual != nullptr ? residual : x;  // each thread rereads only what it wrote
  for (int64_t i = threadIdx.x; i < dim; i += kThreads)
    out[base + i] = f32_to_bf16(round_bf16(bf16_to_f32(source[base + i]) * inv_rms) * bf16_to_f32(weight[i]));
}

}  // namespace

void launch_rmsnorm(bf16_bits* residual, const bf16_bits* x, const bf16_bits* weight, int64_t rows, int64_t dim,
                    float eps, bf16_bits* out, void* stream) {
  if (rows == 0) return;
  rmsnorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(residual, x, weight,
                                                                                                  dim, eps, out);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
