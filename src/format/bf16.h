// bfloat16 <-> float. float -> bf16 rounds to nearest, ties to even (as torch does); NaN stays a quiet NaN.
#pragma once
#include <bit>
#include <cstdint>

namespace fp4serve {

using bf16_bits = uint16_t;

inline float bf16_to_float(bf16_bits b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

inline bf16_bits float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_bits>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_bits>(u >> 16);
}

// Rounds a float to the nearest bf16 value, kept as float: what bf16 storage of an activation does to it.
inline float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace fp4serve
