#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/gemm_rows.h"  // kMinParallelWork

namespace fp4serve {

void paged_attention_cpu(const PagedKvLayer& cache, std::span<const PagedSequence> sequences, const float* q,
                         int64_t n_heads, float* out) {
  FP4_CHECK(n_heads % cache.n_kv_heads == 0, "attention: {} query heads are not a multiple of {} KV heads", n_heads,
            cache.n_kv_heads);
  const int64_t head_dim = cache.head_dim, group = n_heads / cache.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  // One work item per (sequence, new token); the item's context length is its position + 1.
  struct Item {
    const PagedSequence* seq;
    int64_t token;
  };
  std::vector<Item> items;
  int64_t max_context = 0;
  for (const PagedSequence& seq : sequences) {
    for (int64_t t = 0; t < seq.n_tokens; ++t) items.push_back({&seq, t});
    max_context = std::max(max_context, seq.first_position + seq.n_tokens);
  }
  const int64_t n_work = static_cast<int64_t>(items.size()) * n_heads;

#pragma omp parallel if (n_work * max_context * head_dim >= kMinParallelWork)
  {
    std::vector<float> scores(static_cast<size_t>(max_context));
    std::vector<float> acc(static_cast<size_t>(head_dim));
#pragma omp for schedule(dynamic, 4)
    for (int64_t w = 0; w < n_work; ++w) {
      const Item& item = items[w / n_heads];
      const int64_t head = w % n_heads, kv_head = head / group;
      const int64_t row = item.seq->first_row + item.token;
      const int64_t context = item.seq->first_position + item.token + 1;
      const float* q_head = q + (row * n_heads + head) * head_dim;

      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < context; ++j) {
        const bf16_bits* k_row = cache.k + cache.offset(item.seq->page_table, j, kv_head);
        float dot = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) dot += q_head[d] * bf16_to_float(k_row[d]);
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      float sum = 0.0f;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < context; ++j) {
        const float p = std::exp(scores[j] - max_score);
        sum += p;
        const bf16_bits* v_row = cache.v + cache.offset(item.seq->page_table, j, kv_head);
        for (int64_t d = 0; d < head_dim; ++d) acc[d] += p * bf16_to_float(v_row[d]);
      }
      float* out_head = out + (row * n_heads + head) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) out_head[d] = round_to_bf16(acc[d] / sum);
    }
  }
}

}  // namespace fp4serve
