// Paged-KV attention kernels. One warp per (query row, query head); a CTA serves the query heads sharing one KV head,
// so each K/V tile is read from memory once per CTA and widened to fp32 in shared memory. Scores: one lane per key;
// online softmax in fp32 within a split; split states folded in position order (fold_scales). Split decode writes
// each split's unnormalized state and a second kernel folds them; prefill folds its splits as it walks the keys. The
// arithmetic is spelled with explicit roundings (__fmaf_rn, __fmul_rn: nothing left for the compiler to contract), so
// that the two kernels, given the same split size, produce the same bits for a position (--deterministic).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/attention_kernels.h"
#include "kernels/cuda/cuda_check.cuh"

namespace fp4serve::cuda {
namespace {

constexpr int kKeyTile = 32;  // keys per shared-memory tile: one per lane when scoring
constexpr int kPrefillWarps = 16;

__device__ float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ uint16_t f32_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

__device__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The sequence holding `row`: the last s with row_start[s] <= row (skips sequences without new tokens).
__device__ int sequence_of_row(const int32_t* row_start, int64_t n_sequences, int64_t row) {
  int lo = 0, hi = static_cast<int>(n_sequences) - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    const bool starts_at_or_before = row_start[mid] <= row;
    lo = starts_at_or_before ? mid : lo;
    hi = starts_at_or_before ? hi : mid - 1;
  }
  return lo;
}

// Element offset of (position, kv_head, 0): PagedKvLayer::offset on the device.
__device__ int64_t kv_offset(const PagedKvLayer& c, const int32_t* page_table, int64_t position, int kv_head) {
  const int64_t page = page_table[position / c.page_size];
  return ((page * c.page_size + position % c.page_size) * c.n_kv_heads + kv_head) * c.head_dim;
}

__global__ void kv_cache_write_kernel(PagedKvLayer cache, AttentionBatch batch, HeadsView k, HeadsView v) {
  const int64_t row = blockIdx.x;
  const int s = sequence_of_row(batch.row_start, batch.n_sequences, row);
  const int64_t position = batch.first_position[s] + (row - batch.row_start[s]);
  const int64_t dst = kv_offset(cache, batch.page_tables + s * batch.page_table_stride, position, 0);
  const int64_t chunks = cache.n_kv_heads * cache.head_dim / 8;  // 16-byte chunks of the row
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    reinterpret_cast<uint4*>(cache.k + dst)[c] = reinterpret_cast<const uint4*>(k.data + row * k.row_stride)[c];
    reinterpret_cast<uint4*>(cache.v + dst)[c] = reinterpret_cast<const uint4*>(v.data + row * v.row_stride)[c];
  }
}

// Shared memory of an attention CTA: per warp its query (fp32 [D]); the key tile [kKeyTile][D + 1] (padded so that
// lanes reading different keys hit different banks) and the value tile [kKeyTile][D].
template <int D>
constexpr size_t attention_shared_bytes(int warps) {
  return sizeof(float) * (static_cast<size_t>(warps) * D + kKeyTile * (D + 1) + kKeyTile * D);
}

// Keys and values of positions [first_key, first_key + kKeyTile) into shared memory as fp32; positions >= end_key read
// as 0. A tile is kKeyTile * D / 8 16-byte chunks of K and as many of V; a thread's first kPrefetchedChunks (chunk
// threadIdx.x + n * blockDim.x) are fetched into registers one tile ahead (fetch_kv_tile), so that their loads are in
// flight while the CTA attends the current tile; store_kv_tile widens them into shared memory and loads any chunks
// beyond them directly (CTAs of fewer than kKeyTile * D / 8 / kPrefetchedChunks threads).
constexpr int kPrefetchedChunks = 2;

struct KvChunks {
  uint4 k[kPrefetchedChunks], v[kPrefetchedChunks];
};

__device__ void load_kv_chunk(const PagedKvLayer& cache, const int32_t* page_table, int kv_head, int64_t position,
                              int64_t end_key, int chunk, uint4& k_bits, uint4& v_bits) {
  k_bits = v_bits = make_uint4(0, 0, 0, 0);
  if (position >= end_key) return;
  const int64_t offset = kv_offset(cache, page_table, position, kv_head) + chunk * 8;
  k_bits = *reinterpret_cast<const uint4*>(cache.k + offset);
  v_bits = *reinterpret_cast<const uint4*>(cache.v + offset);
}

template <int D>
__device__ void fetch_kv_tile(const PagedKvLayer& cache, const int32_t* page_table, int kv_head, int64_t first_key,
                              int64_t end_key, KvChunks& chunks) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int n = 0; n < kPrefetchedChunks; ++n) {
    const int i = threadIdx.x + n * blockDim.x;
    if (i < kKeyTile * kChunks)
      load_kv_chunk(cache, page_table, kv_head, first_key + i / kChunks, end_key, i % kChunks, chunks.k[n],
                    chunks.v[n]);
  }
}

template <int D>
__device__ void widen_kv_chunk(int i, const uint4& k_bits, const uint4& v_bits, float* k_tile, float* v_tile) {
  constexpr int kChunks = D / 8;
  const int j = i / kChunks, chunk = i % kChunks;
  const uint16_t* k_half = reinterpret_cast<const uint16_t*>(&k_bits);
  const uint16_t* v_half = reinterpret_cast<const uint16_t*>(&v_bits);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    k_tile[j * (D + 1) + chunk * 8 + e] = bf16_to_f32(k_half[e]);
    v_tile[j * D + chunk * 8 + e] = bf16_to_f32(v_half[e]);
  }
}

template <int D>
__device__ void store_kv_tile(const PagedKvLayer& cache, const int32_t* page_table, int kv_head, int64_t first_key,
                              int64_t end_key, const KvChunks& chunks, float* k_tile, float* v_tile) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int n = 0; n < kPrefetchedChunks; ++n) {
    const int i = threadIdx.x + n * blockDim.x;
    if (i < kKeyTile * kChunks) widen_kv_chunk<D>(i, chunks.k[n], chunks.v[n], k_tile, v_tile);
  }
  for (int i = threadIdx.x + kPrefetchedChunks * blockDim.x; i < kKeyTile * kChunks; i += blockDim.x) {
    uint4 k_bits, v_bits;
    load_kv_chunk(cache, page_table, kv_head, first_key + i / kChunks, end_key, i % kChunks, k_bits, v_bits);
    widen_kv_chunk<D>(i, k_bits, v_bits, k_tile, v_tile);
  }
}

// Online-softmax state of one warp; lane holds output dims lane + 32 i.
template <int D>
struct SoftmaxState {
  float max = -INFINITY;
  float sum = 0.0f;
  float acc[D / 32] = {};
};

// Folds the tile's keys at positions <= last_key into the warp's state (warp-uniform call).
template <int D>
__device__ void attend_tile(const float* q, const float* k_tile, const float* v_tile, int64_t first_key,
                            int64_t last_key, float scale, SoftmaxState<D>& state) {
  const int lane = threadIdx.x % 32;
  float score = -INFINITY;
  if (first_key + lane <= last_key) {
    // q is read as float4 broadcasts: shared-memory wavefronts, not FMAs, bound this loop.
    const float4* q4 = reinterpret_cast<const float4*>(q);
    const float* k_row = k_tile + lane * (D + 1);
    float dot = 0.0f;
#pragma unroll 4
    for (int d4 = 0; d4 < D / 4; ++d4) {
      const float4 q_part = q4[d4];
      dot = __fmaf_rn(q_part.x, k_row[4 * d4], dot);
      dot = __fmaf_rn(q_part.y, k_row[4 * d4 + 1], dot);
      dot = __fmaf_rn(q_part.z, k_row[4 * d4 + 2], dot);
      dot = __fmaf_rn(q_part.w, k_row[4 * d4 + 3], dot);
    }
    score = __fmul_rn(dot, scale);
  }
  const float new_max = fmaxf(state.max, warp_max(score));
  if (new_max == -INFINITY) return;
  const float p = expf(__fsub_rn(score, new_max));
  const float correction = expf(__fsub_rn(state.max, new_max));
  state.sum = __fmaf_rn(state.sum, correction, warp_sum(p));
  state.max = new_max;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) state.acc[i] = __fmul_rn(state.acc[i], correction);
  for (int j = 0; j < kKeyTile; ++j) {
    const float p_j = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
    for (int i = 0; i < D / 32; ++i) state.acc[i] = __fmaf_rn(p_j, v_tile[j * D + lane + 32 * i], state.acc[i]);
  }
}

// Weights of folding a split with maximum score split_max into the running total of the splits before it (whose
// maximum total_max becomes the larger of the two). The one way split states combine, in the decode merge and in the
// prefill kernel alike. A split that saw no finite score (state never set) weighs nothing.
struct FoldScales {
  float total, split;
};
__device__ FoldScales fold_scales(float& total_max, float split_max) {
  if (split_max == -INFINITY) return {1.0f, 0.0f};
  const float new_max = fmaxf(total_max, split_max);
  const FoldScales scales{expf(__fsub_rn(total_max, new_max)), expf(__fsub_rn(split_max, new_max))};
  total_max = new_max;
  return scales;
}
__device__ float fold(float total, float split, FoldScales scales) {
  return __fmaf_rn(total, scales.total, __fmul_rn(split, scales.split));
}

// A warp's split state folded into its total; the split state starts over.
template <int D>
__device__ void fold_split(SoftmaxState<D>& total, SoftmaxState<D>& split) {
  const FoldScales scales = fold_scales(total.max, split.max);
  total.sum = fold(total.sum, split.sum, scales);
#pragma unroll
  for (int i = 0; i < D / 32; ++i) total.acc[i] = fold(total.acc[i], split.acc[i], scales);
  split = SoftmaxState<D>{};
}

template <int D>
__device__ void load_query(const HeadsView& q, int64_t row, int head, float* q_shared) {
  for (int d = threadIdx.x % 32; d < D; d += 32) q_shared[d] = bf16_to_f32(q.data[row * q.row_stride + head * D + d]);
}

// CTA (query tile, KV head, sequence); warp w serves token w / group of the tile and query head w % group. A token's
// keys are cut into splits of a.split_tokens positions (the last one ends at the token), each folded into the total
// when complete: the same states and the same fold as split decode.
template <int D>
__global__ void prefill_kernel(AttentionLaunch a, int group, int tokens_per_cta, float scale) {
  extern __shared__ __align__(16) float shared[];  // 16-byte aligned: queries are read as float4
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int s = blockIdx.z, kv_head = blockIdx.y;
  const int64_t seq_first_row = a.batch.row_start[s], n_tokens = a.batch.row_start[s + 1] - seq_first_row;
  const int64_t tile_first_token = static_cast<int64_t>(blockIdx.x) * tokens_per_cta;
  if (tile_first_token >= n_tokens) return;
  const int64_t first_position = a.batch.first_position[s];
  const int64_t tile_tokens = min(static_cast<int64_t>(tokens_per_cta), n_tokens - tile_first_token);
  const int64_t end_key = first_position + tile_first_token + tile_tokens;
  const int64_t token = tile_first_token + warp / group, row = seq_first_row + token;
  const int head = kv_head * group + warp % group;
  const bool active = token < tile_first_token + tile_tokens;
  const int64_t query_position = first_position + token;
  float* q_shared = shared + warp * D;
  float* k_tile = shared + warps * D;
  float* v_tile = k_tile + kKeyTile * (D + 1);
  const int32_t* page_table = a.batch.page_tables + s * a.batch.page_table_stride;
  if (active) load_query<D>(a.q, row, head, q_shared);

  SoftmaxState<D> total, split;
  KvChunks next;
  fetch_kv_tile<D>(a.cache, page_table, kv_head, 0, end_key, next);
  for (int64_t first_key = 0; first_key < end_key; first_key += kKeyTile) {
    __syncthreads();
    store_kv_tile<D>(a.cache, page_table, kv_head, first_key, end_key, next, k_tile, v_tile);
    if (first_key + kKeyTile < end_key)
      fetch_kv_tile<D>(a.cache, page_table, kv_head, first_key + kKeyTile, end_key, next);
    __syncthreads();
    if (active && first_key <= query_position) {
      attend_tile<D>(q_shared, k_tile, v_tile, first_key, query_position, scale, split);
      const int64_t next_key = first_key + kKeyTile;
      if (next_key % a.split_tokens == 0 || next_key > query_position) fold_split<D>(total, split);
    }
  }
  if (!active) return;
  uint16_t* out = a.out.data + row * a.out.row_stride + head * D;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) out[lane + 32 * i] = f32_to_bf16(__fdiv_rn(total.acc[i], total.sum));
}

// CTA (split, KV head, sequence); warp g serves query head kv_head * group + g of the sequence's single row.
template <int D>
__global__ void decode_split_kernel(AttentionLaunch a, int group, float scale) {
  extern __shared__ __align__(16) float shared[];  // 16-byte aligned: queries are read as float4
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = blockIdx.x, kv_head = blockIdx.y, row = blockIdx.z;
  const int64_t context = a.batch.first_position[row] + 1;
  const int64_t first_split_key = static_cast<int64_t>(split) * a.split_tokens;
  if (first_split_key >= context) return;
  const int64_t end_key = min(context, first_split_key + a.split_tokens);
  const int head = kv_head * group + warp;
  float* q_shared = shared + warp * D;
  float* k_tile = shared + warps * D;
  float* v_tile = k_tile + kKeyTile * (D + 1);
  const int32_t* page_table = a.batch.page_tables + static_cast<int64_t>(row) * a.batch.page_table_stride;
  load_query<D>(a.q, row, head, q_shared);

  SoftmaxState<D> state;
  KvChunks next;
  fetch_kv_tile<D>(a.cache, page_table, kv_head, first_split_key, end_key, next);
  for (int64_t first_key = first_split_key; first_key < end_key; first_key += kKeyTile) {
    __syncthreads();
    store_kv_tile<D>(a.cache, page_table, kv_head, first_key, end_key, next, k_tile, v_tile);
    if (first_key + kKeyTile < end_key)
      fetch_kv_tile<D>(a.cache, page_table, kv_head, first_key + kKeyTile, end_key, next);
    __syncthreads();
    attend_tile<D>(q_shared, k_tile, v_tile, first_key, end_key - 1, scale, state);
  }
  const int64_t slot = (static_cast<int64_t>(row) * a.n_heads + head) * a.row_splits + split;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) a.partial_out[slot * D + lane + 32 * i] = state.acc[i];
  if (lane == 0) {
    a.partial_stats[slot * 2] = state.max;
    a.partial_stats[slot * 2 + 1] = state.sum;
  }
}

// Block (head, row): folds the row's splits in position order (the result depends on the context and the launch's
// split size only), exactly as the prefill kernel folds its own.
__global__ void decode_merge_kernel(AttentionLaunch a, int head_dim) {
  const int head = blockIdx.x, row = blockIdx.y;
  const int64_t context = a.batch.first_position[row] + 1;
  const int n_splits = static_cast<int>((context + a.split_tokens - 1) / a.split_tokens);
  const int64_t first_slot = (static_cast<int64_t>(row) * a.n_heads + head) * a.row_splits;
  const float* stats = a.partial_stats + first_slot * 2;
  uint16_t* out = a.out.data + static_cast<int64_t>(row) * a.out.row_stride + static_cast<int64_t>(head) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float max = -INFINITY, sum = 0.0f, acc = 0.0f;
    for (int sp = 0; sp < n_splits; ++sp) {
      const FoldScales scales = fold_scales(max, stats[sp * 2]);
      sum = fold(sum, stats[sp * 2 + 1], scales);
      acc = fold(acc, a.partial_out[(first_slot + sp) * head_dim + d], scales);
    }
    out[d] = f32_to_bf16(__fdiv_rn(acc, sum));
  }
}

template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    FP4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <int D>
void launch_prefill(const AttentionLaunch& a) {
  const int group = a.n_heads / static_cast<int>(a.cache.n_kv_heads);
  const int tokens_per_cta = group >= kPrefillWarps ? 1 : kPrefillWarps / group;
  const int warps = tokens_per_cta * group;
  const size_t shared_bytes = attention_shared_bytes<D>(warps);
  allow_shared_bytes(prefill_kernel<D>, shared_bytes);
  const dim3 grid(static_cast<unsigned>((a.batch.max_query_tokens + tokens_per_cta - 1) / tokens_per_cta),
                  static_cast<unsigned>(a.cache.n_kv_heads), static_cast<unsigned>(a.batch.n_sequences));
  prefill_kernel<D><<<grid, warps * 32, shared_bytes, static_cast<cudaStream_t>(a.stream)>>>(
      a, group, tokens_per_cta, 1.0f / sqrtf(static_cast<float>(D)));
  FP4_CUDA_CHECK(cudaGetLastError());
}

template <int D>
void launch_decode(const AttentionLaunch& a) {
  const int group = a.n_heads / static_cast<int>(a.cache.n_kv_heads);
  const size_t shared_bytes = attention_shared_bytes<D>(group);
  allow_shared_bytes(decode_split_kernel<D>, shared_bytes);
  const cudaStream_t stream = static_cast<cudaStream_t>(a.stream);
  const dim3 grid(static_cast<unsigned>(a.row_splits), static_cast<unsigned>(a.cache.n_kv_heads),
                  static_cast<unsigned>(a.batch.n_sequences));
  decode_split_kernel<D><<<grid, group * 32, shared_bytes, stream>>>(a, group, 1.0f / sqrtf(static_cast<float>(D)));
  FP4_CUDA_CHECK(cudaGetLastError());
  decode_merge_kernel<<<dim3(a.n_heads, static_cast<unsigned>(a.batch.n_sequences)), D, 0, stream>>>(a, D);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool attention_head_dim_supported(int64_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

void launch_kv_cache_write(const PagedKvLayer& cache, const AttentionBatch& batch, HeadsView k, HeadsView v,
                           void* stream) {
  if (batch.n_rows == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, cache.n_kv_heads * cache.head_dim / 8));
  kv_cache_write_kernel<<<static_cast<unsigned>(batch.n_rows), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      cache, batch, k, v);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_paged_decode_attention(const AttentionLaunch& args) {
  if (args.batch.n_sequences == 0) return;
  switch (args.cache.head_dim) {
    case 64: return launch_decode<64>(args);
    case 128: return launch_decode<128>(args);
    case 256: return launch_decode<256>(args);
  }
}

void launch_paged_prefill_attention(const AttentionLaunch& args) {
  if (args.batch.n_rows == 0) return;
  switch (args.cache.head_dim) {
    case 64: return launch_prefill<64>(args);
    case 128: return launch_prefill<128>(args);
    case 256: return launch_prefill<256>(args);
  }
}

}  // namespace fp4serve::cuda
