#include "kernels/cpu/kv_cache_write.h"

#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void kv_cache_write_cpu(const PagedKvLayer& cache, std::span<const PagedSequence> sequences, const float* k,
                        const float* v) {
  const int64_t row_size = cache.n_kv_heads * cache.head_dim;
  for (const PagedSequence& seq : sequences) {
#pragma omp parallel for schedule(static) if (seq.n_tokens * row_size >= kMinParallelWork)
    for (int64_t t = 0; t < seq.n_tokens; ++t) {
      const int64_t dst = cache.offset(seq.page_table, seq.first_position + t, 0);
      const int64_t src = (seq.first_row + t) * row_size;
      for (int64_t i = 0; i < row_size; ++i) {
        cache.k[dst + i] = float_to_bf16(k[src + i]);
        cache.v[dst + i] = float_to_bf16(v[src + i]);
      }
    }
  }
}

}  // namespace fp4serve
