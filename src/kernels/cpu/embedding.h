// Embedding lookup: rows of a bf16 table widened to f32. Token ids are checked against the vocabulary (an id from a
// request must never read outside the table).
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve {

// out[t, :] = table[ids[t], :]; throws naming the position and id when an id is outside [0, vocab).
void embedding_lookup_cpu(const bf16_bits* table,  // [vocab, hidden] bf16
                          int64_t vocab, int64_t hidden,
                          const int32_t* ids,  // [n_tokens]
                          int64_t n_tokens,
                          float* out);  // [n_tokens, hidden] f32

}  // namespace fp4serve
