// `fp4serve generate` end to end (the real binary on a synth model): the JSON result agrees with the engine run
// in-process, a text prompt equals its token ids, and misuse exits non-zero with a message.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "tests/model/test_util.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve::testing_support {
namespace {

using testing::HasSubstr;

class CliGenerate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("cli_generate");
    model_dir_ = new std::filesystem::path(synth_tiny(*dir_));
  }
  static void TearDownTestSuite() {
    delete model_dir_;
    delete dir_;
  }
  static nlohmann::json generate_json(const std::string& args) {
    const CommandResult r = run_fp4serve("generate --json --model-path '" + model_dir_->string() + "' " + args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output);
  }
  static inline TempDir* dir_ = nullptr;
  static inline std::filesystem::path* model_dir_ = nullptr;
};

TEST_F(CliGenerate, JsonMatchesTheEngineInProcess) {
  const nlohmann::json out =
      generate_json("--input-ids 72,105,33,10 --max-new-tokens 6 --temperature 0.7 --seed 9 --weight-version v7");
  Engine engine(load_model(*model_dir_), {});
  const GenerateResult expected = engine.generate(
      {{.input_ids = {72, 105, 33, 10}, .sampling = {.temperature = 0.7f, .seed = 9}, .max_new_tokens = 6}})[0];
  EXPECT_EQ(out["output_ids"].get<std::vector<int32_t>>(), expected.output_ids);
  ASSERT_EQ(out["output_token_logprobs"].size(), expected.output_ids.size());
  for (size_t i = 0; i < expected.output_ids.size(); ++i) {
    EXPECT_NEAR(out["output_token_logprobs"][i][0].get<double>(), expected.output_logprobs[i], 1e-6);
    EXPECT_EQ(out["output_token_logprobs"][i][1].get<int32_t>(), expected.output_ids[i]);
    EXPECT_TRUE(out["output_token_logprobs"][i][2].is_null());
  }
  EXPECT_EQ(out["weight_version"], "v7");
  EXPECT_EQ(out["finish_reason"]["type"], finish_reason_name(expected.finish_reason));
  const Tokenizer tokenizer = Tokenizer::from_files(*model_dir_);
  EXPECT_EQ(out["text"], tokenizer.decode(expected.output_ids, true));
}

TEST_F(CliGenerate, TextPromptEqualsItsTokenIds) {
  const Tokenizer tokenizer = Tokenizer::from_files(*model_dir_);
  std::string ids;
  for (int32_t id : tokenizer.encode("Hello there")) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const nlohmann::json from_text = generate_json("--prompt 'Hello there' --max-new-tokens 4 --temperature 0");
  const nlohmann::json from_ids = generate_json("--input-ids " + ids + " --max-new-tokens 4 --temperature 0");
  EXPECT_EQ(from_text["output_ids"], from_ids["output_ids"]);
  EXPECT_EQ(from_text["output_ids"].size(), 4u);
}

TEST_F(CliGenerate, MisuseExitsNonZeroWithAMessage) {
  const std::string model = " --model-path '" + model_dir_->string() + "'";
  CommandResult r = run_fp4serve("generate" + model, true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("pass --prompt TEXT or --input-ids 1,2,3"));
  r = run_fp4serve("generate --input-ids 1,999" + model, true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("input id 999 at position 1 is outside the vocabulary"));
  r = run_fp4serve("generate --input-ids 1 --temperature -2" + model, true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("temperature -2 must be finite and >= 0"));
  r = run_fp4serve("generate --input-ids 1 --gpu-sampling maybe" + model, true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--gpu-sampling"));
}

}  // namespace
}  // namespace fp4serve::testing_support
