// The log-softmax normalizer of bf16 logits rows on the GPU: out[r] = m + log(sum_v exp(l[r, v] - m)), m the row's
// largest logit, in fp32. One block per row reduces in a fixed order that depends only on the vocabulary size, so a
// row's value never depends on the other rows (batch-invariant, deterministic). The host then gets a token's raw
// logprob with one subtraction instead of a pass of exp over the vocabulary. NaN logits are the host's to check.
// Device pointers; asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve::cuda {

void logits_log_normalizer_cuda(const bf16_bits* logits,  // [rows, vocab] bf16, row-major
                                int64_t rows, int64_t vocab,
                                float* out,  // [rows]
                                void* stream);

}  // namespace fp4serve::cuda
