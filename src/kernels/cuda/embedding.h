// Embedding gather on the GPU, the CUDA twin of embedding_lookup_cpu with bf16 output. Ids live on the device (they
// may come straight from the GPU sampler), so a bad id cannot throw: its row is written as NaN and nothing outside
// the table is read. Device pointers; asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve::cuda {

// out[t, :] = table[ids[t], :], or NaN when ids[t] is outside [0, vocab).
void embedding_lookup_cuda(const bf16_bits* table,         // [vocab, hidden] bf16, 16-byte aligned
                           int64_t vocab, int64_t hidden,  // hidden a multiple of 8
                           const int32_t* ids,             // [n_tokens] device int32
                           int64_t n_tokens,
                           bf16_bits* out,  // [n_tokens, hidden] bf16, 16-byte aligned
                           void* stream);

}  // namespace fp4serve::cuda
