// RMSNorm over the last dimension, as Qwen3 (HF Qwen3RMSNorm) computes it: fp32 statistics, the normalized row
// rounded to bf16, then multiplied by the bf16 weight and rounded to bf16 again. Rows are independent, so the same
// op serves the per-layer norms (rows = tokens) and q/k norms (rows = tokens * heads, dim = head_dim).
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve {

// out[r, i] = bf16(bf16(x[r, i] * rsqrt(mean_i(x[r, :]^2) + eps)) * weight[i]). x and out may alias.
void rmsnorm_cpu(const float* x,           // [rows, dim] f32 (bf16-representable)
                 const bf16_bits* weight,  // [dim] bf16
                 int64_t rows, int64_t dim, float eps,
                 float* out);  // [rows, dim] f32, bf16-representable
}  // namespace fp4serve
