// One thread per output element; rows * width is bounded by the forward's activation buffers.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/silu_mul.h"

namespace fp4serve::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void silu_mul_kernel(const bf16_bits* gate_up, int64_t rows, int64_t width, bf16_bits* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * width) return;
  const int64_t row = i / width, column = i % width;
  const float gate = __uint_as_float(static_cast<uint32_t>(gate_up[row * 2 * width + column]) << 16);
  const float up = __uint_as_float(static_cast<uint32_t>(gate_up[row * 2 * width + width + column]) << 16);
  const float silu = __bfloat162float(__float2bfloat16_rn(gate / (1.0f + expf(-gate))));
  out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(silu * up));
}

}  // namespace

void silu_mul_cuda(const bf16_bits* gate_up, int64_t rows, int64_t width, bf16_bits* out, void* stream) {
  const int64_t n = rows * width;
  if (n == 0) return;
  silu_mul_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                    static_cast<cudaStream_t>(stream)>>>(gate_up, rows, width, out);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
