// float8_e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no Inf; 0x7F/0xFF are NaN; max 448; subnormals
// are k * 2^-9. Decoding is exact (table). Encoding rounds to nearest even and SATURATES: |x| >= 448 and +-Inf give
// +-448, like PTX cvt.rn.satfinite. torch's cast agrees up to 464 and gives NaN above, where we clamp.
#pragma once
#include <array>
#include <bit>
#include <cstdint>
#include <limits>

namespace fp4serve {

inline constexpr float kE4M3Max = 448.0f;
inline constexpr uint8_t kE4M3MaxCode = 0x7E;
inline constexpr uint8_t kE4M3NaNCode = 0x7F;

namespace detail {
constexpr std::array<float, 256> make_e4m3_values() {
  std::array<float, 256> values{};
  for (int code = 0; code < 256; ++code) {
    const uint32_t exponent_field = (code >> 3) & 0xF, mantissa = code & 0x7;
    float magnitude;
    if (exponent_field == 0xF && mantissa == 0x7)
      magnitude = std::numeric_limits<float>::quiet_NaN();
    else if (exponent_field == 0)
      magnitude = static_cast<float>(mantissa) / 512.0f;  // subnormal: mantissa * 2^-9
    else  // same mantissa bits, exponent rebiased from 7 to 127
      magnitude = std::bit_cast<float>((exponent_field - 7 + 127) << 23 | mantissa << 20);
    values[code] = (code & 0x80) ? -magnitude : magnitude;
  }
  return values;
}
}  // namespace detail

// Value of each of the 256 codes (0x80 is -0.0; 0x7F and 0xFF are NaN).
inline constexpr std::array<float, 256> kE4M3Values = detail::make_e4m3_values();

inline float e4m3_decode(uint8_t code) { return kE4M3Values[code]; }

// Round to nearest, ties to even; saturates as above; any NaN -> 0x7F; the sign of zero is kept (-0.0 -> 0x80).
uint8_t e4m3_encode(float x);

}  // namespace fp4serve
