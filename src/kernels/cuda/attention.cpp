// Host side of the paged-attention kernels: argument validation (messages name the field at fault) and the decode
// workspace. Device-resident batch contents (page ids, positions) are trusted: the engine's page allocator wrote them.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/error.h"
#include "kernels/cuda/attention_kernels.h"
#include "kernels/cuda/cuda_check.cuh"

namespace fp4serve::cuda {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_cache(const PagedKvLayer& cache, const char* op) {
  FP4_CHECK(cache.k != nullptr && cache.v != nullptr && aligned16(cache.k) && aligned16(cache.v),
            "{}: cache.k and cache.v must be non-null 16-byte aligned device pointers", op);
  FP4_CHECK(cache.n_pages >= 1 && cache.page_size >= 1 && cache.n_kv_heads >= 1,
            "{}: cache has {} pages of {} tokens with {} KV heads; each must be >= 1", op, cache.n_pages,
            cache.page_size, cache.n_kv_heads);
  FP4_CHECK(attention_head_dim_supported(cache.head_dim), "{}: cache.head_dim = {} is not supported (64, 128 or 256)",
            op, cache.head_dim);
}

void check_batch(const AttentionBatch& batch, const PagedKvLayer& cache, const char* op) {
  FP4_CHECK(batch.n_sequences >= 0 && batch.n_sequences <= 65535, "{}: batch.n_sequences = {} must be in [0, 65535]",
            op, batch.n_sequences);
  FP4_CHECK(batch.n_rows >= 0 && batch.n_rows <= (int64_t{1} << 31) - 1, "{}: batch.n_rows = {} is out of range", op,
            batch.n_rows);
  if (batch.n_sequences == 0) return;
  FP4_CHECK(batch.page_tables != nullptr && batch.first_position != nullptr && batch.row_start != nullptr,
            "{}: batch.page_tables, batch.first_position and batch.row_start must be device pointers", op);
  FP4_CHECK(batch.max_context >= 1 && batch.max_context <= (int64_t{1} << 31) - 1,
            "{}: batch.max_context = {} must be a positive bound on every sequence's last position + 1", op,
            batch.max_context);
  FP4_CHECK(batch.page_table_stride >= 1 && batch.page_table_stride * cache.page_size >= batch.max_context,
            "{}: batch.page_table_stride = {} pages of {} tokens cannot cover batch.max_context = {}", op,
            batch.page_table_stride, cache.page_size, batch.max_context);
}

void check_heads(HeadsView view, int64_t heads, int64_t head_dim, int64_t alignment, const char* op, const char* name) {
  FP4_CHECK(view.data != nullptr && reinterpret_cast<uintptr_t>(view.data) % alignment == 0,
            "{}: {}.data must be a non-null {}-byte aligned device pointer", op, name, alignment);
  FP4_CHECK(view.row_stride >= heads * head_dim && (view.row_stride * 2) % alignment == 0,
            "{}: {}.row_stride = {} must be >= {} heads x {} and a multiple of {} bytes", op, name, view.row_stride,
            heads, head_dim, alignment);
}

AttentionLaunch checked_launch(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView q, int64_t n_heads,
                               HeadsView out, void* stream, const char* op) {
  check_cache(cache, op);
  check_batch(batch, cache, op);
  FP4_CHECK(n_heads >= 1 && n_heads % cache.n_kv_heads == 0 && n_heads / cache.n_kv_heads <= kMaxAttentionGroup,
            "{}: n_heads = {} must be a multiple of cache.n_kv_heads = {}, at most {} query heads per KV head", op,
            n_heads, cache.n_kv_heads, kMaxAttentionGroup);
  AttentionLaunch launch{cache, batch, q, static_cast<int32_t>(n_heads), out, nullptr, nullptr, 0, 0, stream};
  if (batch.n_rows == 0) return launch;
  check_heads(q, n_heads, cache.head_dim, 2, op, "q");
  check_heads(out, n_heads, cache.head_dim, 2, op, "out");
  return launch;
}

}  // namespace

void kv_cache_write_cuda(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView k, HeadsView v,
                         void* stream) {
  constexpr const char* op = "kv_cache_write_cuda";
  check_cache(cache, op);
  check_batch(batch, cache, op);
  if (batch.n_rows == 0) return;
  check_heads(k, cache.n_kv_heads, cache.head_dim, 16, op, "k");
  check_heads(v, cache.n_kv_heads, cache.head_dim, 16, op, "v");
  launch_kv_cache_write(cache, batch, k, v, stream);
}

int64_t decode_split_tokens(int64_t n_sequences, int64_t n_kv_heads) {
  int64_t split = 32;  // one 32-key tile per CTA at the finest
  while (split < kDecodeSplitTokens && 2 * split <= n_sequences * n_kv_heads) split *= 2;
  return split;
}

DecodeWorkspace::DecodeWorkspace(int64_t max_rows, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                 int64_t max_context, AttentionSplits splits)
    : max_rows_(max_rows),
      n_heads_(n_heads),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim),
      max_context_(max_context),
      splits_(splits),
      row_splits_(0) {
  FP4_CHECK(max_rows >= 1 && n_kv_heads >= 1 && n_heads >= n_kv_heads && head_dim >= 1 && max_context >= 1,
            "DecodeWorkspace: max_rows = {}, n_heads = {}, n_kv_heads = {}, head_dim = {}, max_context = {} must all "
            "be >= 1 (and n_heads >= n_kv_heads)",
            max_rows, n_heads, n_kv_heads, head_dim, max_context);
  // The most (sequence, split) pairs any batch of up to max_rows sequences needs at contexts up to max_context.
  for (int64_t n = 1; n <= max_rows; ++n)
    row_splits_ = std::max(row_splits_, n * ((max_context + split_tokens(n) - 1) / split_tokens(n)));
  const int64_t slots = row_splits_ * n_heads;
  FP4_CUDA_CHECK(cudaMalloc(&partial_out_, static_cast<size_t>(slots * head_dim) * sizeof(float)));
  const cudaError_t status = cudaMalloc(&partial_stats_, static_cast<size_t>(slots * 2) * sizeof(float));
  if (status != cudaSuccess) {
    cudaFree(partial_out_);
    FP4_CUDA_CHECK(status);
  }
}

DecodeWorkspace::~DecodeWorkspace() {
  cudaFree(partial_out_);  // destructors must not throw; the driver may already be gone
  cudaFree(partial_stats_);
}

int64_t DecodeWorkspace::split_tokens(int64_t n_sequences) const {
  return splits_ == AttentionSplits::BatchInvariant ? kBatchInvariantSplitTokens
                                                    : decode_split_tokens(n_sequences, n_kv_heads_);
}

size_t DecodeWorkspace::bytes() const {
  return static_cast<size_t>(row_splits_ * n_heads_ * (head_dim_ + 2)) * sizeof(float);
}

void paged_decode_attention_cuda(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView q, int64_t n_heads,
                                 DecodeWorkspace& workspace, HeadsView out, void* stream) {
  constexpr const char* op = "paged_decode_attention_cuda";
  AttentionLaunch launch = checked_launch(cache, batch, q, n_heads, out, stream, op);
  FP4_CHECK(batch.n_rows == batch.n_sequences,
            "{}: decode takes one new token per sequence, but batch.n_rows = {} and batch.n_sequences = {}", op,
            batch.n_rows, batch.n_sequences);
  if (batch.n_sequences == 0) return;
  FP4_CHECK(workspace.n_heads() == n_heads && workspace.n_kv_heads() == cache.n_kv_heads &&
                workspace.head_dim() == cache.head_dim,
            "{}: the workspace was made for {} heads over {} KV heads of {} dims, the call has {} over {} of {}", op,
            workspace.n_heads(), workspace.n_kv_heads(), workspace.head_dim(), n_heads, cache.n_kv_heads,
            cache.head_dim);
  FP4_CHECK(batch.n_sequences <= workspace.max_rows(), "{}: batch.n_sequences = {} exceeds the workspace's max_rows {}",
            op, batch.n_sequences, workspace.max_rows());
  FP4_CHECK(batch.max_context <= workspace.max_context(),
            "{}: batch.max_context = {} exceeds the workspace's max_context {}", op, batch.max_context,
            workspace.max_context());
  launch.partial_out = workspace.partial_out();
  launch.partial_stats = workspace.partial_stats();
  // Within row_splits(): the workspace was sized for this many sequences at this context.
  launch.split_tokens = static_cast<int32_t>(workspace.split_tokens(batch.n_sequences));
  launch.row_splits = static_cast<int32_t>((batch.max_context + launch.split_tokens - 1) / launch.split_tokens);
  launch_paged_decode_attention(launch);
}

void paged_prefill_attention_cuda(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView q, int64_t n_heads,
                                  AttentionSplits splits, HeadsView out, void* stream) {
  constexpr const char* op = "paged_prefill_attention_cuda";
  AttentionLaunch launch = checked_launch(cache, batch, q, n_heads, out, stream, op);
  launch.split_tokens = static_cast<int32_t>(splits == AttentionSplits::BatchInvariant ? kBatchInvariantSplitTokens
                                                                                       : kDecodeSplitTokens);
  if (batch.n_rows == 0) return;
  FP4_CHECK(batch.max_query_tokens >= 1 && batch.max_query_tokens <= batch.n_rows,
            "{}: batch.max_query_tokens = {} must bound every sequence's new tokens, within [1, n_rows = {}]", op,
            batch.max_query_tokens, batch.n_rows);
  launch_paged_prefill_attention(launch);
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
