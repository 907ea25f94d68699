// Slow, independent references for the format tests: element values spelled from their bit fields and nearest-value
// encoders by exhaustive search (ties to the even code). They share no code with src/format.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "common/error.h"

namespace fp4serve::test {

// E2M1 value from its bit fields: exponent 0 is subnormal (m * 0.5), else 2^(e-1) * (1 + m/2).
inline double e2m1_value_from_bits(int code) {
  const int exponent = (code >> 1) & 3, mantissa = code & 1;
  const double magnitude = exponent == 0 ? mantissa * 0.5 : std::ldexp(1.0 + mantissa * 0.5, exponent - 1);
  return (code & 8) ? -magnitude : magnitude;
}

// Nearest E2M1 magnitude code by exhaustive search, ties to the even code; sign bit set iff q < 0 (ModelOpt).
inline uint8_t e2m1_encode_brute_force(float q) {
  const double magnitude = std::fabs(static_cast<double>(q));
  int best = 0;
  for (int code = 1; code < 8; ++code) {
    const double distance = std::fabs(e2m1_value_from_bits(code) - magnitude);
    const double best_distance = std::fabs(e2m1_value_from_bits(best) - magnitude);
    if (distance < best_distance || (distance == best_distance && code % 2 == 0)) best = code;
  }
  return static_cast<uint8_t>(best | (q < 0 ? 8 : 0));
}

// float8_e4m3fn value of a non-NaN code from its bit fields (bias 7, subnormals m * 2^-9).
inline double e4m3_value_from_bits(int code) {
  const int exponent = (code >> 3) & 0xF, mantissa = code & 7;
  const double magnitude = exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return (code & 0x80) ? -magnitude : magnitude;
}

// Nearest of the non-negative codes 0x00..0x7E by exhaustive search (so it saturates at 448), ties to the even
// code; the sign bit is copied from x.
inline uint8_t e4m3_encode_brute_force(float x) {
  const double magnitude = std::fabs(static_cast<double>(x));
  int best = 0;
  for (int code = 1; code <= 0x7E; ++code) {
    const double distance = std::fabs(e4m3_value_from_bits(code) - magnitude);
    const double best_distance = std::fabs(e4m3_value_from_bits(best) - magnitude);
    if (distance < best_distance || (distance == best_distance && code % 2 == 0)) best = code;
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

// The message of the fp4serve::Error that action throws, or "no error".
template <typename Action>
std::string error_message(Action action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "no error";
}

}  // namespace fp4serve::test
