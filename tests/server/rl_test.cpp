// What RL trainers ask of the server, end to end: routing replay on /generate and the OpenAI endpoints (streaming
// too) equal to one fresh forward through the model API, pause modes (abort, retract, in_place) with weight updates
// while paused, /update_weight_version, per-token weight_version_spans, and a prefix cache that never crosses
// weight versions.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "common/base64.h"
#include "common/error.h"
#include "server/http_util.h"
#include "server_fixture.h"
#include "tests/model/test_util.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;

std::vector<int> prompt_of(int seed, int length) {
  std::vector<int> ids;
  for (int i = 0; i < length; ++i) ids.push_back(32 + (seed * 17 + i * 11) % 90);
  return ids;
}

json greedy_body(const std::vector<int>& prompt, int max_new_tokens) {
  return {{"input_ids", prompt},
          {"sampling_params", {{"max_new_tokens", max_new_tokens}, {"temperature", 0}, {"ignore_eos", true}}},
          {"return_logprob", true}};
}

json post_ok(httplib::Client& client, const std::string& path, const json& body) {
  int status = 0;
  const json answer = post_json(client, path, body, &status);
  EXPECT_EQ(status, 200) << path << ": " << answer.dump();
  return answer;
}

std::vector<int32_t> decode_routing(const json& value) {
  const std::vector<uint8_t> bytes = base64_decode(value.get<std::string>(), "routed_experts");
  std::vector<int32_t> ids(bytes.size() / 4);
  std::memcpy(ids.data(), bytes.data(), ids.size() * 4);
  return ids;
}

// The routing a response must carry: one fresh forward over prompt + output but the last token.
std::vector<int32_t> fresh_routing_of(const std::vector<int>& prompt, const json& output_ids, int64_t start_len = 0) {
  static const std::unique_ptr<Qwen3Model> model = testing_support::load_model(models().a);
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  for (const json& id : output_ids) tokens.push_back(id.get<int32_t>());
  tokens.pop_back();
  const std::vector<int32_t> all = testing_support::fresh_routing(*model, tokens);
  const int64_t row = int64_t{model->config().num_hidden_layers} * model->config().num_experts_per_tok;
  return {all.begin() + start_len * row, all.end()};
}

json stream_body(const std::vector<int>& prompt, int max_new_tokens) {
  json body = greedy_body(prompt, max_new_tokens);
  body["stream"] = true;
  return body;
}

json spans(std::initializer_list<std::tuple<std::string, int, int>> list) {
  json out = json::array();
  for (const auto& [version, start, end] : list) out.push_back({{"version", version}, {"start", start}, {"end", end}});
  return out;
}

TEST(RoutedExperts, WireFormIsBase64OfLittleEndianInt32) {
  EXPECT_EQ(base64_encode(std::vector<uint8_t>{'f', 'o', 'o', 'b', 'a'}), "Zm9vYmE=");  // RFC 4648 test vectors
  EXPECT_EQ(base64_encode(std::vector<uint8_t>{'f'}), "Zg==");
  EXPECT_EQ(base64_decode("Zm9vYmFy", "x"), (std::vector<uint8_t>{'f', 'o', 'o', 'b', 'a', 'r'}));
  EXPECT_EQ(routed_experts_base64(std::vector<int32_t>{1, 258, -1}), "AQAAAAIBAAD/////");
  EXPECT_THROW(base64_decode("Zm9", "x"), Error);
  EXPECT_THROW(base64_decode("Zm9*", "x"), Error);
}

TEST(RoutedExperts, EveryEndpointReturnsTheRoutingOfOneFreshForward) {
  ServerProcess server(models().a, {"--enable-return-routed-experts"});
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(1, 21);  // one whole 16-token page: cached on the second request
  json body = greedy_body(prompt, 7);
  body["return_routed_experts"] = true;
  const json first = post_ok(client, "/generate", body);
  ASSERT_EQ(first["output_ids"].size(), 7u);
  const std::vector<int32_t> expected = fresh_routing_of(prompt, first["output_ids"]);
  EXPECT_EQ(expected.size(), (21u + 7 - 1) * 4 * 2);  // tokens - 1 rows of 4 layers x top-2
  EXPECT_EQ(decode_routing(first["meta_info"]["routed_experts"]), expected);
  EXPECT_EQ(first["meta_info"]["cached_tokens"], 0);

  const json cached = post_ok(client, "/generate", body);
  EXPECT_EQ(cached["meta_info"]["cached_tokens"], 16);
  EXPECT_EQ(decode_routing(cached["meta_info"]["routed_experts"]), expected);

  body["routed_experts_start_len"] = 21;
  EXPECT_EQ(decode_routing(post_ok(client, "/generate", body)["meta_info"]["routed_experts"]),
            fresh_routing_of(prompt, first["output_ids"], 21));
  body.erase("routed_experts_start_len");

  body["stream"] = true;
  const std::vector<std::string> events = post_sse(client, "/generate", body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_FALSE(json::parse(events.front())["meta_info"].contains("routed_experts"));  // only once it has ended
  EXPECT_EQ(decode_routing(json::parse(events[events.size() - 2])["meta_info"]["routed_experts"]), expected);

  const json completion = {{"prompt", prompt},      {"max_tokens", 7}, {"temperature", 0},
                           {"ignore_eos", true},    {"return_routed_experts", true}};
  EXPECT_EQ(decode_routing(post_ok(client, "/v1/completions", completion)["choices"][0]["routed_experts"]), expected);
  json streamed = completion;
  streamed["stream"] = true;
  const std::vector<std::string> chunks = post_sse(client, "/v1/completions", streamed);
  ASSERT_GE(chunks.size(), 2u);
  const json final_chunk = json::parse(chunks[chunks.size() - 2]);
  ASSERT_EQ(final_chunk["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(decode_routing(final_chunk["choices"][0]["routed_experts"]), expected);

  const json chat = post_ok(client, "/v1/chat/completions",
                            {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                             {"max_tokens", 5},
                             {"return_routed_experts", true}});
  const int64_t n_tokens = chat["usage"]["total_tokens"].get<int64_t>();
  EXPECT_EQ(static_cast<int64_t>(decode_routing(chat["choices"][0]["routed_experts"]).size()), (n_tokens - 1) * 8);

  int status = 0;
  body["routed_experts_start_len"] = 22;
  const json too_far = post_json(client, "/generate", body, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(too_far.dump().find("routed_experts_start_len 22 must be in [0, 21]"), std::string::npos) << too_far;
}

TEST(Pause, AbortEndsRunningRequestsAndUnknownModesAreRefused) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  BackgroundStream running(server, stream_body(prompt_of(2, 8), 3000));
  ASSERT_TRUE(eventually([&] { return running.started.load(); }));
  post_ok(client, "/pause_generation", {{"mode", "abort"}});
  running.thread.join();
  EXPECT_EQ(running.last["meta_info"]["finish_reason"]["type"], "abort");
  EXPECT_LT(running.last["meta_info"]["completion_tokens"].get<int>(), 3000);
  EXPECT_EQ(metric(client, "fp4serve_generation_paused"), 1);
  int status = 0;
  const json refused = post_json(client, "/pause_generation", {{"mode", "sleep"}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(refused.dump().find("field 'mode' = \\\"sleep\\\" is not a pause mode"), std::string::npos) << refused;
  post_ok(client, "/continue_generation", json::object());
  EXPECT_EQ(metric(client, "fp4serve_generation_paused"), 0);
}

TEST(Pause, RetractFreesTheKvThenTheRequestResumesUnchangedOrOnNewWeights) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(3, 20);
  const Greedy reference = greedy_generate(client, prompt, 600);
  post_ok(client, "/flush_cache", json::object());

  BackgroundStream same(server, stream_body(prompt, 600));
  ASSERT_TRUE(eventually([&] { return same.started.load(); }));
  post_ok(client, "/pause_generation", {{"mode", "retract"}});
  post_ok(client, "/continue_generation", json::object());
  same.thread.join();
  EXPECT_EQ(same.last["output_ids"].get<std::vector<int>>(), reference.ids);
  // Retraction offered its computed pages to the prefix cache, and its second prefill took them from there.
  EXPECT_GT(same.last["meta_info"]["cached_tokens"].get<int>(), 0);

  // A weight update while paused applies at once (nothing runs); the retracted request resumes on the new weights.
  BackgroundStream updated(server, stream_body(prompt_of(4, 20), 600));
  ASSERT_TRUE(eventually([&] { return updated.started.load(); }));
  post_ok(client, "/pause_generation", {{"mode", "retract"}});
  post_ok(client, "/update_weights_from_disk", {{"model_path", models().b.string()}, {"weight_version", "b-1"}});
  post_ok(client, "/continue_generation", json::object());
  updated.thread.join();
  const json& meta = updated.last["meta_info"];
  EXPECT_EQ(meta["weight_version"], "b-1");
  ASSERT_EQ(meta["weight_version_spans"].size(), 2u) << meta.dump();
  const int switched = meta["weight_version_spans"][0]["end"].get<int>();
  EXPECT_GT(switched, 0);
  EXPECT_EQ(meta["weight_version_spans"], spans({{"default", 0, switched}, {"b-1", switched, 600}}));
  EXPECT_EQ(meta["cached_tokens"], 0);  // the update flushed the cache
}

TEST(Pause, InPlaceRefusesAFlushingUpdateAndResumesFrozenRequestsOnTheNewWeights) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  BackgroundStream frozen(server, stream_body(prompt_of(5, 20), 600));
  ASSERT_TRUE(eventually([&] { return frozen.started.load(); }));
  post_ok(client, "/pause_generation", {{"mode", "in_place"}});
  int status = 0;
  const json refused =
      post_json(client, "/update_weights_from_disk", {{"model_path", models().b.string()}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(refused["success"], false);
  EXPECT_NE(refused["message"].get<std::string>().find("paused in_place and 1 running requests keep KV"),
            std::string::npos) << refused;
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "default");
  post_ok(client, "/update_weights_from_disk",
          {{"model_path", models().b.string()}, {"flush_cache", false}, {"weight_version", "b-1"}});
  post_ok(client, "/continue_generation", json::object());
  frozen.thread.join();
  const json& meta = frozen.last["meta_info"];
  ASSERT_EQ(meta["weight_version_spans"].size(), 2u) << meta.dump();
  const int switched = meta["weight_version_spans"][0]["end"].get<int>();
  EXPECT_EQ(meta["weight_version_spans"], spans({{"default", 0, switched}, {"b-1", switched, 600}}));
  EXPECT_EQ(meta["completion_tokens"], 600);
}

TEST(WeightVersion, UpdateWeightVersionChangesTheLabelOnly) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(6, 24);
  const Greedy before = greedy_generate(client, prompt, 8);
  const json answer = post_ok(client, "/update_weight_version", {{"new_version", "v7"}});
  EXPECT_EQ(answer["success"], true);
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "v7");
  const json after = post_ok(client, "/generate", greedy_body(prompt, 8));
  const Greedy relabelled = greedy_generate(client, prompt, 8);
  EXPECT_EQ(relabelled.ids, before.ids);
  EXPECT_EQ(relabelled.logprobs, before.logprobs);
  EXPECT_EQ(after["meta_info"]["weight_version"], "v7");
  EXPECT_EQ(after["meta_info"]["weight_version_spans"], spans({{"v7", 0, 8}}));
  EXPECT_EQ(after["meta_info"]["cached_tokens"], 0);  // prefixes cached under "default" are not v7's

  BackgroundStream running(server, stream_body(prompt, 3000));
  ASSERT_TRUE(eventually([&] { return running.started.load(); }));
  post_ok(client, "/update_weight_version", {{"new_version", "v8"}, {"abort_all_requests", true}});
  running.thread.join();
  EXPECT_EQ(running.last["meta_info"]["finish_reason"]["type"], "abort");

  int status = 0;
  const json missing = post_json(client, "/update_weight_version", {{"version", "v9"}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(missing.dump().find("'new_version'"), std::string::npos) << missing;
  json routed = greedy_body(prompt, 2);
  routed["return_routed_experts"] = true;
  const json not_recorded = post_json(client, "/generate", routed, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(not_recorded.dump().find("--enable-return-routed-experts"), std::string::npos) << not_recorded;
}

TEST(PrefixCache, AReloadToOtherWeightsUnderANewVersionNeverReusesOldPrefixes) {
  const std::vector<int> prompt = prompt_of(7, 40);
  json fresh_b;
  {
    ServerProcess server_b(models().b);
    httplib::Client client = server_b.client();
    fresh_b = post_ok(client, "/generate", greedy_body(prompt, 12));
  }
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  post_ok(client, "/generate", greedy_body(prompt, 12));
  EXPECT_EQ(post_ok(client, "/generate", greedy_body(prompt, 12))["meta_info"]["cached_tokens"], 32);
  post_ok(client, "/update_weights_from_disk",
          {{"model_path", models().b.string()}, {"flush_cache", false}, {"weight_version", "b-1"}});
  for (int expected_cached : {0, 32}) {  // then cached again, under b-1
    const json on_b = post_ok(client, "/generate", greedy_body(prompt, 12));
    EXPECT_EQ(on_b["meta_info"]["cached_tokens"], expected_cached);
    EXPECT_EQ(on_b["output_ids"], fresh_b["output_ids"]);
    EXPECT_EQ(on_b["meta_info"]["output_token_logprobs"], fresh_b["meta_info"]["output_token_logprobs"]);
  }
}

}  // namespace
}  // namespace fp4serve::test
