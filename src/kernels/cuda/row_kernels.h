// Launchers of the per-row kernels (RMSNorm, q/k-norm + RoPE, embedding gather), for their validating wrappers in
// norm.cpp, qk_norm_rope.cpp and embedding.cpp. Plain C++ types; arguments are trusted; launches are asynchronous.
#pragma once
#include <cstdint>

#include "kernels/cuda/qk_norm_rope.h"

namespace fp4serve::cuda {

// residual == nullptr: plain RMSNorm of x. Otherwise residual = bf16(residual + x) first, then normalized.
void launch_rmsnorm(bf16_bits* residual, const bf16_bits* x, const bf16_bits* weight, int64_t rows, int64_t dim,
                    float eps, bf16_bits* out, void* stream);

// inv_freq: head_dim / 2 floats (rope_inv_freq), host memory, passed to the kernel by value.
void launch_qk_norm_rope(const QkNormRopeArgs& args, const float* inv_freq);

void launch_embedding_lookup(const bf16_bits* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                             int64_t n_tokens, bf16_bits* out, void* stream);

}  // namespace fp4serve::cuda
