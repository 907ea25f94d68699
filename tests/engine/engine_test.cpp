// The engine end to end on the tiny model that `fp4serve synth` writes: generation against a plain greedy loop over
// full-sequence forwards, batching / preemption / prefix caching changing nothing, stop conditions, aborts, and
// request validation.
#include "engine/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "tests/model/test_util.h"

namespace fp4serve::testing_support {
namespace {

using testing::AllOf;
using testing::HasSubstr;
using testing::ThrowsMessage;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("engine_test");
    model_dir_ = new std::filesystem::path(synth_tiny(*dir_));
  }
  static void TearDownTestSuite() {
    delete model_dir_;
    delete dir_;
  }
  static Engine make_engine(EngineOptions options = {}) { return Engine(load_model(*model_dir_), options); }

  static inline TempDir* dir_ = nullptr;
  static inline std::filesystem::path* model_dir_ = nullptr;
};

const std::vector<int32_t> kPrompt{72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100};  // "Hello, world"

GenerateRequest request(std::vector<int32_t> prompt, int64_t max_new_tokens, SamplingParams sampling = {}) {
  return {.input_ids = std::move(prompt),
          .sampling = sampling,
          .max_new_tokens = max_new_tokens,
          .stop_token_ids = {},
          .ignore_eos = false};
}

TEST_F(EngineTest, GreedyOutputEqualsAGreedyLoopOverFullForwards) {
  Engine engine = make_engine();
  const GenerateResult result = engine.generate({request(kPrompt, 8, {.temperature = 0.0f})})[0];
  ASSERT_EQ(result.output_ids.size(), 8u);
  EXPECT_EQ(result.finish_reason, FinishReason::Length);
  EXPECT_EQ(result.prompt_tokens, 12);
  EXPECT_EQ(result.weight_version, "default");

  // The reference: recompute the whole sequence every step with a fresh cache, take the argmax.
  auto model = load_model(*model_dir_);
  const ModelConfig& c = model->config();
  std::vector<int32_t> tokens = kPrompt;
  for (size_t step = 0; step < 8; ++step) {
    const Shape kv_shape{c.num_hidden_layers, 1, 32, c.num_key_value_heads, c.head_dim};
    const KvCacheTensors kv{Tensor::empty(kv_shape, DType::BF16, Device::CPU),
                            Tensor::empty(kv_shape, DType::BF16, Device::CPU)};
    const std::vector<int32_t> pages{0};
    const Tensor logits =
        model
            ->forward({.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = pages}}, .kv_cache = &kv})
            .last_logits;
    const float* row = logits.data<float>();
    const int32_t best = static_cast<int32_t>(std::max_element(row, row + c.vocab_size) - row);
    double sum = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) sum += std::exp(double{row[v]} - row[best]);
    EXPECT_EQ(result.output_ids[step], best) << "step " << step;
    EXPECT_NEAR(result.output_logprobs[step], -std::log(sum), 1e-5) << "step " << step;
    tokens.push_back(best);
  }
}

TEST_F(EngineTest, BatchingPreemptionAndPrefixCachingChangeNothing) {
  std::vector<GenerateRequest> requests;
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> prompt = kPrompt;
    prompt.resize(kPrompt.size() - static_cast<size_t>(i));  // shared prefixes of different lengths
    requests.push_back(request(prompt, 10, {.temperature = 0.8f, .top_p = 0.9f, .seed = uint64_t(100 + i)}));
  }
  std::vector<GenerateResult> alone;
  {
    Engine engine = make_engine({.enable_prefix_cache = false});
    for (const GenerateRequest& r : requests) alone.push_back(engine.generate({r})[0]);
  }
  // Together, in a cache so small (6 pages of 4 tokens for 5 sequences of up to 22) that sequences get preempted.
  Engine small = make_engine({.kv_cache_tokens = 24, .page_size = 4});
  const std::vector<GenerateResult> together = small.generate(requests);
  EXPECT_GT(small.scheduler().n_preemptions(), 0);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i].output_ids, alone[i].output_ids) << "request " << i;
    EXPECT_EQ(together[i].output_logprobs, alone[i].output_logprobs) << "request " << i;
  }
  // Every whole page of a prompt is now cached: the same prompt again reuses all but its last token's page.
  const GenerateResult again = small.generate({requests[0]})[0];
  EXPECT_EQ(again.cached_tokens, 8);  // 12 tokens: pages 0-1 cached, the last page holds token 11
  EXPECT_EQ(again.output_ids, alone[0].output_ids);
  EXPECT_EQ(again.output_logprobs, alone[0].output_logprobs);
  small.flush_prefix_cache();
  EXPECT_EQ(small.n_prefix_cached_pages(), 0);
  EXPECT_EQ(small.generate({requests[0]})[0].cached_tokens, 0);
}

TEST_F(EngineTest, StopsAtStopTokensAndEosUnlessIgnored) {
  Engine engine = make_engine();
  const std::vector<int32_t> free_run = engine.generate({request(kPrompt, 12, {.temperature = 0.0f})})[0].output_ids;
  const int32_t stop = free_run[3];
  const size_t first = static_cast<size_t>(std::find(free_run.begin(), free_run.end(), stop) - free_run.begin());

  GenerateRequest with_stop = request(kPrompt, 12, {.temperature = 0.0f});
  with_stop.stop_token_ids = {stop};
  const GenerateResult stopped = engine.generate({with_stop})[0];
  EXPECT_EQ(stopped.finish_reason, FinishReason::Stop);
  EXPECT_EQ(stopped.matched_stop_token, stop);
  EXPECT_EQ(stopped.output_ids, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));

  Engine eos_engine = make_engine({.eos_token_ids = {stop}});
  EXPECT_EQ(eos_engine.generate({request(kPrompt, 12, {.temperature = 0.0f})})[0].finish_reason, FinishReason::Stop);
  GenerateRequest ignoring = request(kPrompt, 12, {.temperature = 0.0f});
  ignoring.ignore_eos = true;
  const GenerateResult ignored = eos_engine.generate({ignoring})[0];
  EXPECT_EQ(ignored.finish_reason, FinishReason::Length);
  EXPECT_EQ(ignored.output_ids, free_run);

  // Length wins when the last allowed token is also a stop token (SGLang's order).
  GenerateRequest both = request(kPrompt, static_cast<int64_t>(first) + 1, {.temperature = 0.0f});
  both.stop_token_ids = {stop};
  EXPECT_EQ(engine.generate({both})[0].finish_reason, FinishReason::Length);
  EXPECT_TRUE(engine.generate({request(kPrompt, 0)})[0].output_ids.empty());
}

TEST_F(EngineTest, StepApiStreamsTokensAbortsAndStampsTheWeightVersion) {
  Engine engine = make_engine({.weight_version = "v1"});
  const int64_t a = engine.add_request(request(kPrompt, 4, {.temperature = 0.0f, .n_top_logprobs = 3}));
  const int64_t b = engine.add_request(request(kPrompt, 50));
  std::vector<StepOutput> a_tokens;
  while (engine.has_unfinished()) {
    for (StepOutput& token : engine.step()) {
      if (token.request_id == a) a_tokens.push_back(token);
      if (token.request_id == a && token.finished) engine.abort(b);
    }
  }
  ASSERT_EQ(a_tokens.size(), 4u);
  EXPECT_TRUE(a_tokens.back().finished);
  ASSERT_EQ(a_tokens[0].logprobs.top.size(), 3u);
  EXPECT_EQ(a_tokens[0].logprobs.top[0].first, a_tokens[0].token);  // greedy takes the most probable
  engine.set_weight_version("v2");
  const GenerateResult result_a = engine.take_result(a);
  EXPECT_EQ(result_a.weight_version, "v2");
  EXPECT_EQ(result_a.output_top_logprobs.size(), 4u);
  const GenerateResult result_b = engine.take_result(b);
  EXPECT_EQ(result_b.finish_reason, FinishReason::Abort);
  EXPECT_EQ(result_b.output_ids.size(), 4u);  // generated in the same steps as a
  EXPECT_EQ(engine.kv_cache().pages().n_free_pages() + engine.n_prefix_cached_pages(),
            engine.kv_cache().pages().n_pages());
  EXPECT_THAT([&] { engine.take_result(a); }, ThrowsMessage<Error>(HasSubstr("request 0 is unknown")));
}

TEST_F(EngineTest, RejectsBadRequestsBeforeRunningAny) {
  Engine engine = make_engine({.kv_cache_tokens = 64});
  auto expect_rejected = [&](GenerateRequest bad, const std::string& message) {
    EXPECT_THAT(
        [&] {
          engine.generate({request(kPrompt, 2), bad});
        },
        ThrowsMessage<Error>(AllOf(HasSubstr("request 1: "), HasSubstr(message))));
    EXPECT_FALSE(engine.has_unfinished());  // the good request did not start either
  };
  expect_rejected(request({}, 2), "the prompt is empty");
  expect_rejected(request({1, 259}, 2), "input id 259 at position 1 is outside the vocabulary [0, 259)");
  expect_rejected(request(kPrompt, -1), "max_new_tokens -1");
  expect_rejected(request(kPrompt, 60), "exceed the KV cache of 64 tokens");
  expect_rejected(request(kPrompt, 2, {.top_p = 2.0f}), "top_p 2 must be in (0, 1]");
  expect_rejected(request(kPrompt, 2, {.token_ids_logprob = {3, 259}}),
                  "token_ids_logprob id 259 is outside the vocabulary [0, 259)");
  GenerateRequest start_too_late = request(kPrompt, 2);
  start_too_late.logprob_start_len = 12;
  expect_rejected(start_too_late, "logprob_start_len 12 must be -1 (no prompt logprobs) or below the number of "
                                  "prompt tokens (12)");
}

}  // namespace
}  // namespace fp4serve::testing_support
