#include "kernels/cpu/silu_mul.h"

#include <cmath>

#include "format/bf16.h"
#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void silu_mul_cpu(const float* gate_up, int64_t M, int64_t I, float* out) {
#pragma omp parallel for schedule(static) if (M * I >= kMinParallelWork)
  for (int64_t m = 0; m < M; ++m) {
    const float* gate = gate_up + m * 2 * I;
    const float* up = gate + I;
    float* out_row = out + m * I;
    for (int64_t i = 0; i < I; ++i) {
      const float silu = gate[i] / (1.0f + std::exp(-gate[i]));
      out_row[i] = round_to_bf16(round_to_bf16(silu) * up[i]);
    }
  }
}

}  // namespace fp4serve
