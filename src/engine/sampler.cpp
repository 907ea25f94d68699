#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"

namespace fp4serve {

void SamplingParams::validate(std::string_view request) const {
  FP4_CHECK(std::isfinite(temperature) && temperature >= 0.0f, "{}: temperature {} must be finite and >= 0", request,
            temperature);
  FP4_CHECK(top_k == -1 || top_k >= 1, "{}: top_k {} must be -1 (all tokens) or at least 1", request, top_k);
  FP4_CHECK(top_p > 0.0f && top_p <= 1.0f, "{}: top_p {} must be in (0, 1]", request, top_p);
  FP4_CHECK(min_p >= 0.0f && min_p <= 1.0f, "{}: min_p {} must be in [0, 1]", request, min_p);
  FP4_CHECK(n_top_logprobs >= 0, "{}: top_logprobs_num {} must be >= 0", request, n_top_logprobs);
}

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Token ids ordered by `value` descending, lower id first on ties; only the first `count` are sorted.
std::vector<int32_t> order_descending(std::span<const float> values, int64_t count) {
  std::vector<int32_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + count, order.end(),
                    [&](int32_t a, int32_t b) { return values[a] > values[b] || (values[a] == values[b] && a < b); });
  order.resize(static_cast<size_t>(count));
  return order;
}

// The largest logit, after checking that no logit is NaN and that some token is possible. One branch-free pass over
// 16 lanes the compiler vectorizes (a 152k-token row is read once per call); the lanes start at -inf themselves, as
// an OpenMP max reduction's identity is the compiler's choice (clang: -FLT_MAX, which would hide an all -inf row).
// The NaN's position is looked up only to report it.
float checked_max_logit(std::span<const float> logits) {
  FP4_CHECK(!logits.empty(), "sampling from an empty logits row");
  constexpr size_t kLanes = 16;
  float lane_max[kLanes];
  std::fill(lane_max, lane_max + kLanes, -std::numeric_limits<float>::infinity());
  int lane_nan[kLanes] = {};
  const size_t n = logits.size(), full = n / kLanes * kLanes;
  for (size_t i = 0; i < full; i += kLanes) {
#pragma omp simd
    for (size_t j = 0; j < kLanes; ++j) {
      const float l = logits[i + j];
      lane_nan[j] |= l != l;
      lane_max[j] = l > lane_max[j] ? l : lane_max[j];
    }
  }
  for (size_t i = full; i < n; ++i) {
    lane_nan[0] |= logits[i] != logits[i];
    lane_max[0] = logits[i] > lane_max[0] ? logits[i] : lane_max[0];
  }
  float max_logit = lane_max[0];
  int any_nan = lane_nan[0];
  for (size_t j = 1; j < kLanes; ++j) {
    max_logit = lane_max[j] > max_logit ? lane_max[j] : max_logit;
    any_nan |= lane_nan[j];
  }
  if (any_nan) {
    const auto nan = std::find_if(logits.begin(), logits.end(), [](float l) { return std::isnan(l); });
    fail("sampling: logit of token {} is NaN (the model produced non-finite values)", nan - logits.begin());
  }
  FP4_CHECK(std::isfinite(max_logit), "sampling: the largest logit is {}; logits must be finite or -inf", max_logit);
  return max_logit;
}

// How many logits exceed `value` (a rank), vectorized.
int64_t count_above(std::span<const float> logits, float value) {
  int64_t count = 0;
#pragma omp simd reduction(+ : count)
  for (size_t i = 0; i < logits.size(); ++i) count += logits[i] > value ? 1 : 0;
  return count;
}

}  // namespace

double sampling_uniform(uint64_t seed, int64_t token_index) {
  const uint64_t bits = splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(token_index));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

int32_t sample_token(std::span<const float> logits, const SamplingParams& params, int64_t token_index) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const float max_logit = checked_max_logit(logits);
  if (params.is_greedy())  // the first (lowest id) of the largest
    return static_cast<int32_t>(std::find(logits.begin(), logits.end(), max_logit) - logits.begin());

  const double inv_temperature = 1.0 / static_cast<double>(params.temperature);
  auto weight = [&](int32_t token) {
    return std::exp((static_cast<double>(logits[token]) - max_logit) * inv_temperature);
  };
  double total = 0.0;  // over the whole vocabulary, so top_p and min_p see the unfiltered distribution
  for (int32_t token = 0; token < vocab; ++token) total += weight(token);

  std::vector<int32_t> candidates;  // in draw order
  std::vector<double> probs;
  if (params.top_k == -1 && params.top_p == 1.0f && params.min_p == 0.0f) {
    candidates.resize(static_cast<size_t>(vocab));
    std::iota(candidates.begin(), candidates.end(), 0);
    for (int32_t token : candidates) probs.push_back(weight(token) / total);
  } else {
    // Sort only as far as the filters reach: a prefix of 256, grown 4x until top_p or min_p cut inside it.
    const int64_t limit = params.top_k == -1 ? vocab : std::min<int64_t>(params.top_k, vocab);
    for (int64_t count = std::min<int64_t>(limit, 256);; count = std::min(limit, count * 4)) {
      candidates = order_descending(logits, count);
      probs.clear();
      for (int32_t token : candidates) probs.push_back(weight(token) / total);
      size_t n_kept = 0;
      double mass_before = 0.0;
      for (; n_kept < probs.size(); ++n_kept) {
        const bool reached_top_p = n_kept > 0 && mass_before >= params.top_p;
        const bool below_min_p = probs[n_kept] < params.min_p * probs[0];
        if (reached_top_p || below_min_p) break;
        mass_before += probs[n_kept];
      }
      if (n_kept < candidates.size() || count == limit) {
        candidates.resize(n_kept);
        probs.resize(n_kept);
        break;
      }
    }
  }
  double kept_mass = 0.0;
  for (double p : probs) kept_mass += p;
  const double target = sampling_uniform(params.seed, token_index) * kept_mass;
  double cumulative = 0.0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    cumulative += probs[i];
    if (target < cumulative) return candidates[i];
  }
  return candidates.back();  // rounding can leave target at the kept mass
}

float logprob_scale(const SamplingParams& params, LogprobsMode mode) {
  return mode == LogprobsMode::Processed && params.temperature > 0.0f ? 1.0f / params.temperature : 1.0f;
}

bool can_sample_on_device(const SamplingParams& params) { return params.token_ids_logprob.empty(); }

PositionLogprobs position_logprobs(std::span<const float> logits, int32_t token, const SamplingParams& params,
                                   LogprobsMode mode, std::optional<float> raw_log_normalizer) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  const float max_logit = checked_max_logit(logits);
  // Scaling by 1 leaves the raw values bit for bit; the sum accumulates in fp32 like torch's log_softmax.
  const float scale = logprob_scale(params, mode);
  auto computed_log_normalizer = [&] {
    float sum_exp = 0.0f;
    for (float l : logits) sum_exp += std::exp(l * scale - max_logit * scale);
    return max_logit * scale + std::log(sum_exp);
  };
  const float log_normalizer =
      raw_log_normalizer && scale == 1.0f ? *raw_log_normalizer : computed_log_normalizer();
  auto logprob_of = [&](int32_t id) { return logits[id] * scale - log_normalizer; };

  PositionLogprobs result{
      .logprob = logprob_of(token),
      .rank = 1 + count_above(logits, logits[token])};
  if (params.n_top_logprobs > 0)  // dividing by a positive temperature keeps the order
    for (int32_t id : order_descending(logits, std::min<int64_t>(params.n_top_logprobs, vocab)))
      result.top.emplace_back(id, logprob_of(id));
  for (int32_t id : params.token_ids_logprob) result.ids.emplace_back(id, logprob_of(id));
  return result;
}

}  // namespace fp4serve
