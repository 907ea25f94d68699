#include "kernels/cpu/embedding.h"

#include "common/error.h"
#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void embedding_lookup_cpu(const bf16_bits* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n_tokens,
                          float* out) {
  for (int64_t t = 0; t < n_tokens; ++t)
    FP4_CHECK(ids[t] >= 0 && ids[t] < vocab, "token id {} at position {} is outside the vocabulary [0, {})", ids[t], t,
              vocab);
#pragma omp parallel for schedule(static) if (n_tokens * hidden >= kMinParallelWork)
  for (int64_t t = 0; t < n_tokens; ++t) {
    const bf16_bits* row = table + static_cast<int64_t>(ids[t]) * hidden;
    float* out_row = out + t * hidden;
    for (int64_t i = 0; i < hidden; ++i) out_row[i] = bf16_to_float(row[i]);
  }
}

}  // namespace fp4serve
