#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

#include "format/bf16.h"
#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

float rope_inv_freq(int64_t i, int64_t head_dim, double theta) {
  return static_cast<float>(std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim)));
}

void rope_neox_cpu(float* x, const int32_t* positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                   double theta) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = rope_inv_freq(i, head_dim, theta);
#pragma omp parallel for schedule(static) if (n_tokens * n_heads * head_dim >= kMinParallelWork)
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::vector<float> cos_table(static_cast<size_t>(half)), sin_table(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(positions[t]) * static_cast<double>(inv_freq[i]);
      cos_table[i] = static_cast<float>(std::cos(angle));
      sin_table[i] = static_cast<float>(std::sin(angle));
    }
    for (int64_t h = 0; h < n_heads; ++h) {
      float* first = x + (t * n_heads + h) * head_dim;
      float* second = first + half;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = first[i], x2 = second[i];
        first[i] = round_to_bf16(x1 * cos_table[i] - x2 * sin_table[i]);
        second[i] = round_to_bf16(x2 * cos_table[i] + x1 * sin_table[i]);
      }
    }
  }
}

}  // namespace fp4serve
