// Post-processing kernels: row scatters (16-byte vectors when rows allow), the swizzled scale scatter (one thread per
// scale byte), and the alpha derivations (one block; the max of the input scales is exact in any order).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/nvfp4_device.cuh"
#include "kernels/cuda/nvfp4_postprocess_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t items) { return static_cast<unsigned>((items + kThreads - 1) / kThreads); }

template <typename Vector>
__global__ void scatter_rows_kernel(const Vector* src, Vector* dst, int64_t n_matrices, int32_t n_rows,
                                    int64_t row_vectors, Nvfp4RowOrder order) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= n_matrices * n_rows * row_vectors) return;
  const int64_t column = index % row_vectors, matrix_row = index / row_vectors;
  const int64_t matrix = matrix_row / n_rows;
  const auto row = static_cast<int32_t>(matrix_row % n_rows);
  const int64_t to = (matrix * n_rows + nvfp4_physical_row_device(order, row, n_rows)) * row_vectors + column;
  dst[to] = src[index];
}

__global__ void scatter_scales_kernel(const uint8_t* src, uint8_t* dst, int64_t n_matrices, int32_t n_rows,
                                      int32_t scale_cols, int32_t padded_rows, int32_t padded_cols,
                                      Nvfp4RowOrder order) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= n_matrices * n_rows * scale_cols) return;
  const auto column = static_cast<int32_t>(index % scale_cols);
  const int64_t matrix_row = index / scale_cols, matrix = matrix_row / n_rows;
  const auto row = static_cast<int32_t>(matrix_row % n_rows);
  const int32_t physical = nvfp4_physical_row_device(order, row, n_rows);
  dst[matrix * padded_rows * padded_cols + swizzled_scale_offset(physical, column, padded_cols)] = src[index];
}

__global__ void linear_alphas_kernel(const float* weight_scale_2, const float* input_scale, int32_t n_shards,
                                     bool static_activations, float* alpha, float* input_scale_inv) {
  for (int32_t s = threadIdx.x; s < n_shards; s += blockDim.x) {
    const float act_scale = static_activations ? input_scale[s] : 1.0f;
    alpha[s] = __fmul_rn(act_scale, weight_scale_2[s]);
    input_scale_inv[s] = __fdiv_rn(1.0f, act_scale);
  }
}

__device__ float block_max(const float* values, int64_t n, float* shared) {
  float local = values[0];
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) local = fmaxf(local, values[i]);
  shared[threadIdx.x] = local;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + stride]);
    __syncthreads();
  }
  const float result = shared[0];
  __syncthreads();
  return result;
}

__global__ void moe_alphas_kernel(const MoeAlphaArgs a) {
  __shared__ float shared[kThreads];
  const float w13_input = a.static_activations ? block_max(a.w13_input_scale, 2 * a.n_experts, shared) : 1.0f;
  const float w2_input = a.static_activations ? block_max(a.w2_input_scale, a.n_experts, shared) : 1.0f;
  const float w2_quant = __fdiv_rn(1.0f, w2_input);
  if (threadIdx.x == 0) {
    *a.w13_input_scale_reduced = w13_input;
    *a.w2_input_scale_reduced = w2_input;
    *a.w13_input_scale_quant = __fdiv_rn(1.0f, w13_input);
    *a.w2_input_scale_quant = w2_quant;
  }
  for (int64_t i = threadIdx.x; i < 2 * a.n_experts; i += blockDim.x) {
    const float g1 = __fmul_rn(w13_input, a.w13_weight_scale_2[i]);
    a.g1_alphas[i] = g1;
    if (a.g1_scale_c != nullptr) a.g1_scale_c[i] = __fmul_rn(w2_quant, g1);
  }
  for (int64_t e = threadIdx.x; e < a.n_experts; e += blockDim.x)
    a.g2_alphas[e] = __fmul_rn(w2_input, a.w2_weight_scale_2[e]);
}

}  // namespace

void launch_scatter_rows(const uint8_t* src, uint8_t* dst, int64_t n_matrices, int32_t n_rows, int64_t row_bytes,
                         Nvfp4RowOrder order, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const bool vectors = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  if (vectors) {
    const int64_t row_vectors = row_bytes / 16;
    scatter_rows_kernel<<<blocks_for(n_matrices * n_rows * row_vectors), kThreads, 0, s>>>(
        reinterpret_cast<const uint4*>(src), reinterpret_cast<uint4*>(dst), n_matrices, n_rows, row_vectors, order);
  } else {
    scatter_rows_kernel<<<blocks_for(n_matrices * n_rows * row_bytes), kThreads, 0, s>>>(src, dst, n_matrices, n_rows,
                                                                                           row_bytes, order);
  }
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_scatter_scales(const uint8_t* src, uint8_t* dst, int64_t n_matrices, int32_t n_rows, int32_t scale_cols,
                           Nvfp4RowOrder order, void* stream) {
  const SwizzledScaleShape padded = swizzled_scale_shape(n_rows, scale_cols);
  scatter_scales_kernel<<<blocks_for(n_matrices * n_rows * scale_cols), kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(src, dst, n_matrices, n_rows, scale_cols,
                                                               static_cast<int32_t>(padded.padded_rows),
                                                               static_cast<int32_t>(padded.padded_cols), order);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_linear_alphas(const float* weight_scale_2, const float* input_scale, int32_t n_shards,
                          bool static_activations, float* alpha, float* input_scale_inv, void* stream) {
  linear_alphas_kernel<<<1, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(weight_scale_2, input_scale, n_shards,
                                                                              static_activations, alpha,
                                                                              input_scale_inv);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_alphas(const MoeAlphaArgs& args) {
  moe_alphas_kernel<<<1, kThreads, 0, static_cast<cudaStream_t>(args.stream)>>>(args);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
