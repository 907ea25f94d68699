// The one summation order of the CPU GEMMs (bf16 and NVFP4 weights), which CUDA kernels are compared against:
//   acc(m, n) = ((0 + S_0) + S_1) + ...   over the blocks b = 0, 1, ... of 16 consecutive k, in increasing order
//   S_b       = pairwise tree of the block's 16 products p_i = a[m, 16b + i] * w[n, 16b + i]:
//               q_i = p_i + p_{i+8} (i < 8), r_i = q_i + q_{i+4} (i < 4), s_i = r_i + r_{i+2} (i < 2), S_b = s_0 + s_1
// A short last block (K % 16 != 0, bf16 weights only) counts its missing products as +0. Products and sums round
// to fp32 one at a time: including this header turns FP contraction off for the rest of the translation unit
// (GCC would otherwise fuse them into FMAs whenever -march allows it), so kernels include it first.
// Activations are repacked in token tiles of 8 tokens (pack_token_tiles): a full tile meets one decoded weight row 8
// tokens at a time (the lane loop vectorizes), a partial one token by token (the 16 products vectorize); both do
// the same arithmetic per output, so batching never changes a result.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace fp4serve {

inline constexpr int64_t kTokenTile = 8;
inline constexpr int64_t kGemmSumBlock = 16;
// Loops with less work than this (in multiply-adds or copied elements) stay on one thread: waking a team costs
// more than it saves, badly so on a loaded machine.
inline constexpr int64_t kMinParallelWork = int64_t{1} << 16;

inline int64_t token_tile_count(int64_t m) { return (m + kTokenTile - 1) / kTokenTile; }
inline size_t token_tiles_floats(int64_t m, int64_t k) {
  return static_cast<size_t>(token_tile_count(m) * k * kTokenTile);
}

// Carves 64-byte aligned pieces out of one scratch buffer. With a null base it only measures, so a kernel's
// "scratch bytes" function and the kernel itself share one carving routine and cannot disagree.
class ScratchCarver {
 public:
  explicit ScratchCarver(uint8_t* base) : base_(base) {}
  template <typename T>
  T* take(size_t count) {
    used_ = (used_ + 63) / 64 * 64;
    T* piece = base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + used_);
    used_ += count * sizeof(T);
    return piece;
  }
  size_t used() const { return used_; }

 private:
  uint8_t* base_;
  size_t used_ = 0;
};

// Full tiles interleave their 8 tokens, tiles[t / 8][k][t % 8] = a[rows[t]][k]; a last, partial tile keeps its
// tokens row-major, [count % 8][K], so a single token's dot reads contiguous memory (rows == nullptr: rows[t] = t).
inline void pack_token_tiles(const float* a, int64_t k_dim, const int32_t* rows, int64_t count, float* tiles) {
  const int64_t n_tiles = token_tile_count(count);
#pragma omp parallel for schedule(static) if (count * k_dim >= kMinParallelWork)
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    float* out = tiles + tile * k_dim * kTokenTile;
    const int64_t lanes = std::min(kTokenTile, count - tile * kTokenTile);
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const int64_t t = tile * kTokenTile + lane;
      const float* row = a + (rows == nullptr ? t : rows[t]) * k_dim;
      if (lanes == kTokenTile) {
        for (int64_t k = 0; k < k_dim; ++k) out[k * kTokenTile + lane] = row[k];
      } else {
        std::copy(row, row + k_dim, out + lane * k_dim);
      }
    }
  }
}

// Block sums S_b (header) of one tile's 8 lanes, tree-reduced in place in p [16][8] and added to acc [8]. Fixed
// trip counts, so every level vectorizes over the lanes.
inline void add_block_sums(float (&p)[kGemmSumBlock][kTokenTile], float* acc) {
  for (int i = 0; i < 8; ++i)
    for (int lane = 0; lane < kTokenTile; ++lane) p[i][lane] += p[i + 8][lane];
  for (int i = 0; i < 4; ++i)
    for (int lane = 0; lane < kTokenTile; ++lane) p[i][lane] += p[i + 4][lane];
  for (int i = 0; i < 2; ++i)
    for (int lane = 0; lane < kTokenTile; ++lane) p[i][lane] += p[i + 2][lane];
  for (int lane = 0; lane < kTokenTile; ++lane) acc[lane] += p[0][lane] + p[1][lane];
}

// S_b of one block's products p [16], by the same tree.
inline float block_sum(float (&p)[kGemmSumBlock]) {
  for (int i = 0; i < 8; ++i) p[i] += p[i + 8];
  for (int i = 0; i < 4; ++i) p[i] += p[i + 4];
  for (int i = 0; i < 2; ++i) p[i] += p[i + 2];
  return p[0] + p[1];
}

// acc[lane] for the 8 tokens of a full tile against one decoded weight row w [K].
inline void dot_token_tile(const float* tile, const float* w, int64_t k_dim, float* acc) {
  for (int64_t lane = 0; lane < kTokenTile; ++lane) acc[lane] = 0.0f;
  float p[kGemmSumBlock][kTokenTile];
  const int64_t full_blocks_end = k_dim / kGemmSumBlock * kGemmSumBlock;
  for (int64_t block_start = 0; block_start < full_blocks_end; block_start += kGemmSumBlock) {
    for (int64_t i = 0; i < kGemmSumBlock; ++i)
      for (int64_t lane = 0; lane < kTokenTile; ++lane)
        p[i][lane] = tile[(block_start + i) * kTokenTile + lane] * w[block_start + i];
    add_block_sums(p, acc);
  }
  if (full_blocks_end == k_dim) return;
  for (int64_t i = 0; i < kGemmSumBlock; ++i) {
    const int64_t k = full_blocks_end + i;
    for (int64_t lane = 0; lane < kTokenTile; ++lane)
      p[i][lane] = k < k_dim ? tile[k * kTokenTile + lane] * w[k] : 0.0f;
  }
  add_block_sums(p, acc);
}

// acc for one token of a partial tile, a [K] row-major: the same arithmetic as a lane of dot_token_tile.
inline float dot_token_row(const float* a, const float* w, int64_t k_dim) {
  float acc = 0.0f;
  for (int64_t block_start = 0; block_start < k_dim; block_start += kGemmSumBlock) {
    float p[kGemmSumBlock];
    if (block_start + kGemmSumBlock <= k_dim) {
      for (int64_t i = 0; i < kGemmSumBlock; ++i) p[i] = a[block_start + i] * w[block_start + i];
    } else {
      for (int64_t i = 0; i < kGemmSumBlock; ++i) {
        const int64_t k = block_start + i;
        p[i] = k < k_dim ? a[k] * w[k] : 0.0f;
      }
    }
    acc += block_sum(p);
  }
  return acc;
}

// Threads that gemm_decoded_rows may use: row_buffers needs this many rows of K floats.
inline int64_t gemm_max_threads() { return omp_get_max_threads(); }

// For each weight row n in [0, n_rows) (OpenMP over rows): decode_row(n, w) writes logical row n as K floats into a
// per-thread buffer (row_buffers: gemm_max_threads() * K floats), then store(t, n, acc) receives acc(t, n) for
// every token t < m. Must not be called from inside a parallel region (the row buffers are per outer thread).
template <typename DecodeRow, typename Store>
void gemm_decoded_rows(const float* tiles, int64_t m, int64_t k_dim, int64_t n_rows, float* row_buffers,
                       DecodeRow&& decode_row, Store&& store) {
  const int64_t n_tiles = token_tile_count(m);
#pragma omp parallel for schedule(static) if (n_tiles * kTokenTile * k_dim * n_rows >= kMinParallelWork)
  for (int64_t n = 0; n < n_rows; ++n) {
    float* w = row_buffers + static_cast<int64_t>(omp_get_thread_num()) * k_dim;
    decode_row(n, w);
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const float* tile_data = tiles + tile * k_dim * kTokenTile;
      const int64_t lanes = std::min(kTokenTile, m - tile * kTokenTile);
      if (lanes == kTokenTile) {
        float acc[kTokenTile];
        dot_token_tile(tile_data, w, k_dim, acc);
        for (int64_t lane = 0; lane < kTokenTile; ++lane) store(tile * kTokenTile + lane, n, acc[lane]);
      } else {
        for (int64_t lane = 0; lane < lanes; ++lane)
          store(tile * kTokenTile + lane, n, dot_token_row(tile_data + lane * k_dim, w, k_dim));
      }
    }
  }
}

}  // namespace fp4serve
