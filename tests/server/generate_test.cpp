// /generate end to end on a real server: shapes of the answer, batch and n, streaming, stop conditions, logprobs,
// and determinism of a seeded request whatever else shares the batch.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;

const std::vector<int> kPrompt = {72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101,
                                  32, 113, 117, 105, 99, 107};

TEST(Generate, TextAndIdsGiveTheSameAnswerWithCompleteMetaInfo) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json sampling = {{"max_new_tokens", 7}, {"temperature", 0}, {"ignore_eos", true}};
  int status = 0;
  const json by_text = post_json(client, "/generate", {{"text", "Hello"}, {"sampling_params", sampling}}, &status);
  ASSERT_EQ(status, 200) << by_text.dump();
  const json& meta = by_text["meta_info"];
  EXPECT_EQ(by_text["output_ids"].size(), 7u);
  EXPECT_TRUE(by_text["text"].is_string());
  EXPECT_EQ(meta["completion_tokens"], 7);
  EXPECT_EQ(meta["prompt_tokens"], 5);  // the synthetic tokenizer has one token per byte
  EXPECT_EQ(meta["finish_reason"], json({{"type", "length"}, {"length", 7}}));
  EXPECT_EQ(meta["weight_version"], "default");
  EXPECT_TRUE(meta["id"].is_string());
  EXPECT_GE(meta["e2e_latency"].get<double>(), 0.0);
  EXPECT_EQ(meta["cached_tokens"], 0);

  // The synthetic tokenizer maps byte b to id b, so these ids are "Hello".
  const json by_ids = post_json(client, "/generate",
                                {{"input_ids", {72, 101, 108, 108, 111}}, {"sampling_params", sampling}});
  EXPECT_EQ(by_ids["output_ids"], by_text["output_ids"]);
  EXPECT_EQ(by_ids["text"], by_text["text"]);

  const json nothing = post_json(client, "/generate", {{"text", "Hello"}, {"sampling_params", {{"max_new_tokens", 0}}}});
  EXPECT_EQ(nothing["output_ids"].size(), 0u);
  EXPECT_EQ(nothing["meta_info"]["finish_reason"]["type"], "length");
}

TEST(Generate, BatchAndSamplesComeBackInOrderAndReproducibly) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json body = {{"text", {"First prompt", "Second prompt"}},
                     {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 1.0}, {"n", 2}, {"seed", 7},
                                          {"ignore_eos", true}}},
                     {"rid", {"r1", "r2"}}};
  int status = 0;
  const json first = post_json(client, "/generate", body, &status);
  ASSERT_EQ(status, 200) << first.dump();
  ASSERT_TRUE(first.is_array());
  ASSERT_EQ(first.size(), 4u);
  EXPECT_EQ(first[0]["meta_info"]["id"], "r1");
  EXPECT_EQ(first[1]["meta_info"]["id"], "r1");
  EXPECT_EQ(first[2]["meta_info"]["id"], "r2");
  EXPECT_EQ(first[0]["meta_info"]["prompt_tokens"], 12);
  EXPECT_EQ(first[2]["meta_info"]["prompt_tokens"], 13);
  // Sample i uses seed + i: a lone request with seed 8 reproduces the second sample of the first prompt.
  const json lone = post_json(client, "/generate", {{"text", "First prompt"},
                                                    {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 1.0},
                                                                         {"seed", 8}, {"ignore_eos", true}}}});
  EXPECT_EQ(lone["output_ids"], first[1]["output_ids"]);
  const json again = post_json(client, "/generate", body);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(again[i]["output_ids"], first[i]["output_ids"]) << i;
}

TEST(Generate, StreamingChunksAreCumulativeAndEndWithTheFullAnswer) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json body = {{"input_ids", kPrompt},
                     {"sampling_params", {{"max_new_tokens", 9}, {"temperature", 0}, {"ignore_eos", true}}},
                     {"return_logprob", true}};
  const json whole = post_json(client, "/generate", body);
  json stream_body = body;
  stream_body["stream"] = true;
  int status = 0;
  const std::vector<std::string> events = post_sse(client, "/generate", stream_body, &status);
  ASSERT_EQ(status, 200);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  size_t previous_ids = 0;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_GE(chunk["output_ids"].size(), previous_ids);
    previous_ids = chunk["output_ids"].size();
    EXPECT_EQ(chunk["meta_info"]["weight_version"], "default");
    if (i + 2 < events.size()) {
      EXPECT_TRUE(chunk["meta_info"]["finish_reason"].is_null());
    }
  }
  const json last = json::parse(events[events.size() - 2]);
  EXPECT_EQ(last["output_ids"], whole["output_ids"]);
  EXPECT_EQ(last["text"], whole["text"]);
  EXPECT_EQ(last["meta_info"]["output_token_logprobs"], whole["meta_info"]["output_token_logprobs"]);
  EXPECT_EQ(last["meta_info"]["finish_reason"]["type"], "length");
}

TEST(Generate, StopTokenIdsAndStopStringsEndTheOutputWhereTheyMatch) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json greedy = {{"max_new_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
  const json full = post_json(client, "/generate", {{"input_ids", kPrompt}, {"sampling_params", greedy}});
  const std::vector<int> ids = full["output_ids"];
  ASSERT_EQ(ids.size(), 24u);

  // Stop token: the output ends with (and includes) the first occurrence of ids[5].
  json with_stop_id = greedy;
  with_stop_id["stop_token_ids"] = {ids[5]};
  const json stopped = post_json(client, "/generate", {{"input_ids", kPrompt}, {"sampling_params", with_stop_id}});
  const size_t first = static_cast<size_t>(std::find(ids.begin(), ids.end(), ids[5]) - ids.begin());
  EXPECT_EQ(stopped["output_ids"], json(std::vector<int>(ids.begin(), ids.begin() + first + 1)));
  EXPECT_EQ(stopped["meta_info"]["finish_reason"], json({{"type", "stop"}, {"matched", ids[5]}}));

  // Stop string: the text ends just before the first occurrence of a piece of the full text.
  const std::string text = full["text"];
  size_t start = text.size() / 2;
  while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) ++start;
  size_t end = start + 1;
  while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
  ASSERT_LT(start, text.size()) << "the greedy text is too short to pick a stop string from";
  const std::string stop = text.substr(start, end - start);
  json with_stop_string = greedy;
  with_stop_string["stop"] = stop;
  for (bool stream : {false, true}) {
    const json body = {{"input_ids", kPrompt}, {"sampling_params", with_stop_string}, {"stream", stream}};
    json result;
    if (stream) {
      const std::vector<std::string> events = post_sse(client, "/generate", body);
      result = json::parse(events[events.size() - 2]);
    } else {
      result = post_json(client, "/generate", body);
    }
    EXPECT_EQ(result["text"], text.substr(0, text.find(stop))) << "stream " << stream;
    EXPECT_EQ(result["meta_info"]["finish_reason"], json({{"type", "stop"}, {"matched", stop}}));
    EXPECT_LE(result["output_ids"].size(), ids.size());
  }
}

TEST(Generate, TopLogprobsListTheChosenGreedyTokenFirst) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json result = post_json(client, "/generate",
                                {{"input_ids", kPrompt},
                                 {"sampling_params", {{"max_new_tokens", 5}, {"temperature", 0}, {"ignore_eos", true}}},
                                 {"return_logprob", true},
                                 {"top_logprobs_num", 3}});
  const json& meta = result["meta_info"];
  ASSERT_EQ(meta["output_top_logprobs"].size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    const json& top = meta["output_top_logprobs"][i];
    ASSERT_EQ(top.size(), 3u);
    EXPECT_GE(top[0][0].get<double>(), top[1][0].get<double>());
    EXPECT_GE(top[1][0].get<double>(), top[2][0].get<double>());
    EXPECT_EQ(top[0][1], meta["output_token_logprobs"][i][1]);  // greedy takes the most probable token
    EXPECT_EQ(top[0][0], meta["output_token_logprobs"][i][0]);
    EXPECT_LT(top[0][0].get<double>(), 0.0);
  }
}

// The guarantee on CPU: a request's tokens and logprobs depend only on its prompt, parameters and seed, not on the
// other requests in the batch (the forward pass is row-independent and sampling is keyed by (seed, index)).
TEST(Generate, SeededRequestIsBitwiseTheSameWhateverElseRuns) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json request = {{"input_ids", kPrompt},
                        {"sampling_params", {{"max_new_tokens", 12}, {"temperature", 0.9}, {"top_p", 0.95},
                                             {"seed", 1234}, {"ignore_eos", true}}},
                        {"return_logprob", true}};
  const json alone = post_json(client, "/generate", request);
  std::vector<std::future<json>> others;
  for (int i = 0; i < 6; ++i) {
    others.push_back(std::async(std::launch::async, [&server, i] {
      httplib::Client other = server.client();
      return post_json(other, "/generate",
                       {{"text", std::string(static_cast<size_t>(5 + 7 * i), static_cast<char>('a' + i))},
                        {"sampling_params", {{"max_new_tokens", 10 + i}, {"temperature", 1.0}, {"seed", i},
                                             {"ignore_eos", true}}}});
    }));
  }
  const json crowded = post_json(client, "/generate", request);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(others[i].get()["meta_info"]["completion_tokens"], 10 + i);
  EXPECT_EQ(crowded["output_ids"], alone["output_ids"]);
  EXPECT_EQ(crowded["meta_info"]["output_token_logprobs"], alone["meta_info"]["output_token_logprobs"]);
}

// serve --deterministic (SGLang's --enable-deterministic-inference), reported by /get_server_info, with prompts
// chunked 3 tokens at a time: a request with prompt logprobs is bitwise its lone run while requests that share its
// prefix (prefix-cache hits) and others run beside it.
TEST(Generate, DeterministicServerKeepsARequestBitwiseWhateverRunsBesideIt) {
  ServerProcess server(models().a, {"--deterministic", "--chunked-prefill-size", "3", "--page-size", "4"});
  httplib::Client client = server.client();
  EXPECT_EQ(get_json(client, "/get_server_info")["enable_deterministic_inference"], true);
  // Prompt logprobs from position 10 on: the prefix cache may serve the two whole pages before it.
  auto request = [](std::vector<int> prompt, int seed, int logprob_start_len) {
    return json{{"input_ids", std::move(prompt)},
                {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0.8}, {"seed", seed},
                                     {"ignore_eos", true}}},
                {"return_logprob", true},
                {"logprob_start_len", logprob_start_len},
                {"top_logprobs_num", 2}};
  };
  const json alone = post_json(client, "/generate", request(kPrompt, 99, 10));
  ASSERT_EQ(alone["output_ids"].size(), 8u) << alone.dump();
  std::vector<std::future<json>> others;
  for (int i = 0; i < 6; ++i) {
    std::vector<int> prompt(kPrompt.begin(), kPrompt.begin() + 8 + 2 * i);  // shares kPrompt's first pages
    prompt.push_back(65 + i);
    others.push_back(std::async(std::launch::async, [&server, &request, prompt, i] {
      httplib::Client other = server.client();
      return post_json(other, "/generate", request(prompt, i, -1));
    }));
  }
  const json crowded = post_json(client, "/generate", request(kPrompt, 99, 10));
  int cached = 0;
  for (auto& other : others) cached += other.get()["meta_info"]["cached_tokens"].get<int>();
  EXPECT_GT(cached + crowded["meta_info"]["cached_tokens"].get<int>(), 0) << "no prefix-cache hit was provoked";
  EXPECT_EQ(crowded["output_ids"], alone["output_ids"]);
  for (const char* key : {"output_token_logprobs", "input_token_logprobs", "output_top_logprobs"})
    EXPECT_EQ(crowded["meta_info"][key], alone["meta_info"][key]) << key;
}

TEST(Generate, PrefixCacheReportsCachedTokensAndChangesNothing) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  std::vector<int> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(65 + i % 26);
  const Greedy cold = greedy_generate(client, prompt, 8);
  const json warm = post_json(client, "/generate",
                              {{"input_ids", prompt},
                               {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}},
                               {"return_logprob", true}});
  EXPECT_EQ(warm["meta_info"]["cached_tokens"], 32);  // whole 16-token pages, never the last prompt token
  const Greedy again = greedy_generate(client, prompt, 8);
  EXPECT_EQ(again.ids, cold.ids);
  EXPECT_EQ(again.logprobs, cold.logprobs);
}

}  // namespace
}  // namespace fp4serve::test
