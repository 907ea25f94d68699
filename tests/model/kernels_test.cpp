// CPU kernels of the model (src/kernels/cpu) against plain double-precision loops written from qwen3-moe.md.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "common/error.h"
#include "format/bf16.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/kv_cache_write.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/residual_add.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/router_topk.h"
#include "kernels/cpu/silu_mul.h"

namespace fp4serve {
namespace {

std::vector<float> random_bf16_values(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = round_to_bf16(dist(rng));
  return v;
}

std::vector<bf16_bits> to_bf16(const std::vector<float>& v) {
  std::vector<bf16_bits> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

bool is_bf16(float x) { return round_to_bf16(x) == x || std::isnan(x); }

TEST(RmsNorm, MatchesDoubleReferenceOnOddWidth) {
  const int64_t rows = 5, dim = 33;
  const auto x = random_bf16_values(rows * dim, 1, 3.0f);
  const auto w = random_bf16_values(dim, 2);
  std::vector<float> out(x.size());
  rmsnorm_cpu(x.data(), to_bf16(w).data(), rows, dim, 1e-6f, out.data());
  for (int64_t r = 0; r < rows; ++r) {
    double sum_squares = 0;
    for (int64_t i = 0; i < dim; ++i) sum_squares += double{x[r * dim + i]} * x[r * dim + i];
    const double inv_rms = 1.0 / std::sqrt(sum_squares / dim + 1e-6);
    for (int64_t i = 0; i < dim; ++i) {
      const double expected = x[r * dim + i] * inv_rms * w[i];
      EXPECT_NEAR(out[r * dim + i], expected, 3 * 0x1p-9 * std::abs(expected) + 1e-30) << r << "," << i;
      EXPECT_TRUE(is_bf16(out[r * dim + i]));
    }
  }
}

TEST(RmsNorm, ZeroRowGivesZerosAndInPlaceWorks) {
  std::vector<float> x(16, 0.0f);
  const std::vector<bf16_bits> w(16, float_to_bf16(1.0f));
  rmsnorm_cpu(x.data(), w.data(), 1, 16, 1e-6f, x.data());
  for (float v : x) EXPECT_EQ(v, 0.0f);
  std::vector<float> y(16, 2.0f);  // rms 2 -> every element 1 exactly (eps negligible after rounding)
  rmsnorm_cpu(y.data(), w.data(), 1, 16, 1e-6f, y.data());
  for (float v : y) EXPECT_EQ(v, 1.0f);
}

TEST(Rope, PositionZeroIsIdentityAndHandWorkedRotation) {
  // head_dim 4: pairs (0, 2) rotate with inv_freq 1, pairs (1, 3) with 10000^(-1/2) = 0.01.
  std::vector<float> x{1.0f, 1.0f, 0.0f, 0.0f, 1.0f, 2.0f, 3.0f, 4.0f};  // two tokens, one head
  const std::vector<float> original = x;
  const std::vector<int32_t> positions{0, 1};
  rope_neox_cpu(x.data(), positions.data(), 2, 1, 4, 10000.0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(x[i], original[i]);
  const double c1 = std::cos(1.0), s1 = std::sin(1.0), c2 = std::cos(0.01), s2 = std::sin(0.01);
  const double expected[4] = {1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(x[4 + i], expected[i], 0x1p-8 * std::abs(expected[i])) << i;
}

TEST(Rope, ManyHeadsAndLargePositionsMatchDouble) {
  const int64_t n_tokens = 3, n_heads = 3, head_dim = 64;
  auto x = random_bf16_values(n_tokens * n_heads * head_dim, 3);
  const auto original = x;
  const std::vector<int32_t> positions{7, 4095, 1000000};
  const double theta = 1e6;
  rope_neox_cpu(x.data(), positions.data(), n_tokens, n_heads, head_dim, theta);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t i = 0; i < head_dim / 2; ++i) {
        const double angle = positions[t] * std::pow(theta, -2.0 * i / head_dim);
        const int64_t base = (t * n_heads + h) * head_dim;
        const double x1 = original[base + i], x2 = original[base + i + head_dim / 2];
        const double scale = std::hypot(x1, x2);
        // inv_freq is fp32, so at position 1e6 the angle carries ~1e6 * 2^-24 rad of error: allow it.
        const double tolerance = scale * (0x1p-8 + positions[t] * 0x1p-23);
        EXPECT_NEAR(x[base + i], x1 * std::cos(angle) - x2 * std::sin(angle), tolerance);
        EXPECT_NEAR(x[base + i + head_dim / 2], x2 * std::cos(angle) + x1 * std::sin(angle), tolerance);
      }
}

TEST(SiluMul, MatchesDoubleAndSaturatesWithoutNaN) {
  const int64_t M = 3, I = 17;
  auto gate_up = random_bf16_values(M * 2 * I, 4, 4.0f);
  gate_up[0] = -100.0f;  // exp overflows in fp32: silu -> -0
  gate_up[1] = 100.0f;   // silu -> 100
  std::vector<float> out(M * I);
  silu_mul_cpu(gate_up.data(), M, I, out.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < I; ++i) {
      const double g = gate_up[m * 2 * I + i], u = gate_up[m * 2 * I + I + i];
      const double expected = g / (1 + std::exp(-g)) * u;
      EXPECT_NEAR(out[m * I + i], expected, 3 * 0x1p-9 * std::abs(expected) + 1e-30) << m << "," << i;
      EXPECT_FALSE(std::isnan(out[m * I + i]));
      EXPECT_TRUE(is_bf16(out[m * I + i]));
    }
}

TEST(Embedding, CopiesRowsAndRejectsIdsOutsideTheVocabulary) {
  const auto table = random_bf16_values(4 * 3, 5);
  const auto bits = to_bf16(table);
  const std::vector<int32_t> ids{3, 0, 3};
  std::vector<float> out(9);
  embedding_lookup_cpu(bits.data(), 4, 3, ids.data(), 3, out.data());
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < 3; ++i) EXPECT_EQ(out[t * 3 + i], table[ids[t] * 3 + i]);
  for (int32_t bad : {4, -1}) {
    const std::vector<int32_t> bad_ids{0, bad};
    EXPECT_THAT([&] { embedding_lookup_cpu(bits.data(), 4, 3, bad_ids.data(), 2, out.data()); },
                testing::ThrowsMessage<Error>(testing::HasSubstr(fmt::format("token id {} at position 1", bad))));
  }
}

TEST(ResidualAdd, RoundsTheSumToBf16) {
  std::vector<float> x{1.0f, 256.0f, -3.0f}, y{0x1p-9f, 1.0f, 3.0f};
  residual_add_cpu(x.data(), y.data(), 3);
  EXPECT_EQ(x[0], 1.0f);    // 2^-9 is below half a bf16 step at 1 (2^-8): rounds down
  EXPECT_EQ(x[1], 256.0f);  // 257 is not bf16 (8 significant bits): tie, rounds to even 256
  EXPECT_EQ(x[2], 0.0f);
}

// Softmax in double, then the k largest with ties to the lower index.
void reference_topk(const std::vector<float>& logits, int64_t k, bool normalize, std::vector<int32_t>& ids,
                    std::vector<double>& weights) {
  const double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t e = 0; e < p.size(); ++e) sum += p[e] = std::exp(logits[e] - max);
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  double top_sum = 0;
  for (int64_t j = 0; j < k; ++j) top_sum += p[order[j]] / sum;
  ids.assign(order.begin(), order.begin() + k);
  weights.clear();
  for (int64_t j = 0; j < k; ++j) weights.push_back(p[order[j]] / sum / (normalize ? top_sum : 1.0));
}

TEST(RouterTopk, MatchesReferenceWithAndWithoutRenormalization) {
  const int64_t M = 6, E = 16, k = 4;
  const auto logits = random_bf16_values(M * E, 6, 2.0f);
  for (bool normalize : {false, true}) {
    std::vector<int32_t> ids(M * k);
    std::vector<float> weights(M * k);
    router_topk_cpu(logits.data(), M, E, k, normalize, ids.data(), weights.data());
    for (int64_t m = 0; m < M; ++m) {
      std::vector<int32_t> expected_ids;
      std::vector<double> expected_weights;
      reference_topk({logits.begin() + m * E, logits.begin() + (m + 1) * E}, k, normalize, expected_ids,
                     expected_weights);
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_EQ(ids[m * k + j], expected_ids[j]);
        EXPECT_NEAR(weights[m * k + j], expected_weights[j], 1e-6);
      }
    }
  }
}

TEST(RouterTopk, TiesGoToTheLowerExpertIndex) {
  // Experts 5 and 2 tie for first, 1, 3 and 6 tie for third: expect 2, 5, 1, then 3.
  const std::vector<float> logits{0.0f, 1.0f, 2.0f, 1.0f, -1.0f, 2.0f, 1.0f, 0.5f};
  std::vector<int32_t> ids(4);
  std::vector<float> weights(4);
  router_topk_cpu(logits.data(), 1, 8, 4, true, ids.data(), weights.data());
  EXPECT_THAT(ids, testing::ElementsAre(2, 5, 1, 3));
  EXPECT_EQ(weights[0], weights[1]);
  EXPECT_EQ(weights[2], weights[3]);
  EXPECT_NEAR(weights[0] + weights[1] + weights[2] + weights[3], 1.0, 1e-6);
  const std::vector<float> equal(8, 0.25f);  // all equal: the first k, each 1/k
  router_topk_cpu(equal.data(), 1, 8, 4, true, ids.data(), weights.data());
  EXPECT_THAT(ids, testing::ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(weights, testing::Each(0.25f));
}

}  // namespace
}  // namespace fp4serve
