// NVFP4 weight quantization: a hand-worked row, random matrices against brute-force nearest encoders and the
// half-step error bound, zero blocks and matrices, maximum values, scale underflow, bf16 input and bad input.
#include "format/nvfp4.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "format/e4m3.h"
#include "slow_reference.h"

namespace fp4serve {
namespace {

using namespace test;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// One row of three blocks, global scale 0.5, worked by hand:
// Block 0: amax 12 -> s = 12 / (6 * 0.5) = 4 -> E4M3 0x48 (exponent field 2 + 7 = 9, mantissa 0); q = w / 2:
//   w  12  -12  0.5  1.5  2.5  3.5  5    7    10   -1   -0.4  0   -0   11   2    6
//   q  6   -6   .25  .75  1.25 1.75 2.5  3.5  5    -.5  -.2   0   -0   5.5  1    3
//   c  7   15   0    2    2    4    4    6    6    9    8     0   0    7    2    5      (ties to even, -0.2 -> 8)
// Block 1: amax 5 -> s = 5/3 = 1.667 -> nearest E4M3 1.625 (0x3D: exponent field 7, mantissa 5); denominator 0.8125:
//   w  5      0.40625  0.203125  -1.421875  2.4375  -4.0625  1.21875  0 x9
//   q  6.15   0.5      0.25      -1.75      3       -5       1.5      0
//   c  7      1        0         12         5       14       3        0          (6.15 saturates to 6)
// Block 2: all zero -> s = 0 -> 1.0 (0x38), codes 0.
const std::vector<float> kHandRow = {12, -12, 0.5f, 1.5f, 2.5f, 3.5f, 5, 7, 10, -1, -0.4f, 0, -0.0f, 11, 2, 6,
                                     5, 0.40625f, 0.203125f, -1.421875f, 2.4375f, -4.0625f, 1.21875f, 0,
                                     0, 0, 0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
constexpr float kHandGlobalScale = 0.5f;
const std::vector<uint8_t> kHandPacked = {0xF7, 0x20, 0x42, 0x64, 0x96, 0x08, 0x70, 0x52,  // block 0
                                          0x17, 0xC0, 0xE5, 0x03, 0x00, 0x00, 0x00, 0x00,  // block 1
                                          0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
const std::vector<uint8_t> kHandScales = {0x48, 0x3D, 0x38};
// Dequantized: code value * 2 (block 0), * 0.8125 (block 1), * 0.5 (block 2).
const std::vector<float> kHandDequantized = {12, -12, 0, 2, 2, 4, 4, 8, 8, -1, -0.0f, 0, 0, 12, 2, 6,
                                             4.875f, 0.40625f, 0, -1.625f, 2.4375f, -3.25f, 1.21875f, 0,
                                             0, 0, 0, 0, 0, 0, 0, 0,
                                             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

struct Quantized {
  std::vector<uint8_t> packed, scales;
  Quantized(int64_t rows, int64_t cols) : packed(rows * cols / 2), scales(rows * cols / kNvfp4BlockSize) {}
};

TEST(Nvfp4, HandWorkedRow) {
  Quantized q(1, 48);
  nvfp4_quantize(kHandRow.data(), 1, 48, kHandGlobalScale, q.packed.data(), q.scales.data());
  EXPECT_THAT(q.packed, ElementsAreArray(kHandPacked));
  EXPECT_THAT(q.scales, ElementsAreArray(kHandScales));
  std::vector<float> out(48);
  nvfp4_dequantize(q.packed.data(), q.scales.data(), kHandGlobalScale, 1, 48, out.data());
  EXPECT_THAT(out, ElementsAreArray(kHandDequantized));
}

TEST(Nvfp4, Bf16InputGivesTheSameBytes) {
  // Every value of the hand row but -0.4 is a bf16 value; bf16(-0.4) still gives q ~ -0.2 -> code 8.
  std::vector<bf16_bits> row_bf16;
  for (float v : kHandRow) row_bf16.push_back(float_to_bf16(v));
  Quantized q(1, 48);
  nvfp4_quantize(row_bf16.data(), 1, 48, kHandGlobalScale, q.packed.data(), q.scales.data());
  EXPECT_THAT(q.packed, ElementsAreArray(kHandPacked));
  EXPECT_THAT(q.scales, ElementsAreArray(kHandScales));
}

TEST(Nvfp4, GlobalScaleAndAmax) {
  EXPECT_EQ(nvfp4_global_scale(2688.0f), 1.0f);
  EXPECT_EQ(nvfp4_global_scale(1.0f), 1.0f / 2688.0f);
  EXPECT_EQ(nvfp4_global_scale(0.0f), 1.0f);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -1.0f})
    EXPECT_THAT(error_message([&] { nvfp4_global_scale(bad); }), HasSubstr("amax"));

  const std::vector<float> values = {1, -7.5f, 3, -0.0f};
  EXPECT_EQ(amax_abs(values.data(), 4), 7.5f);
  EXPECT_EQ(amax_abs(values.data(), 0), 0.0f);
  const std::vector<float> with_inf = {1, -std::numeric_limits<float>::infinity(), 2};
  EXPECT_EQ(amax_abs(with_inf.data(), 3), std::numeric_limits<float>::infinity());
  const std::vector<float> with_nan = {1, std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()};
  EXPECT_TRUE(std::isnan(amax_abs(with_nan.data(), 3)));
  const std::vector<bf16_bits> bf16_values = {float_to_bf16(-3.5f), float_to_bf16(2.0f), float_to_bf16(-0.0f)};
  EXPECT_EQ(amax_abs(bf16_values.data(), 3), 3.5f);
}

// Random matrix whose blocks span four decades of magnitude (block scales stay E4M3 normals).
std::vector<float> random_weights(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> decade(-4.0f, 0.0f), unit(-1.0f, 1.0f);
  std::vector<float> w(rows * cols);
  for (int64_t block = 0; block < rows * cols / kNvfp4BlockSize; ++block) {
    const float magnitude = 0.37f * std::pow(10.0f, decade(rng));
    for (int64_t i = 0; i < kNvfp4BlockSize; ++i) w[block * kNvfp4BlockSize + i] = magnitude * unit(rng);
  }
  return w;
}

TEST(Nvfp4, RandomMatrixMatchesBruteForceAndHalfStepBound) {
  const int64_t rows = 37, cols = 160;
  const std::vector<float> w = random_weights(rows, cols, 7);
  const float global_scale = nvfp4_global_scale(amax_abs(w.data(), rows * cols));
  Quantized q(rows, cols);
  nvfp4_quantize(w.data(), rows, cols, global_scale, q.packed.data(), q.scales.data());
  std::vector<float> w_hat(rows * cols);
  nvfp4_dequantize(q.packed.data(), q.scales.data(), global_scale, rows, cols, w_hat.data());

  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < cols / kNvfp4BlockSize; ++b) {
      const float* x = &w[r * cols + b * kNvfp4BlockSize];
      float block_amax = 0;
      for (int i = 0; i < kNvfp4BlockSize; ++i) block_amax = std::max(block_amax, std::fabs(x[i]));
      const uint8_t scale_code = q.scales[r * (cols / kNvfp4BlockSize) + b];
      ASSERT_EQ(scale_code, e4m3_encode_brute_force(block_amax / (6.0f * global_scale))) << r << "," << b;
      const float scale = static_cast<float>(e4m3_value_from_bits(scale_code));
      for (int i = 0; i < kNvfp4BlockSize; ++i) {
        const int64_t col = b * kNvfp4BlockSize + i;
        const uint8_t code = (q.packed[r * cols / 2 + col / 2] >> (4 * (col % 2))) & 0xF;
        ASSERT_EQ(code, e2m1_encode_brute_force(x[i] / (scale * global_scale))) << r << "," << col;
        ASSERT_EQ(w_hat[r * cols + col], static_cast<float>(e2m1_value_from_bits(code) * scale * global_scale));
        // Half of the widest E2M1 step (4 -> 6) in block units; also covers q up to 6 * 16/15 after scale rounding.
        EXPECT_LE(std::fabs(x[i] - w_hat[r * cols + col]), 1.0 * scale * global_scale * (1 + 1e-6));
      }
    }
}

TEST(Nvfp4, ZeroBlocksAndAllZeroMatrix) {
  const int64_t rows = 3, cols = 32;
  std::vector<float> w(rows * cols, 0.0f);
  w[16] = -0.0f;  // a negative zero stays code 0
  const float global_scale = nvfp4_global_scale(amax_abs(w.data(), rows * cols));
  EXPECT_EQ(global_scale, 1.0f);
  Quantized q(rows, cols);
  nvfp4_quantize(w.data(), rows, cols, global_scale, q.packed.data(), q.scales.data());
  EXPECT_THAT(q.packed, ::testing::Each(0x00));
  EXPECT_THAT(q.scales, ::testing::Each(0x38));  // 1.0
  std::vector<float> w_hat(rows * cols, 5.0f);
  nvfp4_dequantize(q.packed.data(), q.scales.data(), global_scale, rows, cols, w_hat.data());
  EXPECT_THAT(w_hat, ::testing::Each(0.0f));
}

TEST(Nvfp4, MaxValuesUseTheTopScaleAndCode) {
  for (float amax : {1e-30f, 0.0137f, 1.0f, 3.3e4f, 2.5e36f}) {
    std::vector<float> w(32, 0.0f);
    w[3] = amax;
    w[20] = -amax;
    w[5] = amax * 0.3f;
    const float global_scale = nvfp4_global_scale(amax);
    Quantized q(1, 32);
    nvfp4_quantize(w.data(), 1, 32, global_scale, q.packed.data(), q.scales.data());
    EXPECT_THAT(q.scales, ElementsAreArray({0x7E, 0x7E})) << amax;  // 448 in both blocks
    EXPECT_EQ(q.packed[1] >> 4, 7) << amax;                         // element 3: +6
    EXPECT_EQ(q.packed[10] & 0xF, 15) << amax;                      // element 20: -6
    std::vector<float> w_hat(32);
    nvfp4_dequantize(q.packed.data(), q.scales.data(), global_scale, 1, 32, w_hat.data());
    EXPECT_NEAR(w_hat[3], amax, amax * 1e-6) << amax;  // 6 * 448 * amax / 2688
  }
}

TEST(Nvfp4, TooSmallGlobalScaleSaturatesInsteadOfNaN) {
  std::vector<float> w(16, 1e6f);
  w[1] = -3e5f;
  Quantized q(1, 16);
  nvfp4_quantize(w.data(), 1, 16, 1.0f, q.packed.data(), q.scales.data());  // s = 1e6 / 6 is far above 448
  EXPECT_EQ(q.scales[0], 0x7E);
  EXPECT_EQ(q.packed[0], 0xF7);  // +6, -6
}

TEST(Nvfp4, ScaleUnderflowKeepsModelOptBytesAndDequantizesToZero) {
  // Block amax 1e-4 under a tensor amax of 1e4: s = 1e-4 / (6 * 1e4 / 2688) ~ 4.5e-6 < 2^-10 rounds to E4M3 0.
  // ModelOpt then divides by zero: +x/0 = +Inf -> 7, -x/0 = -Inf -> 15, 0/0 = NaN -> 7.
  std::vector<float> w(16, 0.0f);
  w[0] = 1e-4f;
  w[1] = -1e-4f;
  w[3] = -0.0f;
  const float global_scale = nvfp4_global_scale(1e4f);
  Quantized q(1, 16);
  nvfp4_quantize(w.data(), 1, 16, global_scale, q.packed.data(), q.scales.data());
  EXPECT_EQ(q.scales[0], 0x00);
  EXPECT_THAT(q.packed, ElementsAreArray({0xF7, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77}));
  std::vector<float> w_hat(16, 1.0f);
  nvfp4_dequantize(q.packed.data(), q.scales.data(), global_scale, 1, 16, w_hat.data());
  EXPECT_THAT(w_hat, ::testing::Each(0.0f));
}

TEST(Nvfp4, FloatOperationOrderIsModelOpts) {
  // Inputs found by search where another fp32 order changes the bytes (random data almost never does).
  // Element: with g = amax / 2688 and scale 3.75 (0x47), x / (3.75f * g) is exactly the tie 5 -> 4.0 (code 6);
  // x * (1 / (3.75f * g)) or x / 3.75f / g land above 5 -> 6.0 (code 7).
  const float element_g = nvfp4_global_scale(0x1.b08142p+0f);
  std::vector<float> w(16, 0.0f);
  w[0] = 0x1.cf65ecp-7f;  // block amax: s = w0 / (6 * g) rounds to 3.75; q = 6.0000004 -> code 7
  w[1] = 0x1.822a46p-7f;
  Quantized q(1, 16);
  nvfp4_quantize(w.data(), 1, 16, element_g, q.packed.data(), q.scales.data());
  EXPECT_EQ(q.scales[0], 0x47);
  EXPECT_EQ(q.packed[0], 0x67);
  // Scale: block_amax / (6.0f * g) = 9.499999 -> 9 (0x51), while block_amax / 6 / g = 9.5 exactly -> 10 (0x52).
  const float scale_g = nvfp4_global_scale(0x1.18e172p+1f);
  w[0] = 0x1.7d31f6p-5f;
  w[1] = 0.0f;
  nvfp4_quantize(w.data(), 1, 16, scale_g, q.packed.data(), q.scales.data());
  EXPECT_EQ(q.scales[0], 0x51);
}

TEST(Nvfp4, EmptyAndSingleBlockShapes) {
  Quantized q(1, 16);
  nvfp4_quantize(static_cast<const float*>(nullptr), 0, 16, 1.0f, q.packed.data(), q.scales.data());
  const std::vector<float> w = {3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1.5f};
  nvfp4_quantize(w.data(), 1, 16, 1.0f, q.packed.data(), q.scales.data());
  // s = 3 / 6 = 0.5 (0x30); q = w / 0.5: 6 -> 7, -3 -> 13.
  EXPECT_EQ(q.scales[0], 0x30);
  EXPECT_EQ(q.packed[0], 0x07);
  EXPECT_EQ(q.packed[7], 0xD0);
}

TEST(Nvfp4, BadInputIsRejectedWithItsPosition) {
  Quantized q(2, 32);
  std::vector<float> w(64, 1.0f);
  EXPECT_THAT(error_message([&] { nvfp4_quantize(w.data(), 1, 24, 1.0f, q.packed.data(), q.scales.data()); }),
              HasSubstr("cols = 24 is not a multiple of the NVFP4 block size 16"));
  EXPECT_THAT(error_message([&] { nvfp4_quantize(w.data(), 2, 32, 0.0f, q.packed.data(), q.scales.data()); }),
              HasSubstr("global scale must be finite and > 0"));
  w[32 + 5] = std::numeric_limits<float>::quiet_NaN();
  w[32 + 30] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(error_message([&] { nvfp4_quantize(w.data(), 2, 32, 1.0f, q.packed.data(), q.scales.data()); }),
              HasSubstr("at row 1, column 5"));
  std::vector<bf16_bits> w_bf16(64, float_to_bf16(1.0f));
  w_bf16[17] = float_to_bf16(-std::numeric_limits<float>::infinity());
  EXPECT_THAT(error_message([&] { nvfp4_quantize(w_bf16.data(), 2, 32, 1.0f, q.packed.data(), q.scales.data()); }),
              HasSubstr("non-finite value -inf at row 0, column 17"));
}

}  // namespace
}  // namespace fp4serve
