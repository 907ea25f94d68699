#include "kernels/cpu/router_topk.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void router_topk_cpu(const float* logits, int64_t M, int64_t n_experts, int64_t k, bool norm_topk_prob,
                     int32_t* topk_ids, float* topk_weights) {
#pragma omp parallel for schedule(static) if (M * n_experts >= kMinParallelWork)
  for (int64_t m = 0; m < M; ++m) {
    const float* row = logits + m * n_experts;
    std::vector<float> probs(static_cast<size_t>(n_experts));
    const float max_logit = *std::max_element(row, row + n_experts);
    float sum = 0.0f;
    for (int64_t e = 0; e < n_experts; ++e) sum += probs[e] = std::exp(row[e] - max_logit);
    for (float& p : probs) p /= sum;

    std::vector<int32_t> order(static_cast<size_t>(n_experts));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
    float topk_sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) topk_sum += probs[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      topk_ids[m * k + j] = order[j];
      topk_weights[m * k + j] = norm_topk_prob ? probs[order[j]] / topk_sum : probs[order[j]];
    }
  }
}

}  // namespace fp4serve
