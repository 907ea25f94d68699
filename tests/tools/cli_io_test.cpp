// End-to-end tests of the real fp4serve binary: `synth` writes a checkpoint that `inspect --json` and the io
// library read back with the sizes computed here from the preset by hand; same seed -> identical bytes.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "format/bf16.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/model_config.h"
#include "tests/io/io_test_util.h"

namespace fp4serve {
namespace {

using io_test::TempDir;
namespace fs = std::filesystem;

struct RunResult {
  int exit_code;
  std::string output;  // stdout, plus stderr when asked
};

std::string fp4serve_binary() {
  const char* from_env = std::getenv("FP4SERVE_BIN");
  return from_env != nullptr && *from_env != '\0' ? from_env : FP4SERVE_BINARY_DIR "/fp4serve";
}

RunResult run(const std::string& args, bool with_stderr = false) {
  const std::string command = "'" + fp4serve_binary() + "' " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return {-1, ""};
  std::string output;
  char chunk[4096];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, pipe)) > 0) output.append(chunk, got);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

void synth(const fs::path& out, const std::string& extra) {
  const RunResult r = run("synth " + extra + " --out '" + out.string() + "'", true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

nlohmann::json inspect_json(const fs::path& dir) {
  const RunResult r = run("inspect --json '" + dir.string() + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(r.output);
}

std::vector<float> as_floats(const CheckpointTensor& t) {
  std::vector<float> values(t.info->nbytes / 2);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = bf16_to_float(static_cast<bf16_bits>(t.bytes[2 * i] | (t.bytes[2 * i + 1] << 8)));
  return values;
}

TEST(CliSynth, TinyMoeCheckpointInspectsAsExpected) {
  TempDir dir;
  const fs::path out = dir / "tiny";
  synth(out, "--preset tiny --seed 1");
  for (const char* file : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                           "model.safetensors.index.json", "model-00001-of-00001.safetensors"})
    EXPECT_TRUE(fs::exists(out / file)) << file;

  const nlohmann::json report = inspect_json(out);
  EXPECT_EQ(report["architecture"], "Qwen3MoeForCausalLM");
  EXPECT_EQ(report["quantization"]["algo"], "none");
  // Per layer, by hand: 2 norms of 128 + q/k norms of 32, q 128x128, k and v 64x128, o 128x128, router 8x128,
  // 8 experts x 3 x 64x128.
  const uint64_t layer_params = 2 * 128 + 2 * 32 + 128 * 128 + 2 * 64 * 128 + 128 * 128 + 8 * 128 + 8 * 3 * 64 * 128;
  const uint64_t other_params = 2 * 259 * 128 + 128;  // embed, untied lm_head, final norm
  ASSERT_EQ(report["groups"].size(), 5u);
  for (int layer = 0; layer < 4; ++layer) {
    const auto& group = report["groups"][layer];
    EXPECT_EQ(group["name"], "layer " + std::to_string(layer));
    EXPECT_EQ(group["tensors"].size(), 33u);
    EXPECT_EQ(group["params"], layer_params);
    EXPECT_EQ(group["bytes"], 2 * layer_params);
  }
  EXPECT_EQ(report["groups"][4]["name"], "other");
  EXPECT_EQ(report["groups"][4]["params"], other_params);
  EXPECT_EQ(report["total"]["tensors"], 4 * 33 + 3);
  EXPECT_EQ(report["total"]["params"], 4 * layer_params + other_params);
  EXPECT_EQ(report["total"]["bytes"], 2 * (4 * layer_params + other_params));
  EXPECT_EQ(report["config"]["num_experts"], 8);

  // Values: norms exactly 1, weights N(0, 0.02), different tensors different.
  const Checkpoint checkpoint = Checkpoint::open(out);
  for (float v : as_floats(checkpoint.tensor("model.layers.2.self_attn.k_norm.weight"))) ASSERT_EQ(v, 1.0f);
  const auto weights = as_floats(checkpoint.tensor("model.embed_tokens.weight"));
  double sum = 0, sum_sq = 0;
  for (float v : weights) sum += v, sum_sq += double{v} * v;
  const double mean = sum / weights.size(), std = std::sqrt(sum_sq / weights.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.001);  // 33152 samples: the mean's std is 0.02 / 182 = 0.00011
  EXPECT_NEAR(std, 0.02, 0.0005);
  EXPECT_NE(as_floats(checkpoint.tensor("model.layers.0.self_attn.q_proj.weight")),
            as_floats(checkpoint.tensor("model.layers.1.self_attn.q_proj.weight")));

  // The config round-trips through the io parser with the documented special tokens.
  const ModelConfig config = load_model_config(out);
  EXPECT_EQ(config.eos_token_ids, std::vector<int>{258});
  EXPECT_EQ(config.num_hidden_layers, 4);
  EXPECT_EQ(config.head_dim, 32);
}

TEST(CliSynth, TokenizerIsByteLevelWithChatMlSpecials) {
  TempDir dir;
  synth(dir / "t", "--preset tiny");
  const nlohmann::json tokenizer = read_json_file(dir / "t" / "tokenizer.json");
  EXPECT_EQ(tokenizer["model"]["type"], "BPE");
  EXPECT_TRUE(tokenizer["model"]["merges"].empty());
  EXPECT_EQ(tokenizer["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(tokenizer["pre_tokenizer"]["add_prefix_space"], false);
  EXPECT_EQ(tokenizer["decoder"]["add_prefix_space"], true);
  const auto& vocab = tokenizer["model"]["vocab"];
  ASSERT_EQ(vocab.size(), 256u);
  // GPT-2's byte alphabet: printable ASCII is itself, space is U+0120, newline U+010A, byte 0 U+0100, and the last
  // unprintable byte (173, soft hyphen) is the 68th remapped one: U+0143.
  EXPECT_EQ(vocab["A"], 65);
  EXPECT_EQ(vocab["~"], 126);
  EXPECT_EQ(vocab["\xC4\xA0"], 32);   // U+0120
  EXPECT_EQ(vocab["\xC4\x8A"], 10);   // U+010A
  EXPECT_EQ(vocab["\xC4\x80"], 0);    // U+0100
  EXPECT_EQ(vocab["\xC5\x83"], 173);  // U+0143
  EXPECT_EQ(vocab["\xC3\xBF"], 255);  // U+00FF
  EXPECT_EQ(vocab["\xC2\xA1"], 161);  // U+00A1
  std::set<int> ids;
  for (const auto& [token, id] : vocab.items()) ids.insert(id.get<int>());
  EXPECT_EQ(ids.size(), 256u);
  const auto& added = tokenizer["added_tokens"];
  ASSERT_EQ(added.size(), 3u);
  EXPECT_EQ(added[0]["id"], 256);
  EXPECT_EQ(added[0]["content"], "<|endoftext|>");
  EXPECT_EQ(added[2]["id"], 258);
  EXPECT_EQ(added[2]["content"], "<|im_end|>");
  EXPECT_EQ(added[2]["special"], true);

  const nlohmann::json tokenizer_config = read_json_file(dir / "t" / "tokenizer_config.json");
  EXPECT_EQ(tokenizer_config["eos_token"], "<|im_end|>");
  EXPECT_EQ(tokenizer_config["pad_token"], "<|endoftext|>");
  EXPECT_TRUE(tokenizer_config["bos_token"].is_null());
  EXPECT_NE(tokenizer_config["chat_template"].get<std::string>().find("<|im_start|>"), std::string::npos);
  const nlohmann::json generation = read_json_file(dir / "t" / "generation_config.json");
  EXPECT_EQ(generation["eos_token_id"], nlohmann::json({258, 256}));
}

TEST(CliSynth, SameSeedSameBytesDifferentSeedDifferentWeights) {
  TempDir dir;
  synth(dir / "a", "--preset tiny --seed 7");
  synth(dir / "b", "--preset tiny --seed 7");
  synth(dir / "c", "--preset tiny --seed 8");
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir / "a")) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(io_test::read_file(entry.path()), io_test::read_file(dir / "b" / name)) << name;
    const bool is_weights = name.ends_with(".safetensors");
    EXPECT_EQ(io_test::read_file(entry.path()) == io_test::read_file(dir / "c" / name), !is_weights) << name;
    ++files;
  }
  EXPECT_EQ(files, 6u);
}

TEST(CliSynth, DenseArchitectureAndLayerOverride) {
  TempDir dir;
  synth(dir / "dense", "--arch qwen3 --preset tiny --layers 2");
  const nlohmann::json report = inspect_json(dir / "dense");
  EXPECT_EQ(report["architecture"], "Qwen3ForCausalLM");
  EXPECT_EQ(report["config"]["num_hidden_layers"], 2);
  // Per layer: 4 norms, 4 attention projections, 3 dense MLP projections (intermediate 256).
  const uint64_t layer_params = 2 * 128 + 2 * 32 + 128 * 128 + 2 * 64 * 128 + 128 * 128 + 3 * 256 * 128;
  EXPECT_EQ(report["groups"][0]["tensors"].size(), 11u);
  EXPECT_EQ(report["groups"][0]["params"], layer_params);
  EXPECT_EQ(report["total"]["tensors"], 2 * 11 + 3);
  const Checkpoint checkpoint = Checkpoint::open(dir / "dense");
  EXPECT_EQ(checkpoint.tensor("model.layers.1.mlp.down_proj.weight").info->shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(checkpoint.find("model.layers.0.mlp.gate.weight"), nullptr);
}

TEST(CliSynth, SmallPresetSizes) {
  TempDir dir;
  synth(dir / "small", "--preset small --layers 1");
  const ModelConfig config = load_model_config(dir / "small");
  EXPECT_EQ(config.hidden_size, 512);
  EXPECT_EQ(config.num_experts, 32);
  EXPECT_EQ(config.num_experts_per_tok, 4);
  const Checkpoint checkpoint = Checkpoint::open(dir / "small");
  EXPECT_EQ(checkpoint.tensor("model.layers.0.mlp.experts.31.down_proj.weight").info->shape,
            (std::vector<int64_t>{512, 256}));
  EXPECT_EQ(checkpoint.tensor("model.layers.0.self_attn.k_proj.weight").info->shape,
            (std::vector<int64_t>{256, 512}));
}

TEST(CliInspect, CountsPackedNvfp4WeightsAndSkipsScales) {
  TempDir dir;
  const fs::path ckpt = dir / "nvfp4";
  fs::create_directories(ckpt);
  const std::string p = "model.layers.0.self_attn.q_proj";
  const std::vector<TensorDecl> decls = {{p + ".weight", DType::U8, {4, 16}},          // [N, K/2]: 4 x 32 values
                                         {p + ".weight_scale", DType::F8_E4M3, {4, 2}},  // [N, K/16]
                                         {p + ".weight_scale_2", DType::F32, {}},
                                         {p + ".input_scale", DType::F32, {}},
                                         {"lm_head.weight", DType::BF16, {3, 32}}};       // excluded: stays bf16
  SafetensorsWriter writer(ckpt / "model.safetensors", decls);
  for (const auto& d : decls) writer.write(d.name, std::vector<uint8_t>(d.nbytes()));
  writer.finish();
  io_test::write_file(ckpt / "hf_quant_config.json",
                      R"({"producer": {"name": "modelopt", "version": "0.29.0"}, "quantization": {"quant_algo": "NVFP4",
                          "group_size": 16, "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"]}})");
  const nlohmann::json report = inspect_json(ckpt);
  EXPECT_TRUE(report["architecture"].is_null());  // no config.json
  EXPECT_EQ(report["quantization"]["algo"], "NVFP4");
  EXPECT_EQ(report["quantization"]["group_size"], 16);
  EXPECT_EQ(report["quantization"]["exclude_modules"], nlohmann::json({"lm_head"}));
  EXPECT_EQ(report["quantization"]["producer"], "modelopt 0.29.0");
  const auto& layer0 = report["groups"][0];
  EXPECT_EQ(layer0["params"], 4 * 32);  // two E2M1 values per byte, scales hold no parameters
  EXPECT_EQ(layer0["bytes"], 64 + 8 + 4 + 4);
  EXPECT_EQ(report["groups"][1]["params"], 3 * 32);
  EXPECT_EQ(report["total"]["params"], 4 * 32 + 3 * 32);
}

TEST(CliInspect, TextReportAndErrors) {
  TempDir dir;
  synth(dir / "tiny", "--preset tiny");
  const RunResult text = run("inspect '" + (dir / "tiny").string() + "'");
  ASSERT_EQ(text.exit_code, 0);
  for (const char* fragment : {"Qwen3MoeForCausalLM", "quantization  none", "layer 3:", "other:",
                               "model.layers.0.mlp.gate.weight", "total: 135 tensors", "1054848 params"})
    EXPECT_NE(text.output.find(fragment), std::string::npos) << fragment << "\n" << text.output;

  const RunResult missing = run("inspect '" + (dir / "absent").string() + "'", true);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("absent"), std::string::npos) << missing.output;
  const RunResult overwrite = run("synth --preset tiny --out '" + (dir / "tiny").string() + "'", true);
  EXPECT_EQ(overwrite.exit_code, 1);
  EXPECT_NE(overwrite.output.find("refusing to overwrite"), std::string::npos) << overwrite.output;
  const RunResult bad_preset = run("synth --preset huge --out '" + (dir / "x").string() + "'", true);
  EXPECT_NE(bad_preset.exit_code, 0);
  EXPECT_FALSE(fs::exists(dir / "x"));
}

}  // namespace
}  // namespace fp4serve
