// One 512-thread block per row: a strided pass for the maximum, a strided pass for the sum of exponentials, each
// finished by the same shared-memory tree, so the summation order is fixed by the vocabulary size alone.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/logits_normalizer.h"

namespace fp4serve::cuda {
namespace {

constexpr int kThreads = 512;

__device__ float bf16_value(bf16_bits bits) { return __uint_as_float(static_cast<uint32_t>(bits) << 16); }

// Tree reduction of one value per thread; every thread gets the result.
template <typename Combine>
__device__ float block_reduce(float value, float* shared, Combine combine) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] = combine(shared[threadIdx.x], shared[threadIdx.x + half]);
    __syncthreads();
  }
  const float result = shared[0];
  __syncthreads();
  return result;
}

__global__ void log_normalizer_kernel(const bf16_bits* logits, int64_t vocab, float* out) {
  __shared__ float shared[kThreads];
  const bf16_bits* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float local_max = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) local_max = fmaxf(local_max, bf16_value(row[v]));
  const float max = block_reduce(local_max, shared, [](float a, float b) { return fmaxf(a, b); });
  float local_sum = 0.0f;
  if (max > -INFINITY)
    for (int64_t v = threadIdx.x; v < vocab; v += kThreads) local_sum += expf(bf16_value(row[v]) - max);
  const float sum = block_reduce(local_sum, shared, [](float a, float b) { return a + b; });
  if (threadIdx.x == 0) out[blockIdx.x] = max + logf(sum);
}

}  // namespace

void logits_log_normalizer_cuda(const bf16_bits* logits, int64_t rows, int64_t vocab, float* out, void* stream) {
  if (rows == 0) return;
  log_normalizer_kernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(logits,
                                                                                                       vocab, out);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
