// Routing replay and weight versions in the engine: returned routing equals that of one fresh forward over the
// same tokens (its own KV cache, read through the model's observer) alone, in a batch, on prefix-cache hits, after
// preemption and after retraction; the prefix cache never serves a prefix across weight versions; output tokens
// carry the version that produced them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "engine/engine.h"
#include "tests/model/test_util.h"

namespace fp4serve::testing_support {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

class RoutingReplayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("routing_replay_test");
    model_dir_ = new std::filesystem::path(synth_tiny(*dir_));
    reference_ = load_model(*model_dir_).release();
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete model_dir_;
    delete dir_;
  }
  static Engine make_engine(EngineOptions options = {}) {
    options.record_routed_experts = true;
    return Engine(load_model(*model_dir_), options);
  }

  // What a result's routing must be: the fresh routing of prompt + output but the last token, from start_len on.
  static std::vector<int32_t> expected_routing(const GenerateRequest& request, const GenerateResult& result) {
    std::vector<int32_t> tokens = request.input_ids;
    tokens.insert(tokens.end(), result.output_ids.begin(), result.output_ids.end());
    tokens.pop_back();
    const std::vector<int32_t> all = fresh_routing(*reference_, tokens);
    const ModelConfig& c = reference_->config();
    const int64_t row = int64_t{c.num_hidden_layers} * c.num_experts_per_tok;
    return {all.begin() + request.routed_experts_start_len * row, all.end()};
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::filesystem::path* model_dir_ = nullptr;
  static inline Qwen3Model* reference_ = nullptr;
};

const std::vector<int32_t> kPrompt{72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100};  // "Hello, world"

GenerateRequest routed_request(std::vector<int32_t> prompt, int64_t max_new_tokens, uint64_t seed) {
  return {.input_ids = std::move(prompt),
          .sampling = {.temperature = 0.9f, .seed = seed},
          .max_new_tokens = max_new_tokens,
          .return_routed_experts = true};
}

TEST_F(RoutingReplayTest, RoutingEqualsAFreshForwardOverPromptAndOutput) {
  Engine engine = make_engine();
  GenerateRequest whole = routed_request(kPrompt, 9, 1);
  GenerateRequest tail = whole;
  tail.routed_experts_start_len = 5;
  GenerateRequest prompt_only = whole;
  prompt_only.routed_experts_start_len = static_cast<int64_t>(kPrompt.size());
  GenerateRequest without = whole;
  without.return_routed_experts = false;
  const std::vector<GenerateResult> results = engine.generate({whole, tail, prompt_only, without});
  const int64_t row = 4 * 2;  // the tiny preset: 4 MoE layers, top-2
  ASSERT_EQ(results[0].output_ids.size(), 9u);
  EXPECT_EQ(static_cast<int64_t>(results[0].routed_experts.size()), (12 + 9 - 1) * row);
  EXPECT_EQ(results[0].routed_experts, expected_routing(whole, results[0]));
  EXPECT_EQ(static_cast<int64_t>(results[1].routed_experts.size()), (12 + 9 - 1 - 5) * row);
  EXPECT_EQ(results[1].routed_experts, expected_routing(tail, results[1]));
  EXPECT_EQ(static_cast<int64_t>(results[2].routed_experts.size()), (9 - 1) * row);
  EXPECT_EQ(results[2].routed_experts, expected_routing(prompt_only, results[2]));
  EXPECT_TRUE(results[3].routed_experts.empty());
  for (int32_t id : results[0].routed_experts) EXPECT_TRUE(id >= 0 && id < 8) << id;
}

TEST_F(RoutingReplayTest, PrefixCacheHitsPreemptionAndRetractionKeepTheRoutingRight) {
  std::vector<GenerateRequest> requests;
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> prompt = kPrompt;
    prompt.resize(kPrompt.size() - static_cast<size_t>(i));
    requests.push_back(routed_request(prompt, 10, 100 + i));
  }
  // 6 pages of 4 tokens for 5 sequences of up to 22 tokens: sequences are preempted and re-prefilled.
  Engine small = make_engine({.kv_cache_tokens = 24, .page_size = 4});
  const std::vector<GenerateResult> together = small.generate(requests);
  EXPECT_GT(small.scheduler().n_preemptions(), 0);
  for (size_t i = 0; i < requests.size(); ++i)
    EXPECT_EQ(together[i].routed_experts, expected_routing(requests[i], together[i])) << "request " << i;

  // The same prompt again takes its first pages, with their recorded routing, from the prefix cache.
  const GenerateResult again = small.generate({requests[0]})[0];
  EXPECT_EQ(again.cached_tokens, 8);
  EXPECT_EQ(again.routed_experts, expected_routing(requests[0], again));

  // Retracted mid-generation (KV freed), then prefilled again over prompt and output so far.
  Engine engine = make_engine({.page_size = 4});
  const int64_t a = engine.add_request(requests[1]);
  const int64_t b = engine.add_request(requests[2]);
  for (int i = 0; i < 4; ++i) engine.step();
  engine.retract_all();
  EXPECT_TRUE(engine.scheduler().running().empty());
  EXPECT_EQ(engine.scheduler().waiting().size(), 2u);
  while (engine.has_unfinished()) engine.step();
  const GenerateResult retracted_a = engine.take_result(a), retracted_b = engine.take_result(b);
  EXPECT_EQ(retracted_a.output_ids, together[1].output_ids);  // sampling depends on seed and index only
  EXPECT_EQ(retracted_a.routed_experts, expected_routing(requests[1], retracted_a));
  EXPECT_EQ(retracted_b.routed_experts, expected_routing(requests[2], retracted_b));
  EXPECT_GT(retracted_a.cached_tokens, 0);  // its computed pages went to the prefix cache when it was retracted
}

TEST_F(RoutingReplayTest, AnAbortedRequestReturnsTheRoutingOfWhatItComputed) {
  Engine engine = make_engine();
  const GenerateRequest request = routed_request(kPrompt, 50, 3);
  const int64_t id = engine.add_request(request);
  for (int i = 0; i < 3; ++i) engine.step();
  engine.abort(id);
  const GenerateResult aborted = engine.take_result(id);
  ASSERT_EQ(aborted.output_ids.size(), 3u);
  EXPECT_EQ(aborted.routed_experts, expected_routing(request, aborted));
  const int64_t waiting = engine.add_request(request);  // never scheduled: it holds no KV to read routing from
  engine.abort(waiting);
  EXPECT_TRUE(engine.take_result(waiting).routed_experts.empty());
}

TEST_F(RoutingReplayTest, PrefixCacheIsKeyedByWeightVersion) {
  Engine engine = make_engine({.page_size = 4, .weight_version = "v1"});
  const GenerateRequest request = routed_request(kPrompt, 4, 7);
  const GenerateResult first = engine.generate({request})[0];
  EXPECT_EQ(first.cached_tokens, 0);
  EXPECT_EQ(engine.generate({request})[0].cached_tokens, 8);
  engine.set_weight_version("v2");  // same weights here: only the label differs, and that is enough
  const GenerateResult under_v2 = engine.generate({request})[0];
  EXPECT_EQ(under_v2.cached_tokens, 0);
  EXPECT_EQ(under_v2.output_ids, first.output_ids);
  EXPECT_EQ(under_v2.weight_version_spans, (std::vector<WeightVersionSpan>{{"v2", 0, 4}}));
  EXPECT_EQ(engine.generate({request})[0].cached_tokens, 8);  // cached again, now under v2
  engine.set_weight_version("v1");
  EXPECT_EQ(engine.generate({request})[0].cached_tokens, 8);  // v1's pages were still there
}

TEST_F(RoutingReplayTest, TokensCarryTheVersionThatProducedThemAndMixedKvIsNotCached) {
  Engine engine = make_engine({.page_size = 4, .weight_version = "v1"});
  const GenerateRequest request = routed_request(kPrompt, 6, 9);
  const int64_t id = engine.add_request(request);
  for (int i = 0; i < 2; ++i) engine.step();
  engine.set_weight_version("v2");  // as an update while paused in place does: the sequence keeps its v1 KV
  while (engine.has_unfinished()) engine.step();
  const GenerateResult spanning = engine.take_result(id);
  EXPECT_EQ(spanning.weight_version, "v2");
  EXPECT_EQ(spanning.weight_version_spans, (std::vector<WeightVersionSpan>{{"v1", 0, 2}, {"v2", 2, 6}}));
  // Its KV mixes versions: nothing of it was cached under v2 (v1's prompt pages were, under v1).
  EXPECT_EQ(engine.generate({request})[0].cached_tokens, 0);
  EXPECT_TRUE(engine.generate({routed_request(kPrompt, 0, 1)})[0].weight_version_spans.empty());
}

TEST_F(RoutingReplayTest, RejectsRoutingRequestsItCannotServe) {
  Engine plain(load_model(*model_dir_), {});
  EXPECT_THAT([&] { plain.add_request(routed_request(kPrompt, 2, 0)); },
              ThrowsMessage<Error>(HasSubstr("return_routed_experts needs routing to be recorded")));
  Engine engine = make_engine();
  GenerateRequest too_far = routed_request(kPrompt, 2, 0);
  too_far.routed_experts_start_len = 13;
  EXPECT_THAT([&] { engine.add_request(too_far); },
              ThrowsMessage<Error>(HasSubstr("routed_experts_start_len 13 must be in [0, 12]")));
  TempDir dense_dir("routing_replay_dense");
  EXPECT_THAT([&] { Engine(load_model(synth_tiny(dense_dir, "qwen3")), {.record_routed_experts = true}); },
              ThrowsMessage<Error>(HasSubstr("the model has no experts")));
}

TEST(RoutingTable, UnrecordedLayersReadMinusOneAndRowsFollowThePageTable) {
  RoutingTable table(/*n_pages=*/3, /*page_size=*/2, /*n_layers=*/2, /*top_k=*/2);
  const std::vector<int32_t> pages{2, 0};  // positions 0-1 in page 2, 2-3 in page 0
  const std::vector<int64_t> slots{table.slot(pages, 1), table.slot(pages, 2)};
  EXPECT_EQ(slots, (std::vector<int64_t>{5, 0}));
  const std::vector<int32_t> ids{7, 3, 1, 4};  // [2 rows, top-2] at layer 1
  table.record(1, slots, ids.data());
  EXPECT_EQ(table.gather(pages, 1, 3), (std::vector<int32_t>{-1, -1, 7, 3, -1, -1, 1, 4}));
  EXPECT_THAT([&] { table.slot(pages, 4); }, ThrowsMessage<Error>(HasSubstr("position 4 lies outside")));
}

}  // namespace
}  // namespace fp4serve::testing_support
