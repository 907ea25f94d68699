#include "kernels/cpu/residual_add.h"

#include "format/bf16.h"
#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void residual_add_cpu(float* x, const float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) x[i] = round_to_bf16(x[i] + y[i]);
}

}  // namespace fp4serve
