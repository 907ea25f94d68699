// The one summation order of the CPU GEMMs (bf16 and NVFP4 weights), which CUDA kernels are compared against:
//   acc(m, n) = sum over blocks b = 0, 1, ... of (sum over k in block b, increasing, of a[m, k] * w[n, k])
// Blocks are 16 consecutive k (the last one may be shorter); each block sum starts from 0 and adds its products in
// increasing k, then the block sums are added in increasing b into an accumulator starting from 0. Products and
// sums round to fp32 one at a time: including this header turns FP contraction off for the rest of the translation
// unit (GCC would otherwise fuse them into FMAs whenever -march allows it), so kernels include it first.
// Activations are repacked in token tiles [ceil(M/8), K, 8] so one decoded weight row meets 8 tokens at a time
// and the loop over lanes vectorizes; every lane follows the order above, so tiling never changes a result.
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
inline size_t token_tiles_floats(int64_t m, int64_t k) { return static_cast<size_t>(token_tile_count(m) * k * kTokenTile); }

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

// tiles[t / 8][k][t % 8] = a[rows[t]][k] for t < count (rows == nullptr: rows[t] = t); unused lanes are zeroed.
inline void pack_token_tiles(const float* a, int64_t k_dim, const int32_t* rows, int64_t count, float* tiles) {
  const int64_t n_tiles = token_tile_count(count);
#pragma omp parallel for schedule(static) if (count * k_dim >= kMinParallelWork)
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    float* out = tiles + tile * k_dim * kTokenTile;
    for (int64_t lane = 0; lane < kTokenTile; ++lane) {
      const int64_t t = tile * kTokenTile + lane;
      if (t >= count) {
        for (int64_t k = 0; k < k_dim; ++k) out[k * kTokenTile + lane] = 0.0f;
        continue;
      }
      const float* row = a + (rows == nullptr ? t : rows[t]) * k_dim;
      for (int64_t k = 0; k < k_dim; ++k) out[k * kTokenTile + lane] = row[k];
    }
  }
}

// acc[lane] for the 8 tokens of one tile against one decoded weight row w [K], in the order of the header.
inline void dot_token_tile(const float* tile, const float* w, int64_t k_dim, float* acc) {
  for (int64_t lane = 0; lane < kTokenTile; ++lane) acc[lane] = 0.0f;
  for (int64_t block_start = 0; block_start < k_dim; block_start += kGemmSumBlock) {
    const int64_t block_end = std::min(k_dim, block_start + kGemmSumBlock);
    float block_sum[kTokenTile] = {};
    for (int64_t k = block_start; k < block_end; ++k)
      for (int64_t lane = 0; lane < kTokenTile; ++lane) block_sum[lane] += tile[k * kTokenTile + lane] * w[k];
    for (int64_t lane = 0; lane < kTokenTile; ++lane) acc[lane] += block_sum[lane];
  }
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
      float acc[kTokenTile];
      dot_token_tile(tiles + tile * k_dim * kTokenTile, w, k_dim, acc);
      const int64_t lanes = std::min(kTokenTile, m - tile * kTokenTile);
      for (int64_t lane = 0; lane < lanes; ++lane) store(tile * kTokenTile + lane, n, acc[lane]);
    }
  }
}

}  // namespace fp4serve
