#include "format/layout.h"

#include <cstring>
#include <vector>

#include "common/error.h"

namespace fp4serve {

namespace {

// Output row of source row `row` in a matrix of n_rows rows.
using RowMap = int64_t (*)(int64_t row, int64_t n_rows);
int64_t identity_row(int64_t row, int64_t) { return row; }
int64_t shuffled_row(int64_t row, int64_t) { return shuffled_row_index(row); }

enum class Direction { kForward, kInverse };

int64_t matrix_bytes(const ByteMatrixShape& shape) { return shape.n_rows * shape.row_bytes; }

void check_shape(const char* function, const ByteMatrixShape& shape) {
  FP4_CHECK(shape.n_matrices >= 0 && shape.n_rows >= 0 && shape.row_bytes >= 0,
            "{}: tensor '{}' has a negative shape [{}, {}, {}]", function, shape.name, shape.n_matrices,
            shape.n_rows, shape.row_bytes);
}

void check_disjoint(const char* function, const ByteMatrixShape& shape, const uint8_t* src, int64_t src_bytes,
                    const uint8_t* dst, int64_t dst_bytes) {
  const auto src_begin = reinterpret_cast<uintptr_t>(src), dst_begin = reinterpret_cast<uintptr_t>(dst);
  const bool disjoint = src_begin + static_cast<uintptr_t>(src_bytes) <= dst_begin ||
                        dst_begin + static_cast<uintptr_t>(dst_bytes) <= src_begin;
  FP4_CHECK(disjoint, "{}: tensor '{}': source and destination overlap; use the _in_place variant", function,
            shape.name);
}

void check_rows_multiple(const char* function, const ByteMatrixShape& shape, int64_t multiple, const char* why) {
  FP4_CHECK(shape.n_rows % multiple == 0, "{}: tensor '{}' has {} rows, not a multiple of {} ({})", function,
            shape.name, shape.n_rows, multiple, why);
}

void check_shape_preserving_swizzle(const char* function, const ByteMatrixShape& shape) {
  const SwizzledScaleShape padded = swizzled_scale_shape(shape.n_rows, shape.row_bytes);
  FP4_CHECK(swizzle_preserves_shape(shape.n_rows, shape.row_bytes),
            "{}: tensor '{}': block scales [{}, {}] swizzle to the padded shape [{}, {}]; this needs rows % 128 == 0 "
            "and scale columns % 4 == 0 (K % 64 == 0); swizzle into a separate buffer instead",
            function, shape.name, shape.n_rows, shape.row_bytes, padded.padded_rows, padded.padded_cols);
}

// Forward: dst row map(r) = src row r. Inverse: dst row r = src row map(r).
void permute_rows(const char* function, const uint8_t* src, const ByteMatrixShape& shape, RowMap map,
                  Direction direction, uint8_t* dst) {
  const int64_t bytes = matrix_bytes(shape);
  check_disjoint(function, shape, src, shape.n_matrices * bytes, dst, shape.n_matrices * bytes);
  for (int64_t e = 0; e < shape.n_matrices; ++e)
    for (int64_t r = 0; r < shape.n_rows; ++r) {
      const int64_t mapped = map(r, shape.n_rows);
      const int64_t from = direction == Direction::kForward ? r : mapped;
      const int64_t to = direction == Direction::kForward ? mapped : r;
      std::memcpy(dst + e * bytes + to * shape.row_bytes, src + e * bytes + from * shape.row_bytes,
                  static_cast<size_t>(shape.row_bytes));
    }
}

// Forward: linear [N, Kb] -> swizzled [Np * Kp] (padding zeroed), source row m landing as row map(m).
// Inverse: swizzled -> linear, reading row map(m) into row m. shape describes the linear side.
void swizzle(const char* function, const uint8_t* src, const ByteMatrixShape& shape, RowMap map, Direction direction,
             uint8_t* dst) {
  const SwizzledScaleShape padded = swizzled_scale_shape(shape.n_rows, shape.row_bytes);
  const int64_t linear_bytes = matrix_bytes(shape), swizzled_bytes = padded.padded_rows * padded.padded_cols;
  const bool forward = direction == Direction::kForward;
  check_disjoint(function, shape, src, shape.n_matrices * (forward ? linear_bytes : swizzled_bytes), dst,
                 shape.n_matrices * (forward ? swizzled_bytes : linear_bytes));
  for (int64_t e = 0; e < shape.n_matrices; ++e) {
    const uint8_t* in = src + e * (forward ? linear_bytes : swizzled_bytes);
    uint8_t* out = dst + e * (forward ? swizzled_bytes : linear_bytes);
    if (forward) std::memset(out, 0, static_cast<size_t>(swizzled_bytes));
    for (int64_t m = 0; m < shape.n_rows; ++m) {
      const int64_t row = map(m, shape.n_rows);
      for (int64_t k = 0; k < shape.row_bytes; ++k) {
        const int64_t linear = m * shape.row_bytes + k, swizzled = swizzled_scale_offset(row, k, padded.padded_cols);
        if (forward)
          out[swizzled] = in[linear];
        else
          out[linear] = in[swizzled];
      }
    }
  }
}

// Runs a shape-preserving out-of-place transform on each matrix of data through a scratch copy of one matrix.
template <typename OutOfPlace>
void apply_in_place(const char* function, uint8_t* data, const ByteMatrixShape& shape, OutOfPlace out_of_place) {
  check_shape(function, shape);
  ByteMatrixShape one_matrix = shape;
  one_matrix.n_matrices = 1;
  const int64_t bytes = matrix_bytes(shape);
  std::vector<uint8_t> scratch(static_cast<size_t>(bytes));
  for (int64_t e = 0; e < shape.n_matrices; ++e) {
    std::memcpy(scratch.data(), data + e * bytes, static_cast<size_t>(bytes));
    out_of_place(scratch.data(), one_matrix, data + e * bytes);
  }
}

}  // namespace

void swizzle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("swizzle_block_scales", shape);
  swizzle("swizzle_block_scales", src, shape, identity_row, Direction::kForward, dst);
}

void unswizzle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("unswizzle_block_scales", shape);
  swizzle("unswizzle_block_scales", src, shape, identity_row, Direction::kInverse, dst);
}

void swizzle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  check_shape_preserving_swizzle("swizzle_block_scales_in_place", shape);
  apply_in_place("swizzle_block_scales_in_place", data, shape, swizzle_block_scales);
}

void unswizzle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  check_shape_preserving_swizzle("unswizzle_block_scales_in_place", shape);
  apply_in_place("unswizzle_block_scales_in_place", data, shape, unswizzle_block_scales);
}

void shuffle_rows(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("shuffle_rows", shape);
  check_rows_multiple("shuffle_rows", shape, 32, "the TRT-LLM row shuffle permutes 32-row blocks");
  permute_rows("shuffle_rows", src, shape, shuffled_row, Direction::kForward, dst);
}

void unshuffle_rows(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("unshuffle_rows", shape);
  check_rows_multiple("unshuffle_rows", shape, 32, "the TRT-LLM row shuffle permutes 32-row blocks");
  permute_rows("unshuffle_rows", src, shape, shuffled_row, Direction::kInverse, dst);
}

void shuffle_rows_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  apply_in_place("shuffle_rows_in_place", data, shape, shuffle_rows);
}

void unshuffle_rows_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  apply_in_place("unshuffle_rows_in_place", data, shape, unshuffle_rows);
}

void shuffle_swizzle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("shuffle_swizzle_block_scales", shape);
  check_shape_preserving_swizzle("shuffle_swizzle_block_scales", shape);
  swizzle("shuffle_swizzle_block_scales", src, shape, shuffled_row, Direction::kForward, dst);
}

void unswizzle_unshuffle_block_scales(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("unswizzle_unshuffle_block_scales", shape);
  check_shape_preserving_swizzle("unswizzle_unshuffle_block_scales", shape);
  swizzle("unswizzle_unshuffle_block_scales", src, shape, shuffled_row, Direction::kInverse, dst);
}

void shuffle_swizzle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  apply_in_place("shuffle_swizzle_block_scales_in_place", data, shape, shuffle_swizzle_block_scales);
}

void unswizzle_unshuffle_block_scales_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  apply_in_place("unswizzle_unshuffle_block_scales_in_place", data, shape, unswizzle_unshuffle_block_scales);
}

void reorder_rows_gated(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("reorder_rows_gated", shape);
  check_rows_multiple("reorder_rows_gated", shape, 2, "w13 stacks gate and up rows of equal count");
  permute_rows("reorder_rows_gated", src, shape, gated_reordered_row_index, Direction::kForward, dst);
}

void unreorder_rows_gated(const uint8_t* src, const ByteMatrixShape& shape, uint8_t* dst) {
  check_shape("unreorder_rows_gated", shape);
  check_rows_multiple("unreorder_rows_gated", shape, 2, "w13 stacks gate and up rows of equal count");
  permute_rows("unreorder_rows_gated", src, shape, gated_reordered_row_index, Direction::kInverse, dst);
}

void reorder_rows_gated_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  apply_in_place("reorder_rows_gated_in_place", data, shape, reorder_rows_gated);
}

void unreorder_rows_gated_in_place(uint8_t* data, const ByteMatrixShape& shape) {
  apply_in_place("unreorder_rows_gated_in_place", data, shape, unreorder_rows_gated);
}

}  // namespace fp4serve
