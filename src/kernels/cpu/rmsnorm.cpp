#include "kernels/cpu/rmsnorm.h"

#include <cmath>

#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void rmsnorm_cpu(const float* x, const bf16_bits* weight, int64_t rows, int64_t dim, float eps, float* out) {
#pragma omp parallel for schedule(static) if (rows * dim >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * dim;
    float* out_row = out + r * dim;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < dim; ++i) sum_squares += row[i] * row[i];
    const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i)
      out_row[i] = round_to_bf16(round_to_bf16(row[i] * inv_rms) * bf16_to_float(weight[i]));
  }
}

}  // namespace fp4serve
