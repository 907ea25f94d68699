// Launchers of the paged-attention kernels, for attention.cpp (which validates first), tests and the benchmark. Plain
// C++ types only; arguments are trusted; every launch is asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "kernels/cpu/paged_kv.h"
#include "kernels/cuda/attention.h"

namespace fp4serve::cuda {

// head_dim values the attention kernels are compiled for.
bool attention_head_dim_supported(int64_t head_dim);
inline constexpr int64_t kMaxAttentionGroup = 32;  // query heads per KV head

struct AttentionLaunch {
  PagedKvLayer cache;
  AttentionBatch batch;
  HeadsView q;  // n_heads heads
  int32_t n_heads;
  HeadsView out;         // n_heads heads
  float* partial_out;    // decode only: DecodeWorkspace::partial_out()
  float* partial_stats;  // decode only: DecodeWorkspace::partial_stats()
  int32_t split_tokens;  // keys per split, a multiple of 32, at most kDecodeSplitTokens
  int32_t row_splits;    // decode only: partial slots per (row, head) = ceil(batch.max_context / split_tokens)
  void* stream;
};

void launch_kv_cache_write(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView k, HeadsView v,
                           void* stream);
void launch_paged_decode_attention(const AttentionLaunch& args);
void launch_paged_prefill_attention(const AttentionLaunch& args);

}  // namespace fp4serve::cuda
