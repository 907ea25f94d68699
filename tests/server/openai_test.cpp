// The OpenAI-compatible endpoints and the informational ones, end to end on a real server.
#include <gtest/gtest.h>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;

TEST(OpenAi, CompletionsMatchGenerateAndStreamTheSameText) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json native = post_json(client, "/generate",
                                {{"text", "Once upon a time"},
                                 {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0}}},
                                 {"return_logprob", true}});
  int status = 0;
  const json completion = post_json(client, "/v1/completions",
                                    {{"model", "anything"}, {"prompt", "Once upon a time"}, {"max_tokens", 6},
                                     {"temperature", 0}, {"logprobs", 2}},
                                    &status);
  ASSERT_EQ(status, 200) << completion.dump();
  EXPECT_EQ(completion["object"], "text_completion");
  EXPECT_TRUE(completion["id"].get<std::string>().starts_with("cmpl-"));
  ASSERT_EQ(completion["choices"].size(), 1u);
  const json& choice = completion["choices"][0];
  EXPECT_EQ(choice["text"], native["text"]);
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["finish_reason"], "length");
  ASSERT_EQ(choice["logprobs"]["token_logprobs"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(choice["logprobs"]["token_logprobs"][i], native["meta_info"]["output_token_logprobs"][i][0]);
    EXPECT_EQ(choice["logprobs"]["top_logprobs"][i].size(), 2u);
  }
  EXPECT_EQ(completion["usage"], json({{"prompt_tokens", 16}, {"completion_tokens", 6}, {"total_tokens", 22},
                                       {"prompt_tokens_details", {{"cached_tokens", 0}}}}));
  EXPECT_EQ(completion["metadata"]["weight_version"], "default");

  const std::vector<std::string> events =
      post_sse(client, "/v1/completions",
               {{"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 0}, {"stream", true},
                {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(events.back(), "[DONE]");
  std::string streamed;
  std::string finish;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    for (const json& c : chunk["choices"]) {
      streamed += c["text"].get<std::string>();
      if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
    }
    if (chunk.contains("usage")) usage = chunk["usage"];
  }
  EXPECT_EQ(streamed, native["text"]);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(usage["completion_tokens"], 6);
}

TEST(OpenAi, ChatRendersTheTemplateAndStreamsDeltas) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json messages = {{{"role", "system"}, {"content", "Be brief."}},
                         {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}}};
  // The synthetic model's template is plain ChatML: the same prompt through /generate gives the same answer.
  const std::string rendered =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
  const json native = post_json(client, "/generate",
                                {{"text", rendered}, {"sampling_params", {{"max_new_tokens", 5}, {"temperature", 0}}}});
  int status = 0;
  const json chat = post_json(client, "/v1/chat/completions",
                              {{"messages", messages}, {"max_completion_tokens", 5}, {"temperature", 0},
                               {"logprobs", true}, {"top_logprobs", 2}},
                              &status);
  ASSERT_EQ(status, 200) << chat.dump();
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], native["text"]);
  EXPECT_EQ(chat["usage"]["prompt_tokens"], native["meta_info"]["prompt_tokens"]);
  const json& content_logprobs = chat["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content_logprobs.size(), native["output_ids"].size());
  EXPECT_EQ(content_logprobs[0]["top_logprobs"].size(), 2u);
  EXPECT_TRUE(content_logprobs[0]["bytes"].is_array());

  const std::vector<std::string> events = post_sse(
      client, "/v1/chat/completions", {{"messages", messages}, {"max_tokens", 5}, {"temperature", 0}, {"stream", true}});
  ASSERT_EQ(events.back(), "[DONE]");
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string streamed;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json delta = json::parse(events[i])["choices"][0]["delta"];
    if (delta.contains("content")) streamed += delta["content"].get<std::string>();
  }
  EXPECT_EQ(streamed, native["text"]);
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length");
}

TEST(OpenAi, NSamplesAndPromptListsGiveOneChoiceEach) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const json result = post_json(client, "/v1/completions",
                                {{"prompt", {"abc", "defg"}}, {"max_tokens", 3}, {"n", 2}, {"seed", 3}});
  ASSERT_EQ(result["choices"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(result["choices"][i]["index"], i);
  EXPECT_EQ(result["usage"]["prompt_tokens"], 3 + 4);  // each prompt counted once for its n samples
  EXPECT_EQ(result["usage"]["completion_tokens"], 12);
}

TEST(Info, ModelsModelInfoServerInfoHealthAndMetrics) {
  ServerProcess server(models().a, {"--weight-version", "v0", "--served-model-name", "tiny"});
  httplib::Client client = server.client();
  int status = 0;
  const json models_list = get_json(client, "/v1/models", &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(models_list["data"][0]["id"], "tiny");
  const json info = get_json(client, "/get_model_info");
  EXPECT_EQ(info["weight_version"], "v0");
  EXPECT_EQ(info["architecture"], "Qwen3MoeForCausalLM");
  EXPECT_EQ(info["quantization"], "NVFP4");
  EXPECT_EQ(get_json(client, "/get_weight_version"), json({{"weight_version", "v0"}}));
  const json server_info = get_json(client, "/get_server_info");
  EXPECT_EQ(server_info["max_total_num_tokens"], 16384);
  EXPECT_EQ(server_info["memory"]["kv_cache_bytes_per_token"], 2 * 4 * 2 * 32 * 2);  // K+V, layers, heads, dim, bf16
  // Aliases are counted once: never more than every name on its own buffer; every checkpoint tensor lives in a
  // parameter, so the total is near the checkpoint's file size or above (loosely: more than half of it).
  const uint64_t weights = server_info["memory"]["weights_bytes"];
  EXPECT_LE(weights, server_info["memory"]["weights_bytes_without_aliasing"].get<uint64_t>());
  uint64_t checkpoint_bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(models().a))
    if (entry.path().extension() == ".safetensors") checkpoint_bytes += entry.file_size();
  EXPECT_GT(weights, checkpoint_bytes / 2);
  // The load staged the checkpoint through host memory (at least one chunk); the CPU forward holds no device memory.
  EXPECT_GT(server_info["memory"]["staging_bytes"].get<uint64_t>(), 0u);
  EXPECT_EQ(server_info["memory"]["workspace_bytes"], 0);
  EXPECT_EQ(server_info["gpu_sampling"], "on");
  EXPECT_EQ(server_info["api_key"], "");
  get_json(client, "/health", &status);
  EXPECT_EQ(status, 200);
  get_json(client, "/health_generate", &status);
  EXPECT_EQ(status, 200);

  post_json(client, "/generate", {{"text", "abc"}, {"sampling_params", {{"max_new_tokens", 4}, {"ignore_eos", true}}}});
  const auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  const std::string& text = metrics->body;
  // health_generate's one token plus this request's four.
  EXPECT_NE(text.find("fp4serve_generation_tokens_total 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fp4serve_requests_total{finish_reason=\"length\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE fp4serve_kv_cache_usage_ratio gauge\n"), std::string::npos);
  EXPECT_NE(text.find("fp4serve_weight_version_info{weight_version=\"v0\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("fp4serve_weight_reloads_total 0\n"), std::string::npos);
}

}  // namespace
}  // namespace fp4serve::test
