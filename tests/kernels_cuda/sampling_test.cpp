// GPU sampling against the CPU spec sample_token (engine/sampler.h): on random logits (no draw within rounding of a
// boundary) the tokens and top-logprob ids must be identical, logprobs equal up to the CPU's fp32 summation error.
// Covers every filter alone and combined, greedy spellings, Qwen3's vocabulary, batches that need several sort chunks,
// ties (lower id first, -0 == +0), a single finite logit among -inf, and the errors sample_token raises.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "engine/sampler.h"
#include "format/bf16.h"
#include "kernels/cuda/sampling.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(SamplingCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<SamplingParams> parameter_mix() {
  return {
      {.temperature = 0.0f},             // greedy
      {.temperature = 1.0f, .seed = 7},  // no filter: id order
      {.temperature = 0.7f, .top_k = 20, .seed = 1},
      {.temperature = 1.0f, .top_p = 0.9f, .seed = 2, .n_top_logprobs = 5},
      {.temperature = 1.3f, .min_p = 0.05f, .seed = 3},
      {.temperature = 0.8f, .top_k = 50, .top_p = 0.8f, .min_p = 0.02f, .seed = 4, .n_top_logprobs = 20},
      {.temperature = 1.0f, .top_k = 1, .seed = 5},        // greedy by top_k
      {.temperature = 2.0f, .top_k = 1 << 30, .seed = 6},  // top_k beyond the vocabulary
      {.temperature = 1.0f, .top_p = 0.01f, .seed = 8},    // only the most probable token
      {.temperature = 0.0f, .n_top_logprobs = 3},          // greedy with top logprobs
  };
}

// Rows 0 .. params.size() - 1 of fp32 logits, raw logprobs.
std::vector<cuda::GpuSampledToken> sample_rows(cuda::CudaSampler& sampler, const float* logits,
                                               const std::vector<SamplingParams>& params,
                                               const std::vector<int64_t>& token_indices) {
  return sampler.sample({.logits = logits, .params = params, .token_indices = token_indices});
}

struct Batch {
  std::vector<float> logits;  // [rows, vocab]
  std::vector<SamplingParams> params;
  std::vector<int64_t> token_indices;
};

// How a test hands the logits to the sampler: fp32 rows 0.. in order (the default), or bf16 as the GPU forward holds
// them, the rows in reverse order behind a NaN row that no sampled row may read (SamplingBatch::logit_rows).
struct LogitsLayout {
  bool bf16_reversed = false;
  LogprobsMode mode = LogprobsMode::Raw;
};

// Runs the GPU sampler and sample_token / position_logprobs on every row; tokens, ranks and top ids must be equal,
// logprobs close. With bf16 the batch's logits must be bf16 values.
void expect_matches_cpu(const Batch& batch, int64_t vocab, const std::string& what, LogitsLayout layout = {}) {
  const int64_t rows = static_cast<int64_t>(batch.params.size());
  std::optional<DeviceBytes> logits;
  std::vector<int64_t> logit_rows;
  if (layout.bf16_reversed) {
    std::vector<bf16_bits> stored(static_cast<size_t>((rows + 1) * vocab), float_to_bf16(std::nanf("")));
    for (int64_t r = 0; r < rows; ++r) {
      logit_rows.push_back(rows - r);
      for (int64_t v = 0; v < vocab; ++v) {
        const float value = batch.logits[r * vocab + v];
        ASSERT_EQ(round_to_bf16(value), value) << what << ": not a bf16 logit";
        stored[(rows - r) * vocab + v] = float_to_bf16(value);
      }
    }
    logits.emplace(stored.size() * sizeof(bf16_bits));
    logits->upload(stored);
  } else {
    logits.emplace(batch.logits.size() * 4);
    logits->upload(batch.logits);
  }
  cuda::CudaSampler sampler(rows, vocab);
  const std::vector<cuda::GpuSampledToken> got = sampler.sample({.logits = logits->data<uint8_t>(),
                                                                 .bf16_logits = layout.bf16_reversed,
                                                                 .logit_rows = logit_rows,
                                                                 .params = batch.params,
                                                                 .token_indices = batch.token_indices,
                                                                 .logprobs_mode = layout.mode});
  ASSERT_EQ(static_cast<int64_t>(got.size()), rows);
  std::vector<int32_t> device_tokens(static_cast<size_t>(rows));
  check_cuda(cudaMemcpy(device_tokens.data(), sampler.device_tokens(), rows * 4, cudaMemcpyDeviceToHost), "tokens");
  // sample_token sums the vocabulary's exps one by one in fp32: over 151936 tokens its log-normalizer alone drifts by
  // up to ~3e-4 (measured against float64), so logprobs agree to 1e-3; a wrong normalizer is off by far more.
  // Equal infinities (the logprob of a -inf logit) are near; fabs(-inf - -inf) would be NaN.
  auto near = [](float a, float b) { return a == b || std::fabs(a - b) <= 1e-3f + 1e-5f * std::fabs(b); };
  for (int64_t r = 0; r < rows; ++r) {
    const std::span<const float> row(&batch.logits[r * vocab], static_cast<size_t>(vocab));
    const int32_t expected_token = sample_token(row, batch.params[r], batch.token_indices[r]);
    const PositionLogprobs expected = position_logprobs(row, expected_token, batch.params[r], layout.mode);
    const std::string where = what + ", row " + std::to_string(r);
    EXPECT_EQ(got[r].token, expected_token) << where;
    EXPECT_EQ(device_tokens[r], got[r].token) << where;
    EXPECT_EQ(got[r].rank, expected.rank) << where;
    EXPECT_TRUE(near(got[r].logprob, expected.logprob))
        << where << ": " << got[r].logprob << " vs " << expected.logprob;
    ASSERT_EQ(got[r].top_logprobs.size(), expected.top.size()) << where;
    for (size_t i = 0; i < expected.top.size(); ++i) {
      EXPECT_EQ(got[r].top_logprobs[i].first, expected.top[i].first) << where << ", top " << i;
      EXPECT_TRUE(near(got[r].top_logprobs[i].second, expected.top[i].second)) << where << ", top " << i;
    }
  }
  EXPECT_TRUE(logits->guards_intact());
}

Batch random_batch(int64_t rows, int64_t vocab, float spread, Random& random) {
  Batch batch;
  batch.logits.resize(static_cast<size_t>(rows * vocab));
  for (auto& l : batch.logits) l = spread * random.normal();
  const std::vector<SamplingParams> mix = parameter_mix();
  for (int64_t r = 0; r < rows; ++r) {
    batch.params.push_back(mix[r % mix.size()]);
    batch.params.back().seed += static_cast<uint64_t>(r / static_cast<int64_t>(mix.size())) * 1000;
    batch.token_indices.push_back(below(random, 5000));
  }
  return batch;
}

TEST(SamplingCuda, MatchesCpuOnEveryFilterAndQwenVocabulary) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(51);
  expect_matches_cpu(random_batch(10, 151936, 3.0f, random), 151936, "vocab 151936");
  expect_matches_cpu(random_batch(10, 1000, 1.0f, random), 1000, "vocab 1000, flat logits");
  expect_matches_cpu(random_batch(10, 37, 4.0f, random), 37, "vocab 37");
}

TEST(SamplingCuda, Bf16LogitsAtScatteredRowsWithProcessedLogprobs) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(54);
  // The GPU forward's case: bf16 logits, each sampled row read from its own row of a larger matrix, logprobs of
  // logits / temperature.
  for (const int64_t vocab : {int64_t{151936}, int64_t{1000}}) {
    Batch batch = random_batch(20, vocab, 3.0f, random);
    for (float& l : batch.logits) l = round_to_bf16(l);
    for (const LogprobsMode mode : {LogprobsMode::Processed, LogprobsMode::Raw})
      expect_matches_cpu(
          batch, vocab,
          "bf16 vocab " + std::to_string(vocab) + (mode == LogprobsMode::Processed ? ", processed" : ", raw"),
          {.bf16_reversed = true, .mode = mode});
  }
}

TEST(SamplingCuda, ManySortedRowsSpanSeveralSortChunks) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(52);
  // 60 rows: 42 need the descending order (filters or top logprobs): three chunks of cuda::kSamplingSortRows.
  expect_matches_cpu(random_batch(60, 4096, 2.0f, random), 4096, "60 rows");
}

TEST(SamplingCuda, SameSeedAndIndexGiveTheSameTokenAcrossTokenIndices) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(53);
  Batch batch = random_batch(1, 500, 1.0f, random);
  batch.params[0] = {.temperature = 1.0f, .top_p = 0.95f, .seed = 42};
  for (int64_t index : {0, 1, 2, 1000}) {
    batch.token_indices[0] = index;
    expect_matches_cpu(batch, 500, "token index " + std::to_string(index));
  }
}

TEST(SamplingCuda, TiesAndSingleFiniteLogit) {
  FP4_SKIP_WITHOUT_GPU();
  const int64_t vocab = 300;
  Batch batch;
  // Row 0: all equal (ties everywhere, -0 and +0 mixed). Row 1: one finite logit among -inf. Row 2: two tied maxima.
  for (int64_t i = 0; i < vocab; ++i) batch.logits.push_back(i % 2 == 0 ? 0.0f : -0.0f);
  for (int64_t i = 0; i < vocab; ++i) batch.logits.push_back(i == 123 ? 2.5f : -kInf);
  for (int64_t i = 0; i < vocab; ++i)
    batch.logits.push_back(i == 17 || i == 250 ? 5.0f : 0.01f * static_cast<float>(i));
  for (const SamplingParams& params : parameter_mix()) {
    batch.params.assign(3, params);
    batch.token_indices = {0, 1, 2};
    expect_matches_cpu(batch, vocab, "ties / single finite logit, temperature " + std::to_string(params.temperature));
  }
  // Independent of the CPU: the lone finite logit is always chosen, with logprob 0; ties go to the lower id.
  DeviceBytes logits(batch.logits.size() * 4);
  logits.upload(batch.logits);
  cuda::CudaSampler sampler(3, vocab);
  const std::vector<cuda::GpuSampledToken> greedy =
      sample_rows(sampler, logits.data<float>(), std::vector<SamplingParams>(3, {.temperature = 0.0f}), {0, 0, 0});
  EXPECT_EQ(greedy[0].token, 0);
  EXPECT_EQ(greedy[1].token, 123);
  EXPECT_EQ(greedy[1].logprob, 0.0f);
  EXPECT_EQ(greedy[2].token, 17);
  const std::vector<cuda::GpuSampledToken> top_k =
      sample_rows(sampler, logits.data<float>(),
                  std::vector<SamplingParams>(3, {.temperature = 1.0f, .top_k = 4, .seed = 9}), {3, 3, 3});
  EXPECT_LT(top_k[0].token, 4);  // the four candidates of an all-tied row are ids 0..3
  EXPECT_EQ(top_k[1].token, 123);
}

TEST(SamplingCuda, ReportsTheErrorsOfSampleToken) {
  FP4_SKIP_WITHOUT_GPU();
  const int64_t vocab = 64;
  std::vector<float> values(2 * vocab, 0.5f);
  values[vocab + 7] = std::numeric_limits<float>::quiet_NaN();
  DeviceBytes logits(values.size() * 4);
  logits.upload(values);
  cuda::CudaSampler sampler(2, vocab);
  const std::vector<SamplingParams> params(2);
  const std::vector<int64_t> indices = {0, 0};
  expect_error_naming([&] { sample_rows(sampler, logits.data<float>(), params, indices); },
                      "sampling row 1: logit of token 7 is NaN");
  for (float bad : {-kInf, kInf}) {
    values.assign(2 * vocab, bad);
    logits.upload(values);
    expect_error_naming([&] { sample_rows(sampler, logits.data<float>(), params, indices); },
                        "sampling row 0: the largest logit is");
  }
  std::vector<SamplingParams> bad_params(2);
  bad_params[1].top_p = 0.0f;
  expect_error_naming([&] { sample_rows(sampler, logits.data<float>(), bad_params, indices); },
                      "sampling row 1: top_p 0");
  expect_error_naming(
      [&] { sample_rows(sampler, logits.data<float>(), std::vector<SamplingParams>(3), std::vector<int64_t>(3)); },
      "3 rows exceed max_rows = 2");
  expect_error_naming([&] { sample_rows(sampler, logits.data<float>(), params, std::vector<int64_t>(1)); },
                      "1 token_indices for 2 rows");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
