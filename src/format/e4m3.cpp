#include "format/e4m3.h"

#include <cmath>

namespace fp4serve {

uint8_t e4m3_encode(float x) {
  if (std::isnan(x)) return kE4M3NaNCode;
  const uint32_t magnitude_bits = std::bit_cast<uint32_t>(x) & 0x7fffffffu;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float magnitude = std::bit_cast<float>(magnitude_bits);
  if (magnitude >= kE4M3Max) return sign | kE4M3MaxCode;
  if (magnitude >= 0x1p-6f) {
    // Normal: round the 23 mantissa bits to 3, to nearest even (add just under half, plus the kept lowest bit); a
    // carry ripples into the exponent, as it should. The exponent is rebiased from 127 to 7.
    const uint32_t rounded = magnitude_bits + 0x7ffffu + ((magnitude_bits >> 20) & 1u);
    return sign | static_cast<uint8_t>((rounded >> 20) - ((127 - 7) << 3));
  }
  // Subnormal: the magnitude in units of 2^-9 (exact), rounded to nearest even. 8 units is 2^-6, code 0x08.
  const float steps = magnitude * 512.0f;
  int rounded = static_cast<int>(steps);
  const float fraction = steps - static_cast<float>(rounded);
  if (fraction > 0.5f || (fraction == 0.5f && (rounded & 1))) ++rounded;
  return sign | static_cast<uint8_t>(rounded);
}

}  // namespace fp4serve
