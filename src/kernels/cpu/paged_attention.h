// Causal grouped-query attention over the paged KV cache, for prefill (many new tokens) and decode (one) alike:
// the new token at position p attends to positions [0, p] of its own sequence, whose keys and values (its own
// included) must already be in the cache. Query head h reads KV head h / (n_heads / n_kv_heads).
// fp32 throughout: scores q.k / sqrt(head_dim), softmax (max-subtracted), weighted sum of V; output rounded to bf16.
#pragma once
#include <cstdint>
#include <span>

#include "kernels/cpu/paged_kv.h"

namespace fp4serve {

void paged_attention_cpu(const PagedKvLayer& cache, std::span<const PagedSequence> sequences,
                         const float* q,  // [n_rows, n_heads, head_dim] f32
                         int64_t n_heads,
                         float* out);  // [n_rows, n_heads, head_dim] f32, bf16-representable

}  // namespace fp4serve
