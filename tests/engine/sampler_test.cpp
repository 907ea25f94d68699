// Sampler: greedy and its ties, filters (top-k, top-p, min-p) checked by which tokens can ever be drawn,
// determinism per (seed, token index), raw and processed logprobs against a double reference, bad parameters.
#include "engine/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "common/error.h"

namespace fp4serve {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

// Tokens drawn over many token indices (each index is a fresh uniform draw).
std::set<int32_t> drawn_tokens(const std::vector<float>& logits, SamplingParams params, int n_draws = 2000) {
  std::set<int32_t> seen;
  for (int i = 0; i < n_draws; ++i) seen.insert(sample_token(logits, params, i));
  return seen;
}

TEST(Sampler, GreedyTakesTheLargestLogitAndTheLowestIdOnTies) {
  const std::vector<float> logits{0.5f, 2.0f, -1.0f, 2.0f};
  SamplingParams greedy{.temperature = 0.0f};
  EXPECT_EQ(sample_token(logits, greedy, 0), 1);
  SamplingParams top1{.temperature = 5.0f, .top_k = 1};
  EXPECT_EQ(drawn_tokens(logits, top1, 100), std::set<int32_t>{1});
}

// The reference: log-softmax in double of the logits (raw) or of logits / temperature (processed, T 0 counts as 1).
double reference_logprob(const std::vector<float>& logits, int32_t token, double temperature) {
  double sum = 0;
  for (float l : logits) sum += std::exp(l / temperature);
  return logits[token] / temperature - std::log(sum);
}

TEST(Sampler, LogprobsAreTheRawOrTheTemperedLogSoftmaxBeforeFilters) {
  std::vector<float> logits(300);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 4.0f * std::sin(static_cast<float>(i) * 0.37f);
  for (float temperature : {0.0f, 0.5f, 1.0f, 2.0f}) {
    // Filters change what is drawn, not the reported logprobs.
    const SamplingParams params{.temperature = temperature, .top_k = 5, .top_p = 0.8f, .min_p = 0.1f,
                                .n_top_logprobs = 3, .token_ids_logprob = {7, 0, 299}};
    const int32_t token = sample_token(logits, params, 3);
    const double t = temperature == 0.0f ? 1.0 : temperature;
    for (LogprobsMode mode : {LogprobsMode::Raw, LogprobsMode::Processed}) {
      const double scale = mode == LogprobsMode::Raw ? 1.0 : t;
      const PositionLogprobs lp = position_logprobs(logits, token, params, mode);
      EXPECT_NEAR(lp.logprob, reference_logprob(logits, token, scale), 1e-5) << temperature;
      ASSERT_EQ(lp.top.size(), 3u);
      std::vector<int32_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      for (size_t k = 0; k < 3; ++k) {
        EXPECT_EQ(lp.top[k].first, order[k]);
        EXPECT_NEAR(lp.top[k].second, reference_logprob(logits, order[k], scale), 1e-5);
      }
      ASSERT_EQ(lp.ids.size(), 3u);
      for (size_t k = 0; k < 3; ++k) {
        EXPECT_EQ(lp.ids[k].first, params.token_ids_logprob[k]);
        EXPECT_NEAR(lp.ids[k].second, reference_logprob(logits, params.token_ids_logprob[k], scale), 1e-5);
      }
    }
  }
  // Rank: 1 + the tokens strictly more probable. Logit 0 = sin(0); 161 of the others have sin > 0.
  EXPECT_EQ(position_logprobs(logits, 0, {}, LogprobsMode::Raw).rank, 162);
  EXPECT_EQ(position_logprobs(logits, 225, {}, LogprobsMode::Processed).rank, 1);  // sin(83.25), the largest
  // Raw logprobs do not depend on the temperature at all, bit for bit.
  EXPECT_EQ(position_logprobs(logits, 4, {.temperature = 0.3f}, LogprobsMode::Raw).logprob,
            position_logprobs(logits, 4, {.temperature = 3.0f}, LogprobsMode::Raw).logprob);
}

// A raw log-normalizer the forward computed (the GPU's) replaces the pass over the vocabulary exactly where the
// logprob scale is 1: raw mode, or processed at temperature 0 or 1; elsewhere it is ignored.
TEST(Sampler, AGivenRawLogNormalizerIsUsedOnlyWhereTheScaleIsOne) {
  std::vector<float> logits(300);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 4.0f * std::cos(static_cast<float>(i) * 0.21f);
  const float marker = 100.0f;  // far from the true normalizer (about 8), so its use shows
  for (const float temperature : {0.0f, 0.5f, 1.0f, 2.0f})
    for (const LogprobsMode mode : {LogprobsMode::Raw, LogprobsMode::Processed}) {
      const SamplingParams params{.temperature = temperature, .n_top_logprobs = 2, .token_ids_logprob = {9}};
      const PositionLogprobs computed = position_logprobs(logits, 5, params, mode);
      const PositionLogprobs given = position_logprobs(logits, 5, params, mode, marker);
      const bool scale_one = mode == LogprobsMode::Raw || temperature == 0.0f || temperature == 1.0f;
      if (scale_one) {
        EXPECT_FLOAT_EQ(given.logprob, logits[5] - marker) << temperature;
        EXPECT_FLOAT_EQ(given.ids[0].second, logits[9] - marker);
        EXPECT_FLOAT_EQ(given.top[0].second, *std::max_element(logits.begin(), logits.end()) - marker);
      } else {
        EXPECT_EQ(given.logprob, computed.logprob) << temperature;
      }
      EXPECT_EQ(given.rank, computed.rank);
    }
}

TEST(Sampler, TopKKeepsOnlyTheKMostProbable) {
  const std::vector<float> logits{0.0f, 1.0f, 0.9f, 0.8f, -0.5f};
  EXPECT_EQ(drawn_tokens(logits, {.top_k = 2}), (std::set<int32_t>{1, 2}));
  EXPECT_EQ(drawn_tokens(logits, {.top_k = 100}), (std::set<int32_t>{0, 1, 2, 3, 4}));  // k beyond the vocabulary
}

TEST(Sampler, TopPKeepsTheShortestPrefixReachingP) {
  // Probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs).
  const std::vector<float> logits{std::log(0.125f), std::log(0.5f), std::log(0.25f), std::log(0.125f)};
  EXPECT_EQ(drawn_tokens(logits, {.top_p = 0.45f}), std::set<int32_t>{1});  // 0.5 alone reaches 0.45
  EXPECT_EQ(drawn_tokens(logits, {.top_p = 0.6f}), (std::set<int32_t>{1, 2}));
  EXPECT_EQ(drawn_tokens(logits, {.top_p = 0.8f}), (std::set<int32_t>{0, 1, 2}));  // tie 0.125: lower id first
  EXPECT_EQ(drawn_tokens(logits, {.top_p = 0.1f}), std::set<int32_t>{1});          // the top token always stays
}

TEST(Sampler, TopPOverAFlatDistributionReachesBeyondTheFirstSortedPrefix) {
  // 1000 equal logits: top_p 0.5 keeps ids 0..499 (ties: lower id first), more than the first sorted prefix (256).
  const std::vector<float> flat(1000, 0.0f);
  const std::set<int32_t> drawn = drawn_tokens(flat, {.top_p = 0.5f}, 3000);
  EXPECT_LT(*drawn.rbegin(), 500);
  EXPECT_GT(*drawn.rbegin(), 400);
  EXPECT_GT(drawn.size(), 400u);
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheMax) {
  const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  EXPECT_EQ(drawn_tokens(logits, {.min_p = 0.5f}), (std::set<int32_t>{0, 1}));      // >= 0.25
  EXPECT_EQ(drawn_tokens(logits, {.min_p = 0.29f}), (std::set<int32_t>{0, 1, 2}));  // >= 0.145
  EXPECT_EQ(drawn_tokens(logits, {.min_p = 1.0f}), std::set<int32_t>{0});
}

TEST(Sampler, FrequenciesFollowTheTemperedDistribution) {
  // At temperature 2 the probabilities of logits {0, log 4} are 1/3 and 2/3.
  const std::vector<float> logits{0.0f, std::log(4.0f)};
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += sample_token(logits, {.temperature = 2.0f, .seed = 7}, i);
  EXPECT_NEAR(ones / double(n), 2.0 / 3.0, 0.02);
}

TEST(Sampler, SameSeedAndIndexSameTokenDifferentSeedsDiffer) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 1.7f);
  std::vector<int32_t> a, b, c;
  for (int i = 0; i < 64; ++i) {
    a.push_back(sample_token(logits, {.seed = 42}, i));
    b.push_back(sample_token(logits, {.seed = 42}, i));
    c.push_back(sample_token(logits, {.seed = 43}, i));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(sampling_uniform(42, 5), sampling_uniform(42, 5));
  EXPECT_NE(sampling_uniform(42, 5), sampling_uniform(42, 6));
}

TEST(Sampler, RejectsNaNLogitsAndBadParameters) {
  EXPECT_THAT(
      [] {
        sample_token(std::vector<float>{0.0f, NAN}, {}, 0);
      },
      ThrowsMessage<Error>(HasSubstr("logit of token 1 is NaN")));
  EXPECT_THAT(
      [] {
        sample_token(std::vector<float>{-INFINITY, -INFINITY}, {}, 0);
      },
      ThrowsMessage<Error>(HasSubstr("largest logit is -inf")));
  // -inf entries are allowed (masked tokens) and are never drawn.
  EXPECT_EQ(drawn_tokens({-INFINITY, 0.0f, -INFINITY}, {}, 50), std::set<int32_t>{1});
  EXPECT_THAT([] { SamplingParams{.temperature = -1.0f}.validate("request 3"); },
              ThrowsMessage<Error>(HasSubstr("request 3: temperature -1 must be finite and >= 0")));
  EXPECT_THAT([] { SamplingParams{.top_k = 0}.validate("r"); }, ThrowsMessage<Error>(HasSubstr("top_k 0")));
  EXPECT_THAT([] { SamplingParams{.top_p = 0.0f}.validate("r"); }, ThrowsMessage<Error>(HasSubstr("top_p 0")));
  EXPECT_THAT([] { SamplingParams{.min_p = 1.5f}.validate("r"); }, ThrowsMessage<Error>(HasSubstr("min_p 1.5")));
}

}  // namespace
}  // namespace fp4serve
