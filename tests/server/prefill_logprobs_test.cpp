// Over HTTP: --chunked-prefill-size (prompts split over steps change no answer), prompt logprobs on /generate
// (logprob_start_len, input_top_logprobs, token_ids_logprob) and OpenAI completions (echo, prompt_logprobs,
// return_tokens_as_token_ids), checked against each other and against what the server computes for outputs.
#include <gtest/gtest.h>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;

std::vector<int> long_prompt(size_t length) {
  std::vector<int> prompt;
  for (size_t i = 0; i < length; ++i) prompt.push_back(static_cast<int>(33 + (i * 7) % 90));
  return prompt;
}

TEST(ChunkedPrefill, SplittingLongPromptsChangesNoAnswer) {
  ServerProcess chunked(models().a, {"--chunked-prefill-size", "5", "--page-size", "4"});
  ServerProcess whole(models().a, {"--chunked-prefill-size", "-1", "--page-size", "4"});
  httplib::Client chunked_client = chunked.client(), whole_client = whole.client();
  EXPECT_EQ(get_json(chunked_client, "/get_server_info")["chunked_prefill_size"], 5);
  const json request = {{"input_ids", long_prompt(61)},
                        {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0.9}, {"seed", 11},
                                             {"ignore_eos", true}}},
                        {"return_logprob", true},
                        {"logprob_start_len", 0}};
  int status = 0;
  const json split = post_json(chunked_client, "/generate", request, &status);
  ASSERT_EQ(status, 200) << split.dump();
  const json unsplit = post_json(whole_client, "/generate", request);
  EXPECT_EQ(split["output_ids"], unsplit["output_ids"]);
  EXPECT_EQ(split["meta_info"]["output_token_logprobs"], unsplit["meta_info"]["output_token_logprobs"]);
  EXPECT_EQ(split["meta_info"]["input_token_logprobs"], unsplit["meta_info"]["input_token_logprobs"]);
  EXPECT_EQ(split["meta_info"]["input_token_logprobs"].size(), 61u);

  std::string log;
  EXPECT_NE(run_cli({"serve", "--model-path", models().a.string(), "--chunked-prefill-size", "0"}, &log), 0);
  EXPECT_NE(log.find("--chunked-prefill-size"), std::string::npos) << log;
}

json generate(httplib::Client& client, const std::vector<int>& prompt, int max_new_tokens, json extra) {
  json body = {{"input_ids", prompt},
               {"sampling_params", {{"max_new_tokens", max_new_tokens}, {"temperature", 0}, {"ignore_eos", true}}},
               {"return_logprob", true}};
  body.update(extra);
  int status = 0;
  json result = post_json(client, "/generate", body, &status);
  EXPECT_EQ(status, 200) << result.dump();
  return result;
}

TEST(PromptLogprobs, GenerateReturnsInputLogprobsThatAgreeWithOutputLogprobs) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const std::vector<int> prompt = long_prompt(40);
  const json full = generate(client, prompt, 3,
                             {{"logprob_start_len", 0}, {"top_logprobs_num", 2}, {"token_ids_logprob", {65, 66}}});
  const json& meta = full["meta_info"];
  ASSERT_EQ(meta["input_token_logprobs"].size(), 40u);
  EXPECT_EQ(meta["input_token_logprobs"][0], json({nullptr, prompt[0], nullptr}));  // nothing predicts it
  EXPECT_TRUE(meta["input_top_logprobs"][0].is_null());
  EXPECT_TRUE(meta["input_token_ids_logprobs"][0].is_null());
  for (size_t i = 1; i < 40; ++i) {
    const json& entry = meta["input_token_logprobs"][i];
    EXPECT_EQ(entry[1], prompt[i]);
    EXPECT_LE(entry[0].get<double>(), 0.0);
    ASSERT_EQ(meta["input_top_logprobs"][i].size(), 2u);
    EXPECT_GE(meta["input_top_logprobs"][i][0][0].get<double>(), entry[0].get<double>());
    ASSERT_EQ(meta["input_token_ids_logprobs"][i].size(), 2u);
    EXPECT_EQ(meta["input_token_ids_logprobs"][i][1][1], 66);
  }
  ASSERT_EQ(meta["output_token_ids_logprobs"].size(), 3u);
  EXPECT_EQ(meta["output_token_ids_logprobs"][0][0][1], 65);

  // Scoring the prompt with its generated tokens appended (max_new_tokens 0) gives those tokens the logprobs they
  // had as outputs: the same positions' logits.
  std::vector<int> scored = prompt;
  for (const json& id : full["output_ids"]) scored.push_back(id.get<int>());
  const json score = generate(client, scored, 0, {{"logprob_start_len", 39}});
  EXPECT_TRUE(score["output_ids"].empty());
  const json& scored_logprobs = score["meta_info"]["input_token_logprobs"];
  ASSERT_EQ(scored_logprobs.size(), 4u);  // tokens 39 (null, SGLang's first entry) .. 42
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(scored_logprobs[i + 1][1], meta["output_token_logprobs"][i][1]);
    EXPECT_NEAR(scored_logprobs[i + 1][0].get<double>(), meta["output_token_logprobs"][i][0].get<double>(), 1e-6);
  }

  // Prefix-cache hits stop at logprob_start_len: the same logprobs, from whole pages before it.
  const json from_20 = generate(client, prompt, 3, {{"logprob_start_len", 20}});
  EXPECT_EQ(from_20["meta_info"]["cached_tokens"], 16);
  ASSERT_EQ(from_20["meta_info"]["input_token_logprobs"].size(), 20u);
  for (size_t i = 1; i < 20; ++i)
    EXPECT_EQ(from_20["meta_info"]["input_token_logprobs"][i], meta["input_token_logprobs"][20 + i]) << i;
  EXPECT_EQ(generate(client, prompt, 3, {{"logprob_start_len", 0}})["meta_info"]["input_token_logprobs"],
            meta["input_token_logprobs"]);
  // Unset: SGLang's default, the last prompt token only, nothing computed.
  EXPECT_EQ(generate(client, prompt, 1, json::object())["meta_info"]["input_token_logprobs"],
            json({{nullptr, prompt[39], nullptr}}));

  const json stream_body = {{"input_ids", prompt},
                            {"sampling_params", {{"max_new_tokens", 3}, {"temperature", 0}, {"ignore_eos", true}}},
                            {"return_logprob", true}, {"logprob_start_len", 0}, {"stream", true}};
  const std::vector<std::string> events = post_sse(client, "/generate", stream_body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(json::parse(events[events.size() - 2])["meta_info"]["input_token_logprobs"], meta["input_token_logprobs"]);

  for (const auto& [start, message] : {std::pair{40, "logprob_start_len 40 must be -1"},
                                       std::pair{-2, "'logprob_start_len' = -2 must be -1 or >= 0"}}) {
    int status = 0;
    const json bad = post_json(
        client, "/generate", {{"input_ids", prompt}, {"return_logprob", true}, {"logprob_start_len", start}}, &status);
    EXPECT_EQ(status, 400);
    EXPECT_NE(bad.dump().find(message), std::string::npos) << bad.dump();
  }
}

TEST(PromptLogprobs, CompletionsEchoThePromptWithItsLogprobsFirst) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const std::string prompt = "Hello, world";
  const std::vector<int> ids(prompt.begin(), prompt.end());  // the synthetic tokenizer: one id per byte
  const json reference = generate(client, ids, 3, {{"logprob_start_len", 0}});
  const json request = {{"prompt", prompt}, {"max_tokens", 3}, {"temperature", 0}, {"ignore_eos", true},
                        {"logprobs", 1}};
  const json plain = post_json(client, "/v1/completions", request);
  json echo_request = request;
  echo_request["echo"] = true;
  int status = 0;
  const json echoed = post_json(client, "/v1/completions", echo_request, &status);
  ASSERT_EQ(status, 200) << echoed.dump();
  const json& choice = echoed["choices"][0];
  EXPECT_EQ(choice["text"], prompt + plain["choices"][0]["text"].get<std::string>());
  const json& logprobs = choice["logprobs"];
  ASSERT_EQ(logprobs["tokens"].size(), ids.size() + 3);
  EXPECT_TRUE(logprobs["token_logprobs"][0].is_null());
  EXPECT_TRUE(logprobs["top_logprobs"][0].is_null());
  for (size_t i = 1; i < ids.size(); ++i)
    EXPECT_EQ(logprobs["token_logprobs"][i], reference["meta_info"]["input_token_logprobs"][i][0]) << i;
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(logprobs["token_logprobs"][ids.size() + i], plain["choices"][0]["logprobs"]["token_logprobs"][i]);
  EXPECT_EQ(logprobs["text_offset"][ids.size()], prompt.size());

  // Scoring only: echo with max_tokens 0, tokens shown as ids, vLLM's prompt_logprobs.
  const json scored = post_json(client, "/v1/completions",
                                {{"prompt", prompt}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 0},
                                 {"prompt_logprobs", 2}, {"return_tokens_as_token_ids", true}});
  const json& only = scored["choices"][0];
  EXPECT_EQ(only["text"], prompt);
  ASSERT_EQ(only["logprobs"]["tokens"].size(), ids.size());
  EXPECT_EQ(only["logprobs"]["tokens"][1], "token_id:" + std::to_string(ids[1]));
  const json& prompt_logprobs = only["prompt_logprobs"];
  ASSERT_EQ(prompt_logprobs.size(), ids.size());
  EXPECT_TRUE(prompt_logprobs[0].is_null());
  for (size_t i = 1; i < ids.size(); ++i) {
    const json& own = prompt_logprobs[i][std::to_string(ids[i])];
    EXPECT_EQ(own["logprob"], reference["meta_info"]["input_token_logprobs"][i][0]);
    EXPECT_GE(own["rank"].get<int>(), 1);
    EXPECT_EQ(own["decoded_token"], "token_id:" + std::to_string(ids[i]));
    int n_rank_one = 0;
    for (const auto& [id, entry] : prompt_logprobs[i].items()) n_rank_one += entry["rank"] == 1;
    EXPECT_EQ(n_rank_one, 1);
    EXPECT_LE(prompt_logprobs[i].size(), 3u);
  }

  json stream_request = echo_request;
  stream_request["stream"] = true;
  const std::vector<std::string> events = post_sse(client, "/v1/completions", stream_request);
  std::string text;
  for (const std::string& event : events)
    if (event != "[DONE]") text += json::parse(event)["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(json::parse(events[0])["choices"][0]["text"], prompt);
  EXPECT_EQ(text, choice["text"]);
}

// processed = log_softmax(logits / T): from the raw logprobs of every token (token_ids_logprob over the whole
// vocabulary of 259), the processed ones follow without the server's help.
TEST(PromptLogprobs, ProcessedLogprobsAreTheTemperedSoftmaxOfTheRawOnes) {
  ServerProcess raw(models().a, {"--logprobs-mode", "raw"});
  ServerProcess processed(models().a);
  httplib::Client raw_client = raw.client(), processed_client = processed.client();
  std::vector<int> all_ids;
  for (int i = 0; i < 259; ++i) all_ids.push_back(i);
  const double temperature = 0.5;
  const json body = {{"input_ids", long_prompt(10)},
                     {"sampling_params", {{"max_new_tokens", 4}, {"temperature", temperature}, {"seed", 3},
                                          {"ignore_eos", true}}},
                     {"return_logprob", true}, {"logprob_start_len", 5}, {"token_ids_logprob", all_ids}};
  const json r = post_json(raw_client, "/generate", body);
  const json p = post_json(processed_client, "/generate", body);
  EXPECT_EQ(get_json(raw_client, "/get_server_info")["logprobs_mode"], "raw");
  EXPECT_EQ(r["output_ids"], p["output_ids"]);  // sampling does not depend on the mode
  auto check = [&](const json& raw_all, const json& raw_entry, const json& processed_entry) {
    double sum = 0;
    for (const json& e : raw_all) sum += std::exp(e[0].get<double>() / temperature);
    const int token = raw_entry[1].get<int>();
    EXPECT_NEAR(processed_entry[0].get<double>(), raw_all[token][0].get<double>() / temperature - std::log(sum), 1e-4);
    EXPECT_NEAR(raw_entry[0].get<double>(), raw_all[token][0].get<double>(), 1e-7);
  };
  for (size_t i = 0; i < 4; ++i)
    check(r["meta_info"]["output_token_ids_logprobs"][i], r["meta_info"]["output_token_logprobs"][i],
          p["meta_info"]["output_token_logprobs"][i]);
  for (size_t i = 1; i < 5; ++i)
    check(r["meta_info"]["input_token_ids_logprobs"][i], r["meta_info"]["input_token_logprobs"][i],
          p["meta_info"]["input_token_logprobs"][i]);
}

}  // namespace
}  // namespace fp4serve::test
