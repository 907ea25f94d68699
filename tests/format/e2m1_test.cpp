// E2M1 encode/decode: every tie point, saturation, the sign/NaN rules taken from ModelOpt, packing, and random values
// against a brute-force nearest search.
#include "format/e2m1.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "slow_reference.h"

namespace fp4serve {
namespace {

using namespace test;

TEST(E2M1, DecodesEveryCodeFromItsBits) {
  for (int code = 0; code < 16; ++code) {
    EXPECT_EQ(static_cast<double>(e2m1_decode(static_cast<uint8_t>(code))), e2m1_value_from_bits(code)) << code;
    EXPECT_EQ(std::signbit(e2m1_decode(static_cast<uint8_t>(code))), code >= 8) << code;
    EXPECT_EQ(e2m1_decode(static_cast<uint8_t>(code | 0xF0)), e2m1_decode(static_cast<uint8_t>(code)));  // low bits
  }
  EXPECT_EQ(e2m1_decode(7), kE2M1Max);
}

TEST(E2M1, EveryCodeReEncodesToItselfExceptNegativeZero) {
  for (int code = 0; code < 16; ++code) {
    // Code 8 decodes to -0.0, and ModelOpt's sign bit is "q < 0", false for -0.0: it comes back as code 0.
    const uint8_t expected = code == 8 ? 0 : static_cast<uint8_t>(code);
    EXPECT_EQ(e2m1_encode(e2m1_decode(static_cast<uint8_t>(code))), expected) << code;
  }
}

TEST(E2M1, TiesGoToTheEvenCodeAndNeighboursRoundTheRightWay) {
  struct Tie {
    float q;
    uint8_t code;     // code of the tie itself (even)
    uint8_t below;    // code just below the tie
    uint8_t above;    // code just above the tie
  };
  const Tie ties[] = {{0.25f, 0, 0, 1}, {0.75f, 2, 1, 2}, {1.25f, 2, 2, 3}, {1.75f, 4, 3, 4},
                      {2.5f, 4, 4, 5},  {3.5f, 6, 5, 6},  {5.0f, 6, 6, 7}};
  for (const Tie& tie : ties) {
    EXPECT_EQ(e2m1_encode(tie.q), tie.code) << tie.q;
    EXPECT_EQ(e2m1_encode(std::nextafter(tie.q, 0.0f)), tie.below) << tie.q;
    EXPECT_EQ(e2m1_encode(std::nextafter(tie.q, 10.0f)), tie.above) << tie.q;
    EXPECT_EQ(e2m1_encode(-tie.q), tie.code | 8) << -tie.q;
    EXPECT_EQ(e2m1_encode(std::nextafter(-tie.q, -10.0f)), tie.above | 8) << -tie.q;
  }
}

TEST(E2M1, SaturatesAboveSix) {
  for (float q : {6.0f, std::nextafter(6.0f, 7.0f), 7.0f, 100.0f, 1e30f, std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(e2m1_encode(q), 7) << q;
    EXPECT_EQ(e2m1_encode(-q), 15) << -q;
  }
}

TEST(E2M1, ZeroSignAndNaNFollowModelOpt) {
  EXPECT_EQ(e2m1_encode(0.0f), 0);
  EXPECT_EQ(e2m1_encode(-0.0f), 0);    // -0.0 < 0 is false
  EXPECT_EQ(e2m1_encode(0.1f), 0);
  EXPECT_EQ(e2m1_encode(-0.1f), 8);    // rounds to zero but keeps its sign
  EXPECT_EQ(e2m1_encode(-0.25f), 8);   // tie to code 0, negative
  EXPECT_EQ(e2m1_encode(-std::numeric_limits<float>::denorm_min()), 8);
  EXPECT_EQ(e2m1_encode(std::numeric_limits<float>::quiet_NaN()), 7);
  EXPECT_EQ(e2m1_encode(-std::numeric_limits<float>::quiet_NaN()), 7);
}

TEST(E2M1, RandomValuesMatchBruteForceNearest) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uniform(-8.0f, 8.0f);
  for (int i = 0; i < 200000; ++i) {
    const float q = uniform(rng);
    ASSERT_EQ(e2m1_encode(q), e2m1_encode_brute_force(q)) << q;
  }
  // Quarter and half steps hit every tie and every exact value.
  for (int i = -40; i <= 40; ++i) {
    const float q = static_cast<float>(i) * 0.125f;
    ASSERT_EQ(e2m1_encode(q), e2m1_encode_brute_force(q)) << q;
  }
}

TEST(E2M1, PacksElementTwoIInTheLowNibble) {
  EXPECT_EQ(pack_e2m1_pair(0x3, 0xA), 0xA3);
  EXPECT_EQ(pack_e2m1_pair(0xF3, 0x1), 0x13);  // only the low 4 bits of each code count
  const uint8_t row[] = {0xA3, 0x5F};          // elements 3, 10, 15, 5
  EXPECT_EQ(packed_e2m1_code(row, 0), 0x3);
  EXPECT_EQ(packed_e2m1_code(row, 1), 0xA);
  EXPECT_EQ(packed_e2m1_code(row, 2), 0xF);
  EXPECT_EQ(packed_e2m1_code(row, 3), 0x5);
}

}  // namespace
}  // namespace fp4serve
