#include "format/e4m3.h"

#include <algorithm>
#include <cmath>

namespace fp4serve {

uint8_t e4m3_encode(float x) {
  if (std::isnan(x)) return kE4M3NaNCode;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float magnitude = std::fabs(x);
  if (magnitude >= kE4M3Max) return sign | kE4M3MaxCode;
  // Binade of the magnitude (ilogb(0) is very negative); subnormals share the step of the lowest normal binade -6.
  const int binade = std::max(std::ilogb(magnitude), -6);
  // Magnitude in units of the binade's step 2^(binade-3): exact, as scaling by a power of two is exact here.
  const float steps = std::ldexp(magnitude, 3 - binade);
  int rounded = static_cast<int>(std::floor(steps));
  const float fraction = steps - static_cast<float>(rounded);
  if (fraction > 0.5f || (fraction == 0.5f && (rounded & 1))) ++rounded;
  // code = (binade + 6) * 8 + steps covers normals (exponent field binade + 7, mantissa steps - 8), subnormals
  // (binade -6, exponent field 0) and a carry into the next binade (steps == 16). magnitude < 448 keeps it <= 0x7E.
  return sign | static_cast<uint8_t>((binade + 6) * 8 + rounded);
}

}  // namespace fp4serve
