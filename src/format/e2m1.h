// E2M1 (FP4) element codes: bit 3 is the sign, bits 0-2 index the magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}; no
// Inf/NaN. e2m1_encode reproduces ModelOpt's _cast_fp4 bit for bit. Two codes share a byte: element 2i in the low
// nibble, element 2i+1 in the high nibble, so a row of K values is K/2 bytes.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace fp4serve {

inline constexpr float kE2M1Max = 6.0f;

// Value of each of the 16 codes; code 8 is -0.0.
inline constexpr std::array<float, 16> kE2M1Values{0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// Rounds q to the nearest E2M1 value with ties to the even code (0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2,
// 3.5->4, 5->4); |q| > 6 and +-Inf saturate to +-6. Sign and NaN follow ModelOpt (sign bit = "q < 0"):
//   -0.0 -> code 0, while a negative value that rounds to zero (e.g. -0.1) -> code 8, which decodes to -0.0;
//   NaN -> code 7 (+6), because ModelOpt's searchsorted places NaN after every bound.
// These rules also reproduce ModelOpt's bytes for a block whose E4M3 scale underflows to 0 (w/0 = +-Inf or NaN).
inline uint8_t e2m1_encode(float q) {
  const float magnitude = std::fabs(q);
  // Counts the bounds at or above the magnitude; every comparison is false for NaN. A tie on a bound below an even
  // code (0.25, 1.25, 2.5, 5) rounds down, one below an odd code (0.75, 1.75, 3.5) rounds up.
  const int code = 7 - (magnitude <= 0.25f) - (magnitude < 0.75f) - (magnitude <= 1.25f) - (magnitude < 1.75f) -
                   (magnitude <= 2.5f) - (magnitude < 3.5f) - (magnitude <= 5.0f);
  return static_cast<uint8_t>(code | (q < 0.0f ? 8 : 0));
}

// Uses the low 4 bits of code.
inline float e2m1_decode(uint8_t code) { return kE2M1Values[code & 0xF]; }

inline uint8_t pack_e2m1_pair(uint8_t even_element_code, uint8_t odd_element_code) {
  return static_cast<uint8_t>((even_element_code & 0xF) | (odd_element_code << 4));
}

// Code of element i of a packed row.
inline uint8_t packed_e2m1_code(const uint8_t* packed_row, int64_t i) {
  return static_cast<uint8_t>((packed_row[i / 2] >> ((i & 1) * 4)) & 0xF);
}

}  // namespace fp4serve
