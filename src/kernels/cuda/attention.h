// Paged-KV attention on the GPU: the CUDA twins of kv_cache_write_cpu and paged_attention_cpu (same cache layout,
// PagedKvLayer with device pointers; fp32 scores and softmax; bf16 in and out). Both kernels cut a context into splits
// of consecutive keys and fold the splits' softmax states in position order (no atomics): decode computes its splits in
// parallel and a second kernel folds them, prefill folds each split as it walks the keys. How large a split is
// (AttentionSplits) decides whether a row's bits depend on its batch. All pointers are device memory; calls are
// asynchronous on `stream`. Host-only header.
#pragma once
#include <cstddef>
#include <cstdint>

#include "format/bf16.h"
#include "kernels/cpu/paged_kv.h"

namespace fp4serve::cuda {

// A batch of sequences as the kernels read it (int32, device memory). Sequence s has its new tokens in rows
// [row_start[s], row_start[s + 1]) at positions first_position[s] + (row - row_start[s]); first_position[s] > 0 after
// a prefix-cache hit. Its page table is page_tables[s * page_table_stride ..], covering every position it reaches.
struct AttentionBatch {
  const int32_t* page_tables = nullptr;  // [n_sequences, page_table_stride]
  int64_t page_table_stride = 0;
  const int32_t* first_position = nullptr;  // [n_sequences]
  const int32_t* row_start = nullptr;       // [n_sequences + 1], row_start[0] == 0, non-decreasing
  int64_t n_sequences = 0;
  int64_t n_rows = 0;            // == row_start[n_sequences]
  int64_t max_context = 0;       // host-known bound on first_position[s] + n_tokens(s); sizes the launch grids
  int64_t max_query_tokens = 0;  // host-known bound on any sequence's n_tokens (prefill grid)
};

// Activations of `rows` tokens with `heads` heads of head_dim bf16 each; consecutive rows are `row_stride` elements
// apart, so q, k and v may be views into one fused qkv projection output.
struct HeadsView {
  bf16_bits* data = nullptr;
  int64_t row_stride = 0;  // elements; >= heads * head_dim
};

// Keys and values of the batch's rows (k, v: n_kv_heads heads) copied into their pages.
void kv_cache_write_cuda(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView k, HeadsView v,
                         void* stream);

inline constexpr int64_t kDecodeSplitTokens = 256;  // the coarsest split
// --deterministic: keys per split of decode and prefill alike, whatever the batch.
inline constexpr int64_t kBatchInvariantSplitTokens = 64;

// ByBatch (the fast path): decode splits by batch size (decode_split_tokens), prefill by kDecodeSplitTokens; a row's
// result depends on its own sequence and the batch size. BatchInvariant: kBatchInvariantSplitTokens for both kernels,
// so a position's result is bitwise the same prefilled or decoded, alone or in any batch (the split kernel and the
// prefill kernel run the same per-split arithmetic and the same fold).
enum class AttentionSplits { ByBatch, BatchInvariant };

// Keys per decode split for a batch of n_sequences (a power of two in [32, kDecodeSplitTokens]): about one split
// per (sequence, KV head) CTA, so that a 256-key context already gives ~256 CTAs; never depends on the context, so an
// eager step and a CUDA graph of the same batch split alike.
int64_t decode_split_tokens(int64_t n_sequences, int64_t n_kv_heads);

// fp32 partial softmax states of split decode; reusable across layers and steps (one per stream). Sized at
// construction for at most max_rows rows, n_heads query heads (over n_kv_heads) of head_dim and contexts up to
// max_context at the split of any batch size under `splits`, so that a call allocates nothing (a CUDA graph capture
// may not).
class DecodeWorkspace {
 public:
  DecodeWorkspace(int64_t max_rows, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t max_context,
                  AttentionSplits splits);
  ~DecodeWorkspace();
  DecodeWorkspace(const DecodeWorkspace&) = delete;
  DecodeWorkspace& operator=(const DecodeWorkspace&) = delete;

  int64_t max_rows() const { return max_rows_; }
  int64_t n_heads() const { return n_heads_; }
  int64_t n_kv_heads() const { return n_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t max_context() const { return max_context_; }
  int64_t split_tokens(int64_t n_sequences) const;  // keys per split of a decode of n_sequences
  // A call's partials: [n_sequences, n_heads, splits, head_dim] and [.., 2] (max, sum of exp), splits =
  // ceil(max_context / split_tokens); n_sequences * splits is at most row_splits().
  float* partial_out() const { return partial_out_; }
  float* partial_stats() const { return partial_stats_; }
  int64_t row_splits() const { return row_splits_; }
  size_t bytes() const;

 private:
  int64_t max_rows_, n_heads_, n_kv_heads_, head_dim_, max_context_;
  AttentionSplits splits_;
  int64_t row_splits_;
  float* partial_out_ = nullptr;
  float* partial_stats_ = nullptr;
};

// One new token per sequence (row s is sequence s, at position first_position[s]; its key and value already in the
// cache): out [n_sequences, n_heads, head_dim] bf16 = attention over positions [0, first_position[s]], split as the
// workspace's AttentionSplits says.
void paged_decode_attention_cuda(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView q, int64_t n_heads,
                                 DecodeWorkspace& workspace, HeadsView out, void* stream);

// Any number of new tokens per sequence (causal): the token at position p attends to positions [0, p] of its own
// sequence, whose keys and values (the new ones included) are already in the cache.
void paged_prefill_attention_cuda(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView q, int64_t n_heads,
                                  AttentionSplits splits, HeadsView out, void* stream);

}  // namespace fp4serve::cuda
