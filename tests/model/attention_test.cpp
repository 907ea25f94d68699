// Paged KV-cache writes and causal grouped-query attention against a dense double-precision reference: sequences
// with scattered (non-contiguous, shuffled) pages, prefill of several tokens and decode of one after a prefix.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "format/bf16.h"
#include "kernels/cpu/kv_cache_write.h"
#include "kernels/cpu/paged_attention.h"

namespace fp4serve {
namespace {

struct Shape4 {
  int64_t n_heads = 4, n_kv_heads = 2, head_dim = 8, page_size = 4, n_pages = 16;
};

std::vector<float> random_bf16(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = round_to_bf16(dist(rng));
  return v;
}

// out[t, h, :] = softmax_j(q[t,h] . k[j, h/g] / sqrt(d)) v[j, h/g], j <= position of t; keys/values dense per
// sequence [n_positions, n_kv_heads, head_dim].
std::vector<double> dense_attention(const std::vector<float>& q, int64_t first_position, int64_t n_tokens,
                                    const std::vector<float>& k, const std::vector<float>& v, const Shape4& s) {
  std::vector<double> out(static_cast<size_t>(n_tokens * s.n_heads * s.head_dim));
  const int64_t group = s.n_heads / s.n_kv_heads;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const int64_t kvh = h / group, context = first_position + t + 1;
      std::vector<double> scores(static_cast<size_t>(context));
      for (int64_t j = 0; j < context; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < s.head_dim; ++d)
          dot += double{q[(t * s.n_heads + h) * s.head_dim + d]} * k[(j * s.n_kv_heads + kvh) * s.head_dim + d];
        scores[j] = dot / std::sqrt(double(s.head_dim));
      }
      const double max = *std::max_element(scores.begin(), scores.end());
      double sum = 0;
      for (double& x : scores) sum += x = std::exp(x - max);
      for (int64_t d = 0; d < s.head_dim; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < context; ++j) acc += scores[j] * v[(j * s.n_kv_heads + kvh) * s.head_dim + d];
        out[(t * s.n_heads + h) * s.head_dim + d] = acc / sum;
      }
    }
  return out;
}

TEST(PagedAttention, PrefillAndDecodeOverScatteredPagesMatchDenseReference) {
  const Shape4 s;
  std::mt19937 rng(11);
  const int64_t row_kv = s.n_kv_heads * s.head_dim, row_q = s.n_heads * s.head_dim;
  std::vector<bf16_bits> k_cache(s.n_pages * s.page_size * row_kv, 0xFFFF), v_cache = k_cache;  // NaN garbage
  const PagedKvLayer cache{.k = k_cache.data(),
                           .v = v_cache.data(),
                           .n_pages = s.n_pages,
                           .page_size = s.page_size,
                           .n_kv_heads = s.n_kv_heads,
                           .head_dim = s.head_dim};
  // Sequence A: 9 tokens over 3 pages; sequence B: 5 tokens over 2 pages. Pages shuffled and interleaved.
  std::vector<int32_t> pages(static_cast<size_t>(s.n_pages));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  const std::vector<int32_t> table_a{pages[0], pages[2], pages[4]}, table_b{pages[1], pages[3]};
  const std::vector<int64_t> lengths{9, 5};
  const std::vector<const std::vector<int32_t>*> tables{&table_a, &table_b};

  // Full keys/values per sequence (the reference's dense view).
  std::vector<std::vector<float>> keys, values;
  for (int64_t len : lengths) {
    keys.push_back(random_bf16(len * row_kv, rng));
    values.push_back(random_bf16(len * row_kv, rng));
  }
  // Step 1, prefill: A feeds positions [0, 8), B feeds [0, 5). Step 2, decode: A feeds position 8.
  struct Step {
    std::vector<int64_t> first, count;
  };
  for (const Step& step : {Step{{0, 0}, {8, 5}}, Step{{8}, {1}}}) {
    std::vector<PagedSequence> sequences;
    std::vector<float> k_rows, v_rows, q;
    for (size_t i = 0; i < step.first.size(); ++i) {
      sequences.push_back({.page_table = tables[i]->data(),
                           .first_position = step.first[i],
                           .n_tokens = step.count[i],
                           .first_row = static_cast<int64_t>(k_rows.size()) / row_kv});
      k_rows.insert(k_rows.end(), keys[i].begin() + step.first[i] * row_kv,
                    keys[i].begin() + (step.first[i] + step.count[i]) * row_kv);
      v_rows.insert(v_rows.end(), values[i].begin() + step.first[i] * row_kv,
                    values[i].begin() + (step.first[i] + step.count[i]) * row_kv);
    }
    const int64_t n_rows = static_cast<int64_t>(k_rows.size()) / row_kv;
    q = random_bf16(n_rows * row_q, rng);
    kv_cache_write_cpu(cache, sequences, k_rows.data(), v_rows.data());
    std::vector<float> out(q.size());
    paged_attention_cpu(cache, sequences, q.data(), s.n_heads, out.data());

    for (size_t i = 0; i < sequences.size(); ++i) {
      const PagedSequence& seq = sequences[i];
      const std::vector<float> seq_q(q.begin() + seq.first_row * row_q,
                                     q.begin() + (seq.first_row + seq.n_tokens) * row_q);
      const auto expected = dense_attention(seq_q, seq.first_position, seq.n_tokens, keys[i], values[i], s);
      for (size_t e = 0; e < expected.size(); ++e) {
        const float got = out[seq.first_row * row_q + static_cast<int64_t>(e)];
        EXPECT_NEAR(got, expected[e], 0x1p-8 * std::abs(expected[e]) + 1e-5) << "seq " << i << " element " << e;
        EXPECT_EQ(got, round_to_bf16(got));
      }
    }
  }
  // Pages of neither sequence were never written (still the NaN fill).
  for (int64_t p = 5; p < s.n_pages; ++p)
    for (int64_t i = 0; i < s.page_size * row_kv; ++i) ASSERT_EQ(k_cache[pages[p] * s.page_size * row_kv + i], 0xFFFF);
}

TEST(PagedAttention, FirstTokenAttendsOnlyToItselfAndStoresBf16) {
  // One token at position 0 (2 query heads, 1 KV head of 4): the output is exactly its value row, whatever q is.
  std::vector<bf16_bits> k_cache(16 * 4), v_cache(16 * 4);
  const PagedKvLayer cache{
      .k = k_cache.data(), .v = v_cache.data(), .n_pages = 1, .page_size = 16, .n_kv_heads = 1, .head_dim = 4};
  const int32_t table[1] = {0};
  const PagedSequence seq{.page_table = table, .first_position = 0, .n_tokens = 1, .first_row = 0};
  const std::vector<float> k{1, 2, 3, 4}, v{0.5f, -1.0f, 1.00390625f /* 1 + 2^-8: rounds to 1 */, 8};
  const std::vector<float> q{100, -100, 3, 0, 1, 1, 1, 1};
  kv_cache_write_cpu(cache, {&seq, 1}, k.data(), v.data());
  EXPECT_EQ(bf16_to_float(v_cache[2]), 1.0f);
  std::vector<float> out(8);
  paged_attention_cpu(cache, {&seq, 1}, q.data(), 2, out.data());
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(out[h * 4 + 0], 0.5f);
    EXPECT_EQ(out[h * 4 + 1], -1.0f);
    EXPECT_EQ(out[h * 4 + 2], 1.0f);
    EXPECT_EQ(out[h * 4 + 3], 8.0f);
  }
}

}  // namespace
}  // namespace fp4serve
