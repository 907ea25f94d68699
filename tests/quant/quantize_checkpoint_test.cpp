// fp4serve quantize: end to end on a small hand-built bf16 Qwen3-MoE checkpoint (one MoE layer, one dense layer)
// through the library, and through the CLI on `fp4serve synth --preset tiny`. Checks the ModelOpt format (names,
// dtypes, shapes, configs), closeness to the bf16 weights, shared weight_scale_2 in fused groups, exclusions, and
// that online group quantization (bind_online_quant + quantize_group) gives the tool's bytes exactly.
#include "quant/quantize_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "format/e4m3.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/quant_config.h"
#include "quant/group_quant.h"
#include "quant_test_util.h"

namespace fp4serve::test {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int64_t kHidden = 64, kHeads = 2, kHeadDim = 32, kExperts = 4, kMoeI = 32, kDenseI = 64, kVocab = 40;

fs::path fresh_dir(const std::string& name) {
  // Per process: CTest runs the tests of this suite in parallel processes, each with its own SetUpTestSuite.
  const fs::path dir = fs::path(::testing::TempDir()) / ("fp4serve_quant_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  return dir;
}

// Layer 0 is MoE (router + 4 experts), layer 1 dense (mlp_only_layers). Weights are random bf16 per tensor.
struct Bf16Checkpoint {
  fs::path dir;
  std::map<std::string, Shape> shapes;
  std::map<std::string, std::vector<bf16_bits>> values;
};

Bf16Checkpoint make_checkpoint(const fs::path& dir, int64_t dense_intermediate = kDenseI) {
  Bf16Checkpoint c{dir, {}, {}};
  auto add = [&](const std::string& name, Shape shape) { c.shapes[name] = std::move(shape); };
  add("model.embed_tokens.weight", {kVocab, kHidden});
  add("lm_head.weight", {kVocab, kHidden});
  add("model.norm.weight", {kHidden});
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {kHidden});
    add(p + "post_attention_layernorm.weight", {kHidden});
    add(p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden});
    add(p + "self_attn.k_proj.weight", {kHeadDim, kHidden});
    add(p + "self_attn.v_proj.weight", {kHeadDim, kHidden});
    add(p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim});
    add(p + "self_attn.q_norm.weight", {kHeadDim});
    add(p + "self_attn.k_norm.weight", {kHeadDim});
  }
  add("model.layers.0.mlp.gate.weight", {kExperts, kHidden});
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = "model.layers.0.mlp.experts." + std::to_string(e) + ".";
    add(p + "gate_proj.weight", {kMoeI, kHidden});
    add(p + "up_proj.weight", {kMoeI, kHidden});
    add(p + "down_proj.weight", {kHidden, kMoeI});
  }
  add("model.layers.1.mlp.gate_proj.weight", {dense_intermediate, kHidden});
  add("model.layers.1.mlp.up_proj.weight", {dense_intermediate, kHidden});
  add("model.layers.1.mlp.down_proj.weight", {kHidden, dense_intermediate});

  uint32_t seed = 1;
  for (const auto& [name, shape] : c.shapes) {
    // The up projections of the dense layer are 4x larger, so gate and up would get different global scales alone.
    const float stddev = name.find("layers.1.mlp.up_proj") != std::string::npos ? 0.2f : 0.05f;
    c.values[name] = shape.size() == 1 ? std::vector<bf16_bits>(shape[0], float_to_bf16(1.0f))
                                       : random_bf16(static_cast<size_t>(shape_numel(shape)), seed++, stddev);
  }
  CheckpointWriter writer(dir, 60'000);  // several shards
  for (const auto& [name, shape] : c.shapes) writer.add({name, DType::BF16, shape});
  writer.write([&](const TensorDecl& decl, std::span<uint8_t> out) {
    std::memcpy(out.data(), c.values.at(decl.name).data(), out.size());
  });
  nlohmann::json config = {{"architectures", {"Qwen3MoeForCausalLM"}},
                           {"hidden_size", kHidden},
                           {"num_hidden_layers", 2},
                           {"num_attention_heads", kHeads},
                           {"num_key_value_heads", 1},
                           {"head_dim", kHeadDim},
                           {"intermediate_size", dense_intermediate},
                           {"moe_intermediate_size", kMoeI},
                           {"num_experts", kExperts},
                           {"num_experts_per_tok", 2},
                           {"norm_topk_prob", true},
                           {"decoder_sparse_step", 1},
                           {"mlp_only_layers", {1}},
                           {"vocab_size", kVocab},
                           {"rms_norm_eps", 1e-6},
                           {"rope_theta", 10000.0},
                           {"max_position_embeddings", 128},
                           {"tie_word_embeddings", false}};
  write_json_file(dir / "config.json", config);
  write_json_file(dir / "tokenizer.json", nlohmann::json{{"version", "1.0"}});
  write_json_file(dir / "tokenizer_config.json", nlohmann::json{{"eos_token", "<|im_end|>"}});
  write_json_file(dir / "generation_config.json", nlohmann::json{{"eos_token_id", 2}});
  return c;
}

std::vector<uint8_t> tensor_bytes(const Checkpoint& ckpt, const std::string& name) {
  const CheckpointTensor& t = ckpt.tensor(name);
  return {t.bytes.begin(), t.bytes.end()};
}
float scalar_of(const Checkpoint& ckpt, const std::string& name) {
  float v;
  std::memcpy(&v, ckpt.tensor(name).bytes.data(), sizeof v);
  return v;
}
std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

class QuantizeCheckpoint : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    source_ = new Bf16Checkpoint(make_checkpoint(fresh_dir("bf16")));
    output_ = new fs::path(fresh_dir("nvfp4"));
    summary_ = quantize_checkpoint({.input_dir = source_->dir, .output_dir = *output_, .max_shard_bytes = 8'000});
  }
  static void TearDownTestSuite() {
    delete source_;
    delete output_;
  }
  static bool quantized(const std::string& name) {
    return name.find("_proj.weight") != std::string::npos;  // everything else is excluded or not a linear
  }
  static inline Bf16Checkpoint* source_ = nullptr;
  static inline fs::path* output_ = nullptr;
  static inline QuantizeSummary summary_;
};

TEST_F(QuantizeCheckpoint, WritesTheModelOptNvfp4Format) {
  const Checkpoint out = Checkpoint::open(*output_);
  EXPECT_GT(out.shards().size(), 1u);
  size_t expected_tensors = 0;
  for (const auto& [name, shape] : source_->shapes) {
    if (!quantized(name)) {
      ++expected_tensors;
      const CheckpointTensor& t = out.tensor(name);
      EXPECT_EQ(t.info->dtype, DType::BF16) << name;
      EXPECT_EQ(t.info->shape, shape) << name;
      EXPECT_EQ(tensor_bytes(out, name), bytes_of(host_tensor(shape, DType::BF16, source_->values.at(name)))) << name;
      continue;
    }
    expected_tensors += 4;
    const std::string module = name.substr(0, name.size() - 7);
    EXPECT_EQ(out.tensor(name).info->dtype, DType::U8) << name;
    EXPECT_EQ(out.tensor(name).info->shape, (Shape{shape[0], shape[1] / 2})) << name;
    EXPECT_EQ(out.tensor(module + ".weight_scale").info->dtype, DType::F8_E4M3) << name;
    EXPECT_EQ(out.tensor(module + ".weight_scale").info->shape, (Shape{shape[0], shape[1] / 16})) << name;
    for (const char* scalar : {".weight_scale_2", ".input_scale"}) {
      EXPECT_EQ(out.tensor(module + scalar).info->dtype, DType::F32) << module << scalar;
      EXPECT_EQ(out.tensor(module + scalar).info->shape, Shape{}) << module << scalar;
    }
    EXPECT_EQ(scalar_of(out, module + ".input_scale"), 1.0f) << "uncalibrated";
  }
  EXPECT_EQ(out.num_tensors(), expected_tensors);
  EXPECT_EQ(summary_.quantized_linears, 2 * 4 + 3 * kExperts + 3);
  EXPECT_EQ(summary_.groups, 2 * 2 + 2 * kExperts + 2);  // qkv, o per layer; gate_up, down per expert / dense
  EXPECT_FALSE(summary_.calibrated);

  const QuantConfig quant = load_quant_config(*output_);
  EXPECT_EQ(quant.algo, QuantAlgo::Nvfp4);
  EXPECT_EQ(quant.group_size, 16);
  EXPECT_EQ(quant.exclude_modules, default_exclude_modules());
  EXPECT_TRUE(quant.is_excluded("model.layers.0.mlp.gate"));
  const nlohmann::json hf_quant = read_json_file(*output_ / "hf_quant_config.json");
  EXPECT_EQ(hf_quant["fp4serve"]["input_scales_calibrated"], false);
  const nlohmann::json config = read_json_file(*output_ / "config.json");
  EXPECT_EQ(config["quantization_config"]["quant_method"], "modelopt");
  EXPECT_EQ(config["hidden_size"], kHidden);
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    EXPECT_EQ(read_text(*output_ / file), read_text(source_->dir / file)) << file;
}

// Each element is within one block-scale unit of its bf16 value (half the widest E2M1 gap, 4 -> 6, reached by a tie
// at 5; saturation from an E4M3-rounded-down scale stays below it), and the whole tensor within NVFP4's usual ~10%.
TEST_F(QuantizeCheckpoint, DequantizedWeightsAreCloseToTheBf16Ones) {
  const Checkpoint out = Checkpoint::open(*output_);
  for (const auto& [name, shape] : source_->shapes) {
    if (!quantized(name)) continue;
    const std::string module = name.substr(0, name.size() - 7);
    const int64_t rows = shape[0], k = shape[1];
    const auto packed = tensor_bytes(out, name), scales = tensor_bytes(out, module + ".weight_scale");
    const float weight_scale_2 = scalar_of(out, module + ".weight_scale_2");
    std::vector<float> w_hat(rows * k);
    nvfp4_dequantize(packed.data(), scales.data(), weight_scale_2, rows, k, w_hat.data());
    double err = 0, norm = 0;
    for (int64_t i = 0; i < rows * k; ++i) {
      const double w = bf16_to_float(source_->values.at(name)[i]);
      const double unit = e4m3_decode(scales[i / 16]) * double{weight_scale_2};
      ASSERT_LE(std::fabs(w - w_hat[i]), unit * (1 + 1e-6)) << name << " element " << i;
      err += (w - w_hat[i]) * (w - w_hat[i]);
      norm += w * w;
    }
    EXPECT_LT(std::sqrt(err / norm), 0.15) << name;
  }
}

TEST_F(QuantizeCheckpoint, FusedGroupsShareOneWeightScale2) {
  const Checkpoint out = Checkpoint::open(*output_);
  auto expected_scale = [&](const std::vector<std::string>& modules) {
    float amax = 0;
    for (const auto& m : modules)
      for (bf16_bits v : source_->values.at(m + ".weight")) amax = std::max(amax, std::fabs(bf16_to_float(v)));
    return amax / (6.0f * 448.0f);
  };
  std::vector<std::vector<std::string>> groups;
  for (const char* layer : {"model.layers.0.", "model.layers.1."}) {
    const std::string p = std::string(layer) + "self_attn.";
    groups.push_back({p + "q_proj", p + "k_proj", p + "v_proj"});
    groups.push_back({p + "o_proj"});
  }
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = "model.layers.0.mlp.experts." + std::to_string(e) + ".";
    groups.push_back({p + "gate_proj", p + "up_proj"});
    groups.push_back({p + "down_proj"});
  }
  groups.push_back({"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"});
  for (const auto& group : groups)
    for (const auto& m : group) EXPECT_EQ(scalar_of(out, m + ".weight_scale_2"), expected_scale(group)) << m;
  // Alone, the dense gate would have a 4x smaller scale than its up: the group's is the up's.
  EXPECT_EQ(scalar_of(out, "model.layers.1.mlp.gate_proj.weight_scale_2"),
            expected_scale({"model.layers.1.mlp.up_proj"}));
}

// The loader's online path (bind_online_quant groups, each through quantize_group, written at the group's offsets)
// must leave the same raw parameter bytes as loading the tool's output through bind_checkpoint.
TEST_F(QuantizeCheckpoint, OnlineGroupQuantizationEqualsTheToolsBytes) {
  const Checkpoint bf16 = Checkpoint::open(source_->dir), nvfp4 = Checkpoint::open(*output_);
  TensorMap tool_output;
  for (const auto& name : nvfp4.tensor_names()) {
    const CheckpointTensor& t = nvfp4.tensor(name);
    Tensor host = Tensor::empty(t.info->shape, t.info->dtype, Device::CPU);
    std::memcpy(host.raw(), t.bytes.data(), t.bytes.size());
    tool_output[name] = host;
  }
  std::vector<std::unique_ptr<LinearMethod>> linears;
  for (const char* layer : {"model.layers.0", "model.layers.1"}) {
    const std::string p = std::string(layer) + ".self_attn.";
    linears.push_back(make_linear_method({.name = p + "qkv_proj",
                                          .in_features = kHidden,
                                          .shards = {{p + "q_proj", 64}, {p + "k_proj", 32}, {p + "v_proj", 32}}},
                                         true, {}));
  }
  linears.push_back(make_linear_method(
      {.name = "model.layers.1.mlp.gate_up_proj",
       .in_features = kHidden,
       .shards = {{"model.layers.1.mlp.gate_proj", kDenseI}, {"model.layers.1.mlp.up_proj", kDenseI}}},
      true, {.layout = WeightLayout::Trtllm}));
  auto moe = make_moe_method({.name = "model.layers.0.mlp.experts",
                              .checkpoint_prefix = "model.layers.0.mlp.experts",
                              .n_experts = kExperts,
                              .hidden = kHidden,
                              .intermediate = kMoeI},
                             true, {});
  ParameterSet online, loaded;
  std::vector<OnlineQuantGroup> groups;
  std::vector<CheckpointBinding> bindings;
  for (auto& l : linears) {
    l->create_weights(online), l->create_weights(loaded);
    l->bind_online_quant(groups), l->bind_checkpoint(bindings);
  }
  moe->create_weights(online), moe->create_weights(loaded);
  moe->bind_online_quant(groups), moe->bind_checkpoint(bindings);

  for (const OnlineQuantGroup& g : groups) {
    std::vector<std::vector<bf16_bits>> values;
    std::vector<GroupMember> members;
    int64_t rows = 0;
    for (size_t i = 0; i < g.checkpoint_names.size(); ++i) {
      const CheckpointTensor& t = bf16.tensor(g.checkpoint_names[i]);
      values.emplace_back(t.bytes.size() / 2);
      std::memcpy(values.back().data(), t.bytes.data(), t.bytes.size());
      rows += g.n_rows[i];
    }
    for (size_t i = 0; i < values.size(); ++i) members.push_back({values[i], g.n_rows[i]});
    std::vector<uint8_t> packed(rows * g.in_features / 2), scales(rows * g.in_features / 16);
    const float scale_2 = quantize_group(members, g.in_features, packed.data(), scales.data(), g.weight_param);
    std::memcpy(online.get(g.weight_param).raw() + g.weight_byte_offset, packed.data(), packed.size());
    std::memcpy(online.get(g.block_scale_param).raw() + g.block_scale_byte_offset, scales.data(), scales.size());
    for (size_t slot : g.global_scale_slots)
      std::memcpy(online.get(g.global_scale_param).raw() + slot * 4, &scale_2, 4);
  }
  load_bindings(loaded, bindings, tool_output);
  ASSERT_EQ(online.names(), loaded.names());
  for (const auto& name : online.names()) EXPECT_EQ(bytes_of(online.get(name)), bytes_of(loaded.get(name))) << name;
}

TEST(QuantizeCheckpointOptions, CalibratedInputScalesTakeTheGroupMax) {
  const Bf16Checkpoint source = make_checkpoint(fresh_dir("calib_in"));
  std::map<std::string, float> amax;
  const Checkpoint in = Checkpoint::open(source.dir);
  float next = 1.0f;
  for (const auto& name : in.tensor_names())
    if (name.ends_with("_proj.weight")) amax[name.substr(0, name.size() - 7)] = (next += 0.5f);
  amax.erase("model.layers.1.mlp.down_proj");
  EXPECT_THAT(
      [&] {
        quantize_checkpoint({.input_dir = source.dir, .output_dir = fresh_dir("calib_fail"), .input_amax = amax});
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("no input amax for linear 'model.layers.1.mlp.down_proj'")));
  amax["model.layers.1.mlp.down_proj"] = 0.0f;  // a linear that never saw input: scale 1.0
  const fs::path out_dir = fresh_dir("calib_out");
  EXPECT_TRUE(quantize_checkpoint({.input_dir = source.dir, .output_dir = out_dir, .input_amax = amax}).calibrated);
  const Checkpoint out = Checkpoint::open(out_dir);
  const std::string p = "model.layers.0.self_attn.";
  const float qkv_amax = std::max({amax[p + "q_proj"], amax[p + "k_proj"], amax[p + "v_proj"]});
  for (const char* m : {"q_proj", "k_proj", "v_proj"})
    EXPECT_EQ(scalar_of(out, p + m + ".input_scale"), qkv_amax / (6.0f * 448.0f)) << m;
  EXPECT_EQ(scalar_of(out, p + "o_proj.input_scale"), amax[p + "o_proj"] / (6.0f * 448.0f));
  EXPECT_EQ(scalar_of(out, "model.layers.1.mlp.down_proj.input_scale"), 1.0f);
  EXPECT_EQ(read_json_file(out_dir / "hf_quant_config.json")["fp4serve"]["input_scales_calibrated"], true);
}

TEST(QuantizeCheckpointOptions, ExcludedModulesStayBf16AndBadRequestsAreRefused) {
  const Bf16Checkpoint source = make_checkpoint(fresh_dir("excl_in"));
  const fs::path out_dir = fresh_dir("excl_out");
  quantize_checkpoint({.input_dir = source.dir, .output_dir = out_dir, .exclude = {"model.layers.1.*"}});
  const Checkpoint out = Checkpoint::open(out_dir);
  EXPECT_EQ(out.tensor("model.layers.1.self_attn.q_proj.weight").info->dtype, DType::BF16);
  EXPECT_EQ(out.find("model.layers.1.mlp.down_proj.weight_scale"), nullptr);
  EXPECT_EQ(out.tensor("model.layers.0.self_attn.q_proj.weight").info->dtype, DType::U8);
  EXPECT_TRUE(load_quant_config(out_dir).is_excluded("model.layers.1.mlp.up_proj"));

  EXPECT_THAT(
      [&] {
        quantize_checkpoint({.input_dir = source.dir,
                             .output_dir = fresh_dir("split"),
                             .exclude = {"model.layers.0.self_attn.k_proj"}});
      },
      ::testing::ThrowsMessage<Error>(
          AllOf(HasSubstr("model.layers.0.self_attn.qkv_proj"), HasSubstr("exclude all of its members or none"))));
  EXPECT_THAT([&] { quantize_checkpoint({.input_dir = out_dir, .output_dir = fresh_dir("twice")}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("already quantized")));
  EXPECT_THAT([&] { quantize_checkpoint({.input_dir = source.dir, .output_dir = source.dir}); },
              ::testing::ThrowsMessage<Error>(HasSubstr("--out must differ from --in")));

  const Bf16Checkpoint odd = make_checkpoint(fresh_dir("odd_in"), 24);  // dense down_proj has K = 24
  EXPECT_THAT([&] { quantize_checkpoint({.input_dir = odd.dir, .output_dir = fresh_dir("odd_out")}); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr("model.layers.1.mlp.down_proj.weight"),
                                                    HasSubstr("24 input features"), HasSubstr("--exclude"))));
  quantize_checkpoint(
      {.input_dir = odd.dir, .output_dir = fresh_dir("odd_out2"), .exclude = {"model.layers.1.mlp.down_proj"}});
}

std::string fp4serve_binary() {
  const char* env = std::getenv("FP4SERVE_BIN");
  return env != nullptr ? env : FP4SERVE_BINARY_DIR "/fp4serve";
}

// Runs the CLI, returning its exit status and combined output.
std::pair<int, std::string> run_cli(const std::string& args, const fs::path& log) {
  const int status = std::system((fp4serve_binary() + " " + args + " > " + log.string() + " 2>&1").c_str());
  return {WEXITSTATUS(status), read_text(log)};
}

TEST(QuantizeCli, QuantizesTheTinySynthModel) {
  const fs::path synth = fresh_dir("cli_synth"), out = fresh_dir("cli_out"), log = fresh_dir("cli_log");
  ASSERT_EQ(run_cli("synth --preset tiny --out " + synth.string(), log).first, 0) << read_text(log);
  auto [status, output] = run_cli("quantize --in " + synth.string() + " --out " + out.string(), log);
  ASSERT_EQ(status, 0) << output;
  const Checkpoint ckpt = Checkpoint::open(out);
  EXPECT_EQ(ckpt.tensor("model.layers.0.mlp.experts.7.down_proj.weight").info->dtype, DType::U8);
  EXPECT_EQ(ckpt.tensor("model.layers.0.mlp.gate.weight").info->dtype, DType::BF16);
  EXPECT_EQ(ckpt.tensor("lm_head.weight").info->dtype, DType::BF16);
  EXPECT_EQ(scalar_of(ckpt, "model.layers.3.self_attn.q_proj.weight_scale_2"),
            scalar_of(ckpt, "model.layers.3.self_attn.v_proj.weight_scale_2"));
  EXPECT_EQ(load_quant_config(out).algo, QuantAlgo::Nvfp4);
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));

  std::tie(status, output) = run_cli(
      "quantize --in " + synth.string() + " --out " + fresh_dir("cli_calib").string() + " --calib-prompts prompts.txt",
      log);
  EXPECT_NE(status, 0);
  EXPECT_THAT(output, HasSubstr("--calib-prompts prompts.txt"));
}

}  // namespace
}  // namespace fp4serve::test
