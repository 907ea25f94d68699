// Calibration (calibrate_input_amax) and its use by `fp4serve quantize --calib-prompts`: an entry for every linear,
// values checked against an independent computation where one is simple (layer 0's attention input), the expert
// rules of engine/calibration.h, and the quantized checkpoint carrying input_scale = amax / (6 * 448).
#include "engine/calibration.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>

#include "format/bf16.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "tests/model/test_util.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve::testing_support {
namespace {

std::vector<float> bf16_values(const Checkpoint& checkpoint, const std::string& name) {
  const CheckpointTensor& t = checkpoint.tensor(name);
  std::vector<float> values(t.info->nbytes / 2);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = bf16_to_float(reinterpret_cast<const bf16_bits*>(t.bytes.data())[i]);
  return values;
}

TEST(Calibration, RecordsEveryLinearAndFeedsQuantize) {
  TempDir dir("calibration");
  const std::filesystem::path model_dir = synth_tiny(dir);
  const std::vector<std::string> texts{"The quick brown fox", "jumps over the lazy dog."};
  const Tokenizer tokenizer = Tokenizer::from_files(model_dir);
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : texts) prompts.push_back(tokenizer.encode(text));
  const std::map<std::string, float> amax = calibrate_input_amax(model_dir, prompts);
  const ModelConfig config = load_model_config(model_dir);

  // Layer 0's q/k/v input is rmsnorm(embedding) * input_layernorm: computed here in double, rounded to bf16.
  const Checkpoint checkpoint = Checkpoint::open(model_dir);
  const std::vector<float> embed = bf16_values(checkpoint, "model.embed_tokens.weight");
  const std::vector<float> norm = bf16_values(checkpoint, "model.layers.0.input_layernorm.weight");
  const int64_t H = config.hidden_size;
  double expected = 0;
  for (const auto& prompt : prompts)
    for (int32_t token : prompt) {
      double sum_squares = 0;
      for (int64_t i = 0; i < H; ++i) sum_squares += double{embed[token * H + i]} * embed[token * H + i];
      const double inv_rms = 1.0 / std::sqrt(sum_squares / H + config.rms_norm_eps);
      for (int64_t i = 0; i < H; ++i) expected = std::max(expected, std::abs(embed[token * H + i] * inv_rms * norm[i]));
    }
  for (const char* proj : {"q_proj", "k_proj", "v_proj"})
    EXPECT_NEAR(amax.at(std::string("model.layers.0.self_attn.") + proj), expected, expected * 0x1p-7) << proj;

  for (int l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}", l);
    EXPECT_GT(amax.at(p + ".self_attn.o_proj"), 0.0f);
    const float gate = amax.at(p + ".mlp.experts.0.gate_proj");
    float down_max = 0.0f;
    for (int e = 0; e < config.num_experts; ++e) {
      EXPECT_EQ(amax.at(fmt::format("{}.mlp.experts.{}.gate_proj", p, e)), gate);  // all see the layer's input
      EXPECT_EQ(amax.at(fmt::format("{}.mlp.experts.{}.up_proj", p, e)), gate);
      down_max = std::max(down_max, amax.at(fmt::format("{}.mlp.experts.{}.down_proj", p, e)));
      EXPECT_GT(amax.at(fmt::format("{}.mlp.experts.{}.down_proj", p, e)), 0.0f);
    }
    EXPECT_GT(gate, 0.0f);
  }

  // The quantize tool with the same prompts writes input_scale = amax / (6 * 448), the max over fused groups.
  const std::filesystem::path prompts_file = dir.path() / "prompts.txt";
  std::ofstream(prompts_file) << texts[0] << "\n\n" << texts[1] << "\n";
  const std::filesystem::path out = dir.path() / "nvfp4";
  const CommandResult r = run_fp4serve(fmt::format("quantize --in '{}' --out '{}' --calib-prompts '{}'",
                                                   model_dir.string(), out.string(), prompts_file.string()),
                                       true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(read_json_file(out / "hf_quant_config.json")["fp4serve"]["input_scales_calibrated"].get<bool>());
  const Checkpoint quantized = Checkpoint::open(out);
  auto input_scale = [&](const std::string& prefix) {
    float value;
    std::memcpy(&value, quantized.tensor(prefix + ".input_scale").bytes.data(), sizeof value);
    return value;
  };
  EXPECT_EQ(input_scale("model.layers.0.self_attn.k_proj"),
            amax.at("model.layers.0.self_attn.q_proj") / (6.0f * 448.0f));
  EXPECT_EQ(input_scale("model.layers.2.mlp.experts.3.down_proj"),
            amax.at("model.layers.2.mlp.experts.3.down_proj") / (6.0f * 448.0f));
}

// A .jsonl prompt file carries prompts that span lines (chat turns): quantize calibrates on exactly those prompts
// (input scales equal calibrate_input_amax over them), and a line that is not a JSON string is named.
TEST(Calibration, JsonlPromptsSpanLines) {
  TempDir dir("calibration_jsonl");
  const std::filesystem::path model_dir = synth_tiny(dir);
  const std::string chat = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n2+3=5\n#### 5";
  const Tokenizer tokenizer = Tokenizer::from_files(model_dir);
  const std::map<std::string, float> amax = calibrate_input_amax(model_dir, {tokenizer.encode(chat)});
  const std::filesystem::path prompts_file = dir.path() / "prompts.jsonl";
  std::ofstream(prompts_file) << nlohmann::json(chat).dump() << "\n\n";
  const std::filesystem::path out = dir.path() / "nvfp4";
  CommandResult r = run_fp4serve(fmt::format("quantize --in '{}' --out '{}' --calib-prompts '{}'", model_dir.string(),
                                             out.string(), prompts_file.string()),
                                 true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  float input_scale;
  std::memcpy(&input_scale, Checkpoint::open(out).tensor("model.layers.1.self_attn.o_proj.input_scale").bytes.data(),
              sizeof input_scale);
  EXPECT_EQ(input_scale, amax.at("model.layers.1.self_attn.o_proj") / (6.0f * 448.0f));

  std::ofstream(prompts_file) << nlohmann::json(chat).dump() << "\n" << "plain text\n";
  r = run_fp4serve(fmt::format("quantize --in '{}' --out '{}' --calib-prompts '{}'", model_dir.string(),
                               (dir.path() / "bad").string(), prompts_file.string()),
                   true);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, ::testing::HasSubstr("prompts.jsonl:2: a .jsonl prompt file holds one JSON string per line"));
}

}  // namespace
}  // namespace fp4serve::testing_support
