// Chunked prefill and prompt logprobs through the engine on the tiny synthetic model: outputs bitwise equal to
// unchunked runs for random prompts and chunk sizes, decodes that keep going while a long prompt prefills, prefix-cache
// hits and preemption mid-prefill changing nothing, and prompt logprobs against the log-softmax of one full forward.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/engine.h"
#include "tests/model/test_util.h"

namespace fp4serve::testing_support {
namespace {

class ChunkedPrefillTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("chunked_prefill_test");
    model_dir_ = new std::filesystem::path(synth_tiny(*dir_));
  }
  static void TearDownTestSuite() {
    delete model_dir_;
    delete dir_;
  }
  static Engine make_engine(EngineOptions options) { return Engine(load_model(*model_dir_), options); }
  static EngineOptions with_chunk(int64_t chunked_prefill_size, bool prefix_cache = true) {
    return {.kv_cache_tokens = 4096,
            .page_size = 4,
            .scheduler = {.max_running_sequences = 64, .max_prefill_tokens = 16384,
                          .chunked_prefill_size = chunked_prefill_size},
            .enable_prefix_cache = prefix_cache};
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::filesystem::path* model_dir_ = nullptr;
};

std::vector<int32_t> random_prompt(std::mt19937& rng, int64_t length) {
  std::uniform_int_distribution<int32_t> token(0, 258);  // the tiny model's vocabulary: 259 ids
  std::vector<int32_t> prompt(static_cast<size_t>(length));
  for (int32_t& t : prompt) t = token(rng);
  return prompt;
}

GenerateRequest request(std::vector<int32_t> prompt, int64_t max_new_tokens, SamplingParams sampling = {},
                        int64_t logprob_start_len = -1) {
  return {.input_ids = std::move(prompt),
          .sampling = std::move(sampling),
          .max_new_tokens = max_new_tokens,
          .stop_token_ids = {},
          .ignore_eos = true,
          .logprob_start_len = logprob_start_len};
}

void expect_bitwise_equal(const GenerateResult& a, const GenerateResult& b, const std::string& what) {
  EXPECT_EQ(a.output_ids, b.output_ids) << what;
  EXPECT_EQ(a.output_logprobs, b.output_logprobs) << what;
  ASSERT_EQ(a.input_logprobs.size(), b.input_logprobs.size()) << what;
  for (size_t i = 0; i < a.input_logprobs.size(); ++i) {
    EXPECT_EQ(a.input_logprobs[i].logprob, b.input_logprobs[i].logprob) << what << " prompt logprob " << i;
    EXPECT_EQ(a.input_logprobs[i].top, b.input_logprobs[i].top) << what << " prompt top " << i;
  }
}

TEST_F(ChunkedPrefillTest, ChunkedOutputsAreBitwiseThoseOfUnchunkedPrefill) {
  std::mt19937 rng(1234);
  std::vector<GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) {
    const int64_t length = std::uniform_int_distribution<int64_t>(1, 40)(rng);
    const int64_t start = i % 2 == 0 ? -1 : std::uniform_int_distribution<int64_t>(0, length - 1)(rng);
    requests.push_back(request(random_prompt(rng, length), 6,
                               {.temperature = 0.9f, .top_p = 0.95f, .seed = uint64_t(i), .n_top_logprobs = 2},
                               start));
  }
  const std::vector<GenerateResult> unchunked = make_engine(with_chunk(-1)).generate(requests);
  // Chunks of one page, under a page, not a multiple of it, and a single token.
  for (int64_t chunk : {4, 3, 7, 1}) {
    Engine engine = make_engine(with_chunk(chunk));
    const std::vector<GenerateResult> chunked = engine.generate(requests);
    for (size_t i = 0; i < requests.size(); ++i)
      expect_bitwise_equal(chunked[i], unchunked[i], fmt::format("chunk {} request {}", chunk, i));
    // The same prompts again: prefix-cache hits now, still the same tokens.
    const std::vector<GenerateResult> cached = engine.generate(requests);
    int64_t n_cached = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      expect_bitwise_equal(cached[i], unchunked[i], fmt::format("cached, chunk {} request {}", chunk, i));
      n_cached += cached[i].cached_tokens;
    }
    EXPECT_GT(n_cached, 0) << chunk;
  }
}

TEST_F(ChunkedPrefillTest, RunningSequencesGetATokenEveryStepWhileALongPromptPrefills) {
  std::mt19937 rng(7);
  Engine engine = make_engine(with_chunk(5));
  const int64_t decoding = engine.add_request(request(random_prompt(rng, 3), 30, {.temperature = 0.0f}));
  EXPECT_EQ(engine.step().size(), 1u);  // its prefill, and its first token
  const int64_t long_prompt = engine.add_request(request(random_prompt(rng, 42), 2, {.temperature = 0.0f}));
  int steps_until_first_token = 0;
  for (bool long_prompt_sampled = false; !long_prompt_sampled;) {
    const std::vector<StepOutput> produced = engine.step();
    ++steps_until_first_token;
    ASSERT_FALSE(produced.empty());
    EXPECT_EQ(produced[0].request_id, decoding) << "step " << steps_until_first_token;
    EXPECT_TRUE(produced[0].token.has_value());
    long_prompt_sampled = produced.size() == 2 && produced[1].request_id == long_prompt;
  }
  EXPECT_EQ(steps_until_first_token, 9);  // 42 tokens in chunks of 5
}

TEST_F(ChunkedPrefillTest, PreemptionMidPrefillChangesNothing) {
  std::mt19937 rng(99);
  const GenerateRequest first = request(random_prompt(rng, 3), 12, {.temperature = 0.7f, .seed = 3});
  const GenerateRequest second =
      request(random_prompt(rng, 9), 4, {.temperature = 0.7f, .seed = 4, .n_top_logprobs = 1}, 0);
  Engine roomy = make_engine(with_chunk(-1, false));
  const GenerateResult first_alone = roomy.generate({first})[0];
  const GenerateResult second_alone = roomy.generate({second})[0];

  // 8 pages of 2 tokens, chunks of 2: `second` takes the last free pages mid-flight and is preempted mid-prefill
  // when `first` needs a page for its next token.
  EngineOptions tight = with_chunk(2);
  tight.kv_cache_tokens = 16;
  tight.page_size = 2;
  Engine engine = make_engine(tight);
  const int64_t a = engine.add_request(first);
  while (engine.step().empty() || engine.scheduler().running().front()->n_output_tokens() < 4) {
  }
  const int64_t b = engine.add_request(second);
  bool preempted_mid_prefill = false;
  while (engine.has_unfinished()) {
    engine.step();
    for (const Sequence* waiting : engine.scheduler().waiting())
      preempted_mid_prefill |= waiting->id == b && waiting->n_output_tokens() == 0;
  }
  EXPECT_TRUE(preempted_mid_prefill);
  expect_bitwise_equal(engine.take_result(a), first_alone, "first");
  const GenerateResult second_result = engine.take_result(b);
  expect_bitwise_equal(second_result, second_alone, "second");
  EXPECT_EQ(second_result.input_logprobs.size(), 8u);
}

// The reference: one forward over the whole prompt in a fresh cache, log-softmax of every position in double.
std::vector<std::vector<double>> full_forward_logprobs(Qwen3Model& model, const std::vector<int32_t>& prompt,
                                                       double temperature) {
  const ModelConfig& c = model.config();
  const Shape kv_shape{c.num_hidden_layers, 1, 64, c.num_key_value_heads, c.head_dim};
  const KvCacheTensors kv{Tensor::empty(kv_shape, DType::BF16, Device::CPU),
                          Tensor::empty(kv_shape, DType::BF16, Device::CPU)};
  const std::vector<int32_t> pages{0};
  const Tensor logits =
      model.forward({.sequences = {{.token_ids = prompt, .start_position = 0, .page_table = pages}},
                     .kv_cache = &kv,
                     .all_logits = true})
          .all_logits;
  std::vector<std::vector<double>> logprobs;
  for (size_t p = 0; p < prompt.size(); ++p) {
    const float* row = logits.data<float>() + static_cast<int64_t>(p) * c.vocab_size;
    double sum = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) sum += std::exp(row[v] / temperature);
    std::vector<double> position;
    for (int64_t v = 0; v < c.vocab_size; ++v) position.push_back(row[v] / temperature - std::log(sum));
    logprobs.push_back(std::move(position));
  }
  return logprobs;
}

TEST_F(ChunkedPrefillTest, PromptLogprobsAreTheLogSoftmaxOfOneFullForward) {
  std::mt19937 rng(5);
  const std::vector<int32_t> prompt = random_prompt(rng, 30);
  auto model = load_model(*model_dir_);
  const float temperature = 0.6f;
  for (LogprobsMode mode : {LogprobsMode::Raw, LogprobsMode::Processed}) {
    const std::vector<std::vector<double>> reference =
        full_forward_logprobs(*model, prompt, mode == LogprobsMode::Raw ? 1.0 : temperature);
    const SamplingParams sampling{.temperature = temperature, .seed = 1, .n_top_logprobs = 3,
                                  .token_ids_logprob = {5, 200}};
    EngineOptions options = with_chunk(7);
    options.logprobs_mode = mode;
    Engine engine = make_engine(options);
    // Warm the prefix cache with the whole prompt: a later request from position 10 on reuses 2 pages at most.
    engine.generate({request(prompt, 1)});
    for (int64_t start : {0, 10, 29}) {
      const GenerateResult result = engine.generate({request(prompt, start == 10 ? 0 : 3, sampling, start)})[0];
      EXPECT_EQ(result.cached_tokens, start / 4 * 4) << start;  // whole pages before logprob_start_len
      ASSERT_EQ(result.input_logprobs.size(), static_cast<size_t>(29 - start)) << start;
      for (size_t i = 0; i < result.input_logprobs.size(); ++i) {
        const int64_t position = start + static_cast<int64_t>(i);  // whose logits score token position + 1
        const std::vector<double>& expected = reference[static_cast<size_t>(position)];
        const PositionLogprobs& got = result.input_logprobs[i];
        EXPECT_NEAR(got.logprob, expected[static_cast<size_t>(prompt[static_cast<size_t>(position) + 1])], 1e-5)
            << position;
        ASSERT_EQ(got.top.size(), 3u);
        EXPECT_EQ(got.top[0].first, std::max_element(expected.begin(), expected.end()) - expected.begin());
        for (const auto& [id, logprob] : got.top) EXPECT_NEAR(logprob, expected[static_cast<size_t>(id)], 1e-5);
        ASSERT_EQ(got.ids.size(), 2u);
        EXPECT_NEAR(got.ids[1].second, expected[200], 1e-5);
      }
      if (start == 10) {  // max_new_tokens 0: scored, not sampled
        EXPECT_TRUE(result.output_ids.empty());
        EXPECT_EQ(result.finish_reason, FinishReason::Length);
      } else {  // the first output token's logprob comes from the last prompt position
        ASSERT_EQ(result.output_ids.size(), 3u);
        EXPECT_NEAR(result.output_logprobs[0], reference[29][static_cast<size_t>(result.output_ids[0])], 1e-5);
        ASSERT_EQ(result.output_ids_logprobs.size(), 3u);
        EXPECT_NEAR(result.output_ids_logprobs[0][0].second, reference[29][5], 1e-5);
      }
    }
  }
}

}  // namespace
}  // namespace fp4serve::testing_support
