// Stores the new tokens' keys and values (rounded to bf16) into their paged slots. The pages must already be
// allocated: the engine's page allocator guarantees each table covers its sequence's positions.
#pragma once
#include <cstdint>
#include <span>

#include "kernels/cpu/paged_kv.h"

namespace fp4serve {

void kv_cache_write_cpu(const PagedKvLayer& cache, std::span<const PagedSequence> sequences,
                        const float* k,   // [n_rows, n_kv_heads, head_dim] f32
                        const float* v);  // [n_rows, n_kv_heads, head_dim] f32

}  // namespace fp4serve
