#include "format/bf16.h"
#include "format/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace fp4serve {

TEST(DType, NamesAndSizesRoundTrip) {
  for (DType d : {DType::BF16, DType::F16, DType::F32, DType::F64, DType::U8, DType::I8, DType::F8_E4M3, DType::I32,
                  DType::I64}) {
    auto parsed = parse_dtype(dtype_name(d));
    ASSERT_TRUE(parsed.has_value()) << dtype_name(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_FALSE(parse_dtype("F8_E5M2").has_value());
  EXPECT_FALSE(parse_dtype("bf16").has_value());
}

TEST(BF16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even keeps 1.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): rounds up.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  // Every bf16 bit pattern that is not NaN round-trips.
  for (uint32_t b = 0; b < 0x10000; ++b) {
    float f = bf16_to_float(static_cast<bf16_bits>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16(f), b);
  }
}

}  // namespace fp4serve
