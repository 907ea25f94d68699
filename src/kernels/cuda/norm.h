// RMSNorm on the GPU, the CUDA twin of rmsnorm_cpu (and of residual_add_cpu fused before it, Qwen3's pre-norm
// pattern): bf16 rows in and out, fp32 statistics, the same two bf16 roundings. Rows are independent; each row's sum
// of squares is reduced in a fixed order. All pointers are device memory; calls are asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve::cuda {

// out[r, i] = bf16(bf16(x[r, i] * rsqrt(mean_i(x[r, :]^2) + eps)) * weight[i]). x and out may alias.
void rmsnorm_cuda(const bf16_bits* x,       // [rows, dim] bf16
                  const bf16_bits* weight,  // [dim] bf16
                  int64_t rows, int64_t dim, float eps,
                  bf16_bits* out,  // [rows, dim] bf16
                  void* stream);

// residual = bf16(residual + delta) (fp32 sum), then out = rmsnorm(residual): the residual add after a block and the
// next block's input norm in one pass. delta and out may alias; residual aliases neither.
void fused_add_rmsnorm_cuda(bf16_bits* residual,      // [rows, dim] bf16, updated in place
                            const bf16_bits* delta,   // [rows, dim] bf16
                            const bf16_bits* weight,  // [dim] bf16
                            int64_t rows, int64_t dim, float eps,
                            bf16_bits* out,  // [rows, dim] bf16
                            void* stream);

}  // namespace fp4serve::cuda
