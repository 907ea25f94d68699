// float8_e4m3fn: all 256 codes decode to the value their bits spell and re-encode to themselves; every midpoint
// between neighbours rounds to even and its float neighbours round the right way; saturation, NaN and signed zero.
#include "format/e4m3.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "slow_reference.h"

namespace fp4serve {
namespace {

using namespace test;

bool is_nan_code(int code) { return (code & 0x7F) == 0x7F; }

TEST(E4M3, DecodesEveryCodeFromItsBits) {
  for (int code = 0; code < 256; ++code) {
    const float value = e4m3_decode(static_cast<uint8_t>(code));
    if (is_nan_code(code)) {
      EXPECT_TRUE(std::isnan(value)) << code;
      continue;
    }
    EXPECT_EQ(static_cast<double>(value), e4m3_value_from_bits(code)) << code;
    EXPECT_EQ(std::signbit(value), code >= 0x80) << code;
  }
  EXPECT_EQ(e4m3_decode(0x7E), 448.0f);
  EXPECT_EQ(e4m3_decode(0x38), 1.0f);
  EXPECT_EQ(e4m3_decode(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_decode(0x08), std::ldexp(1.0f, -6));
}

TEST(E4M3, EveryCodeReEncodesToItself) {
  for (int code = 0; code < 256; ++code) {
    const uint8_t expected = is_nan_code(code) ? kE4M3NaNCode : static_cast<uint8_t>(code);
    EXPECT_EQ(e4m3_encode(e4m3_decode(static_cast<uint8_t>(code))), expected) << code;
  }
}

TEST(E4M3, MidpointsRoundToEvenAndNeighboursRoundTheRightWay) {
  for (int code = 0; code < 0x7E; ++code) {
    const float low = e4m3_decode(static_cast<uint8_t>(code)), high = e4m3_decode(static_cast<uint8_t>(code + 1));
    const float midpoint = (low + high) / 2;  // exact: 5 significant bits
    ASSERT_EQ(static_cast<double>(midpoint), (static_cast<double>(low) + high) / 2);
    const int even = code % 2 == 0 ? code : code + 1;
    for (int sign : {0, 0x80}) {
      const float s = sign ? -1.0f : 1.0f;
      EXPECT_EQ(e4m3_encode(s * midpoint), even | sign) << midpoint;
      EXPECT_EQ(e4m3_encode(s * std::nextafter(midpoint, 1000.0f)), (code + 1) | sign) << midpoint;
      EXPECT_EQ(e4m3_encode(s * std::nextafter(midpoint, 0.0f)), code | sign) << midpoint;
    }
  }
}

TEST(E4M3, SaturatesAtMaxInsteadOfNaN) {
  for (float x : {448.0f, std::nextafter(448.0f, 1e9f), 463.0f, 464.0f, 480.0f, 1e9f,
                  std::numeric_limits<float>::max(), std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(e4m3_encode(x), 0x7E) << x;
    EXPECT_EQ(e4m3_encode(-x), 0xFE) << -x;
  }
  EXPECT_EQ(e4m3_encode(std::numeric_limits<float>::quiet_NaN()), kE4M3NaNCode);
  EXPECT_EQ(e4m3_encode(-std::numeric_limits<float>::quiet_NaN()), kE4M3NaNCode);
}

TEST(E4M3, SubnormalsAndSignedZero) {
  const float smallest = std::ldexp(1.0f, -9);
  EXPECT_EQ(e4m3_encode(smallest / 2), 0x00);  // tie between 0 and 2^-9: even code 0
  EXPECT_EQ(e4m3_encode(std::nextafter(smallest / 2, 1.0f)), 0x01);
  EXPECT_EQ(e4m3_encode(1.5f * smallest), 0x02);  // tie between codes 1 and 2
  EXPECT_EQ(e4m3_encode(7.5f * smallest), 0x08);  // tie between the largest subnormal and 2^-6
  EXPECT_EQ(e4m3_encode(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(e4m3_encode(-1e-30f), 0x80);
  EXPECT_EQ(e4m3_encode(-0.0f), 0x80);
  EXPECT_EQ(e4m3_encode(0.0f), 0x00);
}

TEST(E4M3, RandomValuesMatchBruteForceNearest) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> log2_magnitude(-13.0f, 9.5f);  // 2^-13 .. ~724, past the maximum
  std::bernoulli_distribution negative(0.5);
  for (int i = 0; i < 30000; ++i) {
    const float x = std::exp2(log2_magnitude(rng)) * (negative(rng) ? -1.0f : 1.0f);
    ASSERT_EQ(e4m3_encode(x), e4m3_encode_brute_force(x)) << x;
  }
}

}  // namespace
}  // namespace fp4serve
