// Activation quantization: static and per-token modes against hand-computed bytes and values, saturation past the
// calibrated range, row independence, bad input, and the GEMM alpha contract written in act_quant.h.
#include "format/act_quant.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "format/bf16.h"
#include "format/nvfp4.h"
#include "slow_reference.h"

namespace fp4serve {
namespace {

using namespace test;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// One block with input_scale 0.25: amax 6 -> s = 6 / (6 * 0.25) = 4 (0x48); x_hat = code value * 4 * 0.25.
//   x  6   -6  0.25  0.75  1.25  1.75  2.5  3.5  5   -0.5  -0.1  0  0  0  0  0
//   c  7   15  0     2     2     4     4    6    6   9     8     0  0  0  0  0
const std::vector<float> kBlock = {6, -6, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5, -0.5f, -0.1f, 0, 0, 0, 0, 0};
const std::vector<uint8_t> kBlockPacked = {0xF7, 0x20, 0x42, 0x64, 0x96, 0x08, 0x00, 0x00};
const std::vector<float> kBlockDequantized = {6, -6, 0, 1, 1, 2, 2, 4, 4, -0.5f, -0.0f, 0, 0, 0, 0, 0};

TEST(ActQuantStatic, HandWorkedBlock) {
  std::vector<uint8_t> packed(8), scales(1);
  quantize_activations_static(kBlock.data(), 1, 16, 0.25f, packed.data(), scales.data());
  EXPECT_THAT(packed, ElementsAreArray(kBlockPacked));
  EXPECT_EQ(scales[0], 0x48);
  std::vector<float> x_hat(16);
  fake_quantize_activations_static(kBlock.data(), 1, 16, 0.25f, x_hat.data());
  EXPECT_THAT(x_hat, ElementsAreArray(kBlockDequantized));
  std::vector<float> in_place = kBlock;
  fake_quantize_activations_static(in_place.data(), 1, 16, 0.25f, in_place.data());
  EXPECT_THAT(in_place, ElementsAreArray(kBlockDequantized));
}

TEST(ActQuantStatic, ValuesPastTheCalibratedRangeSaturate) {
  // input_scale calibrated for amax 2688 * 0.01 = 26.88; x reaches 1000: scale 448, element 6, so |x_hat| <= 26.88.
  std::vector<float> x = {1000, -1000, 30, 26.88f, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -27};
  std::vector<float> x_hat(16);
  fake_quantize_activations_static(x.data(), 1, 16, 0.01f, x_hat.data());
  EXPECT_FLOAT_EQ(x_hat[0], 26.88f);
  EXPECT_FLOAT_EQ(x_hat[1], -26.88f);
  EXPECT_FLOAT_EQ(x_hat[2], 26.88f);
  EXPECT_FLOAT_EQ(x_hat[15], -26.88f);
  for (float v : x_hat) EXPECT_FALSE(std::isnan(v));
}

TEST(ActQuantPerToken, RowScalesAndHandWorkedRows) {
  // Row 0: amax 2688 -> s_0 = 1; the block of amax 2688 gets s = 448 (0x7E), element 6 -> code 7.
  // Row 1: all zero -> s_1 = 1, scale 1.0 (0x38), codes 0.
  // Row 2: the hand block times 224 (amax 1344) -> s_2 = 0.5; block s = 1344 / 3 = 448 (0x7E); q = x / 224.
  const int64_t rows = 3, cols = 16;
  std::vector<float> x(rows * cols, 0.0f);
  x[0] = 2688;
  x[1] = -1344;  // q = -3 -> code 13
  for (int i = 0; i < 16; ++i) x[32 + i] = kBlock[i] * 224.0f;
  std::vector<uint8_t> packed(rows * cols / 2), scales(rows);
  std::vector<float> row_scales(rows);
  quantize_activations_per_token(x.data(), rows, cols, packed.data(), scales.data(), row_scales.data());
  EXPECT_THAT(row_scales, ElementsAreArray({1.0f, 1.0f, 0.5f}));
  EXPECT_THAT(scales, ElementsAreArray({0x7E, 0x38, 0x7E}));
  EXPECT_EQ(packed[0], 0xD7);
  for (int i = 1; i < 16; ++i) EXPECT_EQ(packed[i], 0x00) << i;
  // Row 2: q is the hand block again, so the same codes.
  EXPECT_THAT(std::vector<uint8_t>(packed.begin() + 16, packed.end()), ElementsAreArray(kBlockPacked));

  std::vector<float> x_hat(rows * cols);
  fake_quantize_activations_per_token(x.data(), rows, cols, x_hat.data());
  EXPECT_EQ(x_hat[0], 2688.0f);
  EXPECT_EQ(x_hat[1], -1344.0f);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(x_hat[32 + i], kBlockDequantized[i] * 224.0f) << i;
}

TEST(ActQuantPerToken, RowsAreIndependentAndBounded) {
  const int64_t rows = 9, cols = 64;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), decade(-3.0f, 3.0f);
  std::vector<float> x(rows * cols);
  for (int64_t t = 0; t < rows; ++t) {
    const float row_magnitude = std::pow(10.0f, decade(rng));  // rows differ by up to 6 decades
    for (int64_t k = 0; k < cols; ++k) x[t * cols + k] = row_magnitude * unit(rng);
  }
  std::vector<float> x_hat(rows * cols);
  fake_quantize_activations_per_token(x.data(), rows, cols, x_hat.data());
  for (int64_t t = 0; t < rows; ++t) {
    std::vector<float> alone(cols);
    fake_quantize_activations_per_token(x.data() + t * cols, 1, cols, alone.data());
    EXPECT_THAT(alone, ElementsAreArray(x_hat.data() + t * cols, cols)) << "row " << t;
    float row_amax = 0;
    for (int64_t k = 0; k < cols; ++k) row_amax = std::max(row_amax, std::fabs(x[t * cols + k]));
    // A block's scale is at most 448 * s_t, so its widest half step is at most 448 * s_t = row_amax / 6.
    for (int64_t k = 0; k < cols; ++k)
      EXPECT_LE(std::fabs(x[t * cols + k] - x_hat[t * cols + k]), row_amax / 6 * (1 + 1e-6)) << t << "," << k;
  }
}

TEST(ActQuant, GemmWithDocumentedAlphaEqualsTheFakeQuantizedProduct) {
  // y = x_hat . W_hat^T computed in double must equal (x_q . W_q^T) * alpha with x_q, W_q = e2m1 * e4m3 products.
  const int64_t tokens = 4, out_features = 5, in_features = 48;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> x(tokens * in_features), w(out_features * in_features);
  for (float& v : x) v = 3.0f * unit(rng);
  for (float& v : w) v = 0.02f * unit(rng);
  const float weight_scale_2 = nvfp4_global_scale(amax_abs(w.data(), w.size()));
  std::vector<uint8_t> w_packed(w.size() / 2), w_scales(w.size() / 16);
  nvfp4_quantize(w.data(), out_features, in_features, weight_scale_2, w_packed.data(), w_scales.data());
  std::vector<float> w_hat(w.size());
  nvfp4_dequantize(w_packed.data(), w_scales.data(), weight_scale_2, out_features, in_features, w_hat.data());

  // x_q[t,k] (or W_q[n,k]) = e2m1 * e4m3 from the bytes, through the slow bit-field references.
  auto products = [](const std::vector<uint8_t>& packed, const std::vector<uint8_t>& scales, int64_t n) {
    std::vector<double> values(n);
    for (int64_t i = 0; i < n; ++i)
      values[i] = e2m1_value_from_bits((packed[i / 2] >> (4 * (i % 2))) & 0xF) * e4m3_value_from_bits(scales[i / 16]);
    return values;
  };
  const std::vector<double> w_q = products(w_packed, w_scales, w.size());

  for (bool per_token : {false, true}) {
    const float input_scale = 3.0f / 2688.0f;
    std::vector<uint8_t> x_packed(x.size() / 2), x_scales(x.size() / 16);
    std::vector<float> row_scales(tokens, input_scale), x_hat(x.size());
    if (per_token) {
      quantize_activations_per_token(x.data(), tokens, in_features, x_packed.data(), x_scales.data(),
                                     row_scales.data());
      fake_quantize_activations_per_token(x.data(), tokens, in_features, x_hat.data());
    } else {
      quantize_activations_static(x.data(), tokens, in_features, input_scale, x_packed.data(), x_scales.data());
      fake_quantize_activations_static(x.data(), tokens, in_features, input_scale, x_hat.data());
    }
    const std::vector<double> x_q = products(x_packed, x_scales, x.size());
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t n = 0; n < out_features; ++n) {
        double fake = 0, integer_like = 0, magnitude = 0;
        for (int64_t k = 0; k < in_features; ++k) {
          fake += static_cast<double>(x_hat[t * in_features + k]) * w_hat[n * in_features + k];
          integer_like += x_q[t * in_features + k] * w_q[n * in_features + k];
          magnitude += std::fabs(static_cast<double>(x_hat[t * in_features + k]) * w_hat[n * in_features + k]);
        }
        const double alpha = static_cast<double>(row_scales[t]) * weight_scale_2;  // s_t (or input_scale) * ws2
        // x_hat and W_hat each round once to fp32 from the exact product: relative 2^-24 each.
        EXPECT_NEAR(integer_like * alpha, fake, magnitude * 2.5e-7) << per_token << " " << t << "," << n;
      }
  }
}

TEST(ActQuant, BadInputIsRejected) {
  std::vector<float> x(32, 1.0f);
  std::vector<uint8_t> packed(16), scales(2);
  std::vector<float> row_scales(2);
  EXPECT_THAT(error_message([&] {
                quantize_activations_static(x.data(), 1, 32, 0.0f, packed.data(), scales.data());
              }),
              HasSubstr("input_scale must be finite and > 0"));
  EXPECT_THAT(error_message([&] {
                quantize_activations_per_token(x.data(), 1, 24, packed.data(), scales.data(), row_scales.data());
              }),
              HasSubstr("cols a multiple of 16"));
  x[20] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(error_message([&] {
                quantize_activations_per_token(x.data(), 2, 16, packed.data(), scales.data(), row_scales.data());
              }),
              HasSubstr("row 1 holds NaN or Inf"));
  EXPECT_THAT(error_message([&] {
                quantize_activations_static(x.data(), 2, 16, 1.0f, packed.data(), scales.data());
              }),
              HasSubstr("row 1, column 4"));
}

}  // namespace
}  // namespace fp4serve
