// Shared by the attention, norm, RoPE and embedding GPU tests: bf16 outputs compared elementwise with the CPU kernel's
// (bf16-representable) floats. Two roundings to bf16 of values that differ only by fp32 summation order land at most
// one bf16 step apart (at most 2^-7 of the value), plus a small absolute slack for results near zero.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "format/bf16.h"

namespace fp4serve::test {

inline std::vector<float> widened(const std::vector<bf16_bits>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bf16_to_float(x[i]);
  return out;
}

// Every element within relative * |reference| + absolute (NaN never passes); returns the count that differ at all.
inline int64_t expect_bf16_near(const std::vector<bf16_bits>& got, const std::vector<float>& reference, double relative,
                                double absolute, const std::string& what) {
  EXPECT_EQ(got.size(), reference.size()) << what;
  int64_t bad = 0, different = 0;
  for (size_t i = 0; i < std::min(got.size(), reference.size()); ++i) {
    const double value = bf16_to_float(got[i]), error = std::fabs(value - reference[i]);
    different += value != reference[i];
    if (!(error <= relative * std::fabs(reference[i]) + absolute) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " = " << value << ", reference " << reference[i];
  }
  EXPECT_EQ(bad, 0) << what << ": elements out of tolerance";
  return different;
}

}  // namespace fp4serve::test
