// Post-processing layouts of NVFP4 tensors (spec §3): byte-level row permutations and the 128x4 scale swizzle,
// each with its exact inverse. Tensors are stacks of row-major byte matrices; 3-D per-expert tensors are handled
// one expert at a time. Out-of-place functions need non-overlapping buffers; *_in_place ones use a scratch copy.
#pragma once
#include <cstdint>
#include <string_view>

namespace fp4serve {

// Shape of [n_matrices, n_rows, row_bytes] bytes, row-major: 2-D tensors have n_matrices = 1, per-expert MoE tensors
// n_matrices = E. Packed weights have row_bytes = K/2; E4M3 block scales row_bytes = K/16. name labels errors.
struct ByteMatrixShape {
  int64_t n_matrices = 1;
  int64_t n_rows = 0;
  int64_t row_bytes = 0;
  std::string_view name = "matrix";
};

// ---- 3a. 128x4 swizzled block scales (CUTLASS / cuBLASLt block-scaled GEMM) ----
// Linear scales [N, Kb] are zero-padded to [Np, Kp] = [roundup(N, 128), roundup(Kb, 4)] and stored so that element
// (m, k) lies at swizzled_scale_offset(m, k, Kp) of the padded matrix's Np * Kp bytes.
struct SwizzledScaleShape {
  int64_t padded_rows;  // Np
  int64_t padded_cols;  // Kp
};
constexpr SwizzledScaleShape swizzled_scale_shape(int64_t n_rows, int64_t n_scale_cols) {
  return {(n_rows + 127) / 128 * 128, (n_scale_cols + 3) / 4 * 4};
}
// View [Np/128, 4, 32, Kp/4, 4] permuted to [Np/128, Kp/4, 32, 4, 4]; kernels read scales through this.
constexpr int64_t swizzled_scale_offset(int64_t m, int64_t k, int64_t padded_cols) {
  return (m / 128) * (padded_cols / 4) * 512 + (k / 4) * 512 + (m % 32) * 16 + ((m % 128) / 32) * 4 + (k % 4);
}
// True iff the swizzled scales have the source's shape (N % 128 == 0 and Kb % 4 == 0): only then may they alias it.
constexpr bool swizzle_preserves_shape(int64_t n_rows, int64_t n_scale_cols) {
  return n_rows % 128 == 0 && n_scale_cols % 4 == 0;
}

// src [E, N, Kb] linear -> dst [E, Np * Kp] swizzled, padding zeroed. shape describes src (row_bytes = Kb).
void swizzle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
// src [E, Np * Kp] swizzled -> dst [E, N, Kb] linear; shape describes dst. Padding is dropped.
void unswizzle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
// Need swizzle_preserves_shape(N, Kb).
void swizzle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape);
void unswizzle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape);

// ---- 3b. TRT-LLM-gen row shuffle (FlashInfer shuffle_matrix_a, epilogue_tile_m = 128) ----
// shuffled[shuffled_row_index(r)] = original[r]; within each 32-row block, row r goes to (r % 4) * 8 + r / 4.
constexpr int64_t shuffled_row_index(int64_t old_row) {
  const int64_t r = old_row % 32;
  return old_row - r + (r % 4) * 8 + r / 4;
}
// Need N % 32 == 0. Rows of packed weights (or any per-row data) move as whole byte rows.
void shuffle_rows(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
void unshuffle_rows(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
void shuffle_rows_in_place(uint8_t* data, const ByteMatrixShape& shape);
void unshuffle_rows_in_place(uint8_t* data, const ByteMatrixShape& shape);
// Block scales for the TRT-LLM-gen path (FlashInfer shuffle_matrix_sf_a): row shuffle, then 128x4 swizzle. Need
// N % 128 == 0 and Kb % 4 == 0, so the result has the source's shape.
void shuffle_swizzle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
void unswizzle_unshuffle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
void shuffle_swizzle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape);
void unswizzle_unshuffle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape);

// ---- 3c. Gated-activation row reorder (MoE w13 for the TRT-LLM path) ----
// w13 rows [gate 0..I) [up I..2I) interleave with GATE FIRST: reordered[2i] = gate i, reordered[2i+1] = up i.
// Apply to weights, block scales (before any swizzle) and per-row data, before the 3b shuffle. Need N even.
constexpr int64_t gated_reordered_row_index(int64_t old_row, int64_t n_rows) {
  const int64_t half = n_rows / 2;
  return old_row < half ? 2 * old_row : 2 * (old_row - half) + 1;
}
void reorder_rows_gated(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
void unreorder_rows_gated(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst);
void reorder_rows_gated_in_place(uint8_t* data, const ByteMatrixShape& shape);
void unreorder_rows_gated_in_place(uint8_t* data, const ByteMatrixShape& shape);

}  // namespace fp4serve
