// Post-processing layouts: the swizzle against hand-computed offsets and an independent 5-D permute reference,
// zero padding, round trips on odd shapes, per-expert 3-D tensors, in-place variants, and clear errors.
#include "format/layout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "slow_reference.h"

namespace fp4serve {
namespace {

using namespace test;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::vector<uint8_t> random_bytes(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(1, 255);  // nonzero, so zero padding is visible
  std::vector<uint8_t> bytes(n);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(byte(rng));
  return bytes;
}

// Spec 3a as a tensor operation: pad [N, Kb] to [Np, Kp] with zeros, view it as [Np/128, 4, 32, Kp/4, 4] and permute
// the axes to [Np/128, Kp/4, 32, 4, 4].
std::vector<uint8_t> swizzle_by_permuting_axes(const uint8_t* linear, int64_t n, int64_t kb) {
  const int64_t np = (n + 127) / 128 * 128, kp = (kb + 3) / 4 * 4;
  std::vector<uint8_t> swizzled(np * kp);
  for (int64_t tile = 0; tile < np / 128; ++tile)
    for (int64_t quarter = 0; quarter < 4; ++quarter)
      for (int64_t lane = 0; lane < 32; ++lane)
        for (int64_t col_group = 0; col_group < kp / 4; ++col_group)
          for (int64_t col = 0; col < 4; ++col) {
            const int64_t m = tile * 128 + quarter * 32 + lane, k = col_group * 4 + col;
            const int64_t to = (((tile * (kp / 4) + col_group) * 32 + lane) * 4 + quarter) * 4 + col;
            swizzled[to] = (m < n && k < kb) ? linear[m * kb + k] : 0;
          }
  return swizzled;
}

TEST(Swizzle, PaddedShapeAndHandComputedOffsets) {
  EXPECT_EQ(swizzled_scale_shape(1, 1).padded_rows, 128);
  EXPECT_EQ(swizzled_scale_shape(1, 1).padded_cols, 4);
  EXPECT_EQ(swizzled_scale_shape(128, 4).padded_rows, 128);
  EXPECT_EQ(swizzled_scale_shape(129, 5).padded_rows, 256);
  EXPECT_EQ(swizzled_scale_shape(129, 5).padded_cols, 8);
  EXPECT_EQ(swizzled_scale_shape(0, 0).padded_rows, 0);
  // Kp = 8: one 128-row tile holds 128 * 8 = 1024 bytes; a 4-column group of it 512.
  EXPECT_EQ(swizzled_scale_offset(0, 0, 8), 0);
  EXPECT_EQ(swizzled_scale_offset(0, 1, 8), 1);
  EXPECT_EQ(swizzled_scale_offset(1, 0, 8), 16);    // next lane of 32
  EXPECT_EQ(swizzled_scale_offset(32, 0, 8), 4);    // next quarter of the 128 rows
  EXPECT_EQ(swizzled_scale_offset(0, 4, 8), 512);   // next 4-column group
  EXPECT_EQ(swizzled_scale_offset(128, 0, 8), 1024);
  EXPECT_EQ(swizzled_scale_offset(133, 6, 8), 1024 + 512 + 5 * 16 + 0 * 4 + 2);
  EXPECT_EQ(swizzled_scale_offset(100, 3, 4), 4 * 16 + 3 * 4 + 3);  // lane 4, quarter 3
  EXPECT_EQ(swizzled_scale_offset(127, 3, 4), 511);
}

TEST(Swizzle, PreservesShapeOnlyForFullTiles) {
  EXPECT_TRUE(swizzle_preserves_shape(128, 4));
  EXPECT_TRUE(swizzle_preserves_shape(256, 8));
  EXPECT_TRUE(swizzle_preserves_shape(0, 0));
  EXPECT_FALSE(swizzle_preserves_shape(129, 4));
  EXPECT_FALSE(swizzle_preserves_shape(128, 5));
  EXPECT_FALSE(swizzle_preserves_shape(32, 4));
  EXPECT_FALSE(swizzle_preserves_shape(128, 2));
}

TEST(Swizzle, MatchesAxisPermutationAndRoundTripsOnOddShapes) {
  for (int64_t n : {1, 33, 127, 128, 129, 256})
    for (int64_t kb : {1, 3, 4, 5, 8}) {
      const int64_t experts = 3;
      const auto padded = swizzled_scale_shape(n, kb);
      const int64_t swizzled_bytes = padded.padded_rows * padded.padded_cols;
      const std::vector<uint8_t> linear = random_bytes(experts * n * kb, static_cast<uint32_t>(n * 10 + kb));
      const ByteMatrixShape shape{.n_matrices = experts, .n_rows = n, .row_bytes = kb, .name = "w13_weight_scale"};
      std::vector<uint8_t> swizzled(experts * swizzled_bytes, 0xAA);
      swizzle_block_scales(linear.data(), shape, swizzled.data());
      for (int64_t e = 0; e < experts; ++e) {
        const std::vector<uint8_t> expected = swizzle_by_permuting_axes(linear.data() + e * n * kb, n, kb);
        ASSERT_THAT(std::vector<uint8_t>(swizzled.begin() + e * swizzled_bytes,
                                         swizzled.begin() + (e + 1) * swizzled_bytes),
                    ElementsAreArray(expected))
            << "N=" << n << " Kb=" << kb << " expert " << e;
        // Spot check the offset formula on this expert's last real element.
        EXPECT_EQ(swizzled[e * swizzled_bytes + swizzled_scale_offset(n - 1, kb - 1, padded.padded_cols)],
                  linear[e * n * kb + n * kb - 1]);
      }
      std::vector<uint8_t> restored(linear.size());
      unswizzle_block_scales(swizzled.data(), shape, restored.data());
      ASSERT_EQ(restored, linear) << "N=" << n << " Kb=" << kb;
    }
}

TEST(Swizzle, PaddingIsZero) {
  const std::vector<uint8_t> linear = random_bytes(33 * 5, 3);
  std::vector<uint8_t> swizzled(128 * 8, 0xAA);
  swizzle_block_scales(linear.data(), {.n_rows = 33, .row_bytes = 5}, swizzled.data());
  int64_t nonzero = 0;
  for (uint8_t b : swizzled) nonzero += b != 0;
  EXPECT_EQ(nonzero, 33 * 5);  // every source byte is nonzero; every other byte is padding
  EXPECT_EQ(swizzled[swizzled_scale_offset(33, 0, 8)], 0);
  EXPECT_EQ(swizzled[swizzled_scale_offset(0, 5, 8)], 0);
}

TEST(Swizzle, InPlaceMatchesOutOfPlaceWhenShapePreserved) {
  for (int64_t n : {128, 256})
    for (int64_t kb : {4, 8}) {
      const ByteMatrixShape shape{.n_matrices = 2, .n_rows = n, .row_bytes = kb};
      const std::vector<uint8_t> linear = random_bytes(2 * n * kb, 11);
      std::vector<uint8_t> expected(linear.size()), data = linear;
      swizzle_block_scales(linear.data(), shape, expected.data());
      swizzle_block_scales_in_place(data.data(), shape);
      EXPECT_EQ(data, expected);
      unswizzle_block_scales_in_place(data.data(), shape);
      EXPECT_EQ(data, linear);
    }
}

TEST(Swizzle, ErrorsNameTheTensor) {
  std::vector<uint8_t> data(129 * 4);
  EXPECT_THAT(error_message([&] {
                swizzle_block_scales_in_place(data.data(), {.n_rows = 129, .row_bytes = 4, .name = "q_proj.weight_scale"});
              }),
              AllOf(HasSubstr("q_proj.weight_scale"), HasSubstr("[256, 4]"), HasSubstr("rows % 128 == 0")));
  EXPECT_THAT(error_message([&] { swizzle_block_scales(data.data(), {.n_rows = 1, .row_bytes = 4}, data.data()); }),
              HasSubstr("_in_place"));
  EXPECT_THAT(error_message([&] { swizzle_block_scales(data.data(), {.n_rows = -1, .row_bytes = 4}, data.data()); }),
              HasSubstr("negative shape"));
}

TEST(Shuffle, RowIndexWithinBlocksOf32) {
  // map[r] = (r % 4) * 8 + r / 4: rows 0..7 go to 0, 8, 16, 24, 1, 9, 17, 25.
  const int64_t first_rows[] = {0, 8, 16, 24, 1, 9, 17, 25};
  for (int64_t r = 0; r < 8; ++r) EXPECT_EQ(shuffled_row_index(r), first_rows[r]);
  EXPECT_EQ(shuffled_row_index(31), 31);
  EXPECT_EQ(shuffled_row_index(33), 40);
  EXPECT_EQ(shuffled_row_index(36), 33);
  EXPECT_EQ(shuffled_row_index(4 * 32 + 2), 4 * 32 + 16);
  std::vector<int> hits(64, 0);  // a permutation of each block
  for (int64_t r = 0; r < 64; ++r) ++hits[shuffled_row_index(r)];
  EXPECT_THAT(hits, ::testing::Each(1));
}

TEST(Shuffle, MovesWholeRowsAndRoundTrips) {
  const int64_t experts = 2, n = 64, row_bytes = 3;
  const ByteMatrixShape shape{.n_matrices = experts, .n_rows = n, .row_bytes = row_bytes};
  const std::vector<uint8_t> original = random_bytes(experts * n * row_bytes, 5);
  std::vector<uint8_t> shuffled(original.size());
  shuffle_rows(original.data(), shape, shuffled.data());
  auto row = [&](const std::vector<uint8_t>& m, int64_t e, int64_t r) {
    const auto begin = m.begin() + (e * n + r) * row_bytes;
    return std::vector<uint8_t>(begin, begin + row_bytes);
  };
  for (int64_t e = 0; e < experts; ++e) {
    EXPECT_EQ(row(shuffled, e, 8), row(original, e, 1));  // shuffled[map[1] = 8] = original[1]
    EXPECT_EQ(row(shuffled, e, 1), row(original, e, 4));
    EXPECT_EQ(row(shuffled, e, 31), row(original, e, 31));
    EXPECT_EQ(row(shuffled, e, 40), row(original, e, 33));
  }
  std::vector<uint8_t> restored(original.size());
  unshuffle_rows(shuffled.data(), shape, restored.data());
  EXPECT_EQ(restored, original);

  std::vector<uint8_t> data = original;
  shuffle_rows_in_place(data.data(), shape);
  EXPECT_EQ(data, shuffled);
  unshuffle_rows_in_place(data.data(), shape);
  EXPECT_EQ(data, original);
}

TEST(Shuffle, NeedsRowsMultipleOf32) {
  std::vector<uint8_t> data(33 * 8), out(33 * 8);
  EXPECT_THAT(error_message([&] {
                shuffle_rows(data.data(), {.n_rows = 33, .row_bytes = 8, .name = "experts.w2_weight"}, out.data());
              }),
              AllOf(HasSubstr("experts.w2_weight"), HasSubstr("33 rows, not a multiple of 32")));
  EXPECT_THAT(error_message([&] { shuffle_rows_in_place(data.data(), {.n_rows = 33, .row_bytes = 8}); }),
              HasSubstr("multiple of 32"));
}

TEST(ShuffleSwizzle, IsRowShuffleThenSwizzleAndRoundTrips) {
  for (int64_t n : {128, 256})
    for (int64_t kb : {4, 8}) {
      const ByteMatrixShape shape{.n_matrices = 3, .n_rows = n, .row_bytes = kb};
      const std::vector<uint8_t> linear = random_bytes(3 * n * kb, static_cast<uint32_t>(n + kb));
      std::vector<uint8_t> shuffled(linear.size()), expected(linear.size()), actual(linear.size());
      shuffle_rows(linear.data(), shape, shuffled.data());
      swizzle_block_scales(shuffled.data(), shape, expected.data());
      shuffle_swizzle_block_scales(linear.data(), shape, actual.data());
      EXPECT_EQ(actual, expected);
      std::vector<uint8_t> restored(linear.size());
      unswizzle_unshuffle_block_scales(actual.data(), shape, restored.data());
      EXPECT_EQ(restored, linear);
      std::vector<uint8_t> data = linear;
      shuffle_swizzle_block_scales_in_place(data.data(), shape);
      EXPECT_EQ(data, expected);
      unswizzle_unshuffle_block_scales_in_place(data.data(), shape);
      EXPECT_EQ(data, linear);
    }
  std::vector<uint8_t> data(96 * 5), out(96 * 5);
  EXPECT_THAT(error_message([&] { shuffle_swizzle_block_scales(data.data(), {.n_rows = 96, .row_bytes = 4}, out.data()); }),
              HasSubstr("rows % 128 == 0"));
  EXPECT_THAT(error_message([&] { shuffle_swizzle_block_scales(data.data(), {.n_rows = 128, .row_bytes = 5}, out.data()); }),
              HasSubstr("scale columns % 4 == 0"));
}

TEST(GatedReorder, InterleavesGateFirstAndRoundTrips) {
  // I = 3, one byte per row labelling it: gate rows 10, 11, 12 and up rows 20, 21, 22.
  const std::vector<uint8_t> w13 = {10, 11, 12, 20, 21, 22};
  std::vector<uint8_t> reordered(6);
  reorder_rows_gated(w13.data(), {.n_rows = 6, .row_bytes = 1}, reordered.data());
  EXPECT_THAT(reordered, ElementsAreArray({10, 20, 11, 21, 12, 22}));
  std::vector<uint8_t> restored(6);
  unreorder_rows_gated(reordered.data(), {.n_rows = 6, .row_bytes = 1}, restored.data());
  EXPECT_EQ(restored, w13);

  // Several experts, odd row width, in place.
  const ByteMatrixShape shape{.n_matrices = 4, .n_rows = 10, .row_bytes = 7};
  const std::vector<uint8_t> original = random_bytes(4 * 10 * 7, 17);
  std::vector<uint8_t> expected(original.size());
  reorder_rows_gated(original.data(), shape, expected.data());
  for (int64_t e = 0; e < 4; ++e)
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t b = 0; b < 7; ++b) {
        EXPECT_EQ(expected[(e * 10 + 2 * i) * 7 + b], original[(e * 10 + i) * 7 + b]);
        EXPECT_EQ(expected[(e * 10 + 2 * i + 1) * 7 + b], original[(e * 10 + 5 + i) * 7 + b]);
      }
  std::vector<uint8_t> data = original;
  reorder_rows_gated_in_place(data.data(), shape);
  EXPECT_EQ(data, expected);
  unreorder_rows_gated_in_place(data.data(), shape);
  EXPECT_EQ(data, original);

  EXPECT_THAT(error_message([&] {
                reorder_rows_gated_in_place(data.data(), {.n_rows = 5, .row_bytes = 1, .name = "experts.w13_weight"});
              }),
              AllOf(HasSubstr("experts.w13_weight"), HasSubstr("not a multiple of 2")));
}

}  // namespace
}  // namespace fp4serve
