// config.json (ModelConfig) and quantization configs (hf_quant_config.json / quantization_config): real-world
// files parse to the documented values; every invalid field is rejected with the file and field named.
#include <gtest/gtest.h>

#include "io/json_file.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "tests/io/io_test_util.h"

namespace fp4serve {
namespace {

using io_test::expect_error;
using io_test::TempDir;
using json = nlohmann::json;

// Qwen/Qwen3-30B-A3B's config.json as published.
json qwen3_30b_a3b_config() {
  return json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
    "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
    "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
}

json qwen3_dense_config() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 16,
    "num_key_value_heads": 8, "intermediate_size": 3072, "vocab_size": 1000, "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "max_position_embeddings": 4096, "tie_word_embeddings": true, "eos_token_id": [1, 2]})");
}

void expect_config_error(const json& config, std::initializer_list<std::string_view> fragments) {
  expect_error([&] { parse_model_config(config, "ckpt/config.json"); }, fragments);
  expect_error([&] { parse_model_config(config, "ckpt/config.json"); }, {"ckpt/config.json"});
}

TEST(ModelConfig, ParsesQwen3_30B_A3B) {
  const ModelConfig c = parse_model_config(qwen3_30b_a3b_config(), "config.json");
  EXPECT_EQ(c.architecture, Architecture::Qwen3Moe);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 48);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 128);  // explicit; 2048 / 32 would be 64
  EXPECT_EQ(c.intermediate_size, 6144);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.bos_token_ids, (std::vector<int>{151643}));
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{151645}));
  for (int layer = 0; layer < 48; ++layer) EXPECT_TRUE(c.is_moe_layer(layer)) << layer;
}

TEST(ModelConfig, ParsesDenseQwen3WithDefaults) {
  const ModelConfig c = parse_model_config(qwen3_dense_config(), "config.json");
  EXPECT_EQ(c.architecture, Architecture::Qwen3);
  EXPECT_EQ(c.head_dim, 64);  // absent: hidden_size / num_attention_heads
  EXPECT_EQ(c.num_experts, 0);
  EXPECT_EQ(c.intermediate_size, 3072);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.bos_token_ids.empty());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{1, 2}));
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(1));
  expect_error([&] { c.is_moe_layer(2); }, {"layer 2"});
}

TEST(ModelConfig, MoeLayerRuleFollowsSparseStepAndMlpOnlyLayers) {
  json config = qwen3_30b_a3b_config();
  config["num_hidden_layers"] = 6;
  config["decoder_sparse_step"] = 2;
  config["mlp_only_layers"] = {3};
  const ModelConfig c = parse_model_config(config, "config.json");
  // (layer + 1) % 2 == 0 -> layers 1, 3, 5; layer 3 is forced dense.
  const std::vector<bool> expected = {false, true, false, false, false, true};
  for (int layer = 0; layer < 6; ++layer) EXPECT_EQ(c.is_moe_layer(layer), expected[layer]) << layer;

  // Dense layers in an MoE model need intermediate_size; an all-MoE model does not.
  config.erase("intermediate_size");
  expect_config_error(config, {"'intermediate_size'", "missing"});
  json all_moe = qwen3_30b_a3b_config();
  all_moe.erase("intermediate_size");
  EXPECT_EQ(parse_model_config(all_moe, "config.json").intermediate_size, 0);
}

TEST(ModelConfig, ToJsonRoundTrips) {
  for (const json& source : {qwen3_30b_a3b_config(), qwen3_dense_config()}) {
    json varied = source;
    if (varied.contains("num_experts")) {
      varied["mlp_only_layers"] = {0, 5};
      varied["eos_token_id"] = {151645, 151643};
    }
    const ModelConfig a = parse_model_config(varied, "a");
    const json written = to_json(a);
    const ModelConfig b = parse_model_config(written, "b");
    EXPECT_EQ(written["architectures"][0], source["architectures"][0]);
    EXPECT_EQ(b.architecture, a.architecture);
    EXPECT_EQ(b.hidden_size, a.hidden_size);
    EXPECT_EQ(b.num_hidden_layers, a.num_hidden_layers);
    EXPECT_EQ(b.num_attention_heads, a.num_attention_heads);
    EXPECT_EQ(b.num_key_value_heads, a.num_key_value_heads);
    EXPECT_EQ(b.head_dim, a.head_dim);
    EXPECT_EQ(b.intermediate_size, a.intermediate_size);
    EXPECT_EQ(b.moe_intermediate_size, a.moe_intermediate_size);
    EXPECT_EQ(b.num_experts, a.num_experts);
    EXPECT_EQ(b.num_experts_per_tok, a.num_experts_per_tok);
    EXPECT_EQ(b.norm_topk_prob, a.norm_topk_prob);
    EXPECT_EQ(b.decoder_sparse_step, a.decoder_sparse_step);
    EXPECT_EQ(b.mlp_only_layers, a.mlp_only_layers);
    EXPECT_EQ(b.vocab_size, a.vocab_size);
    EXPECT_EQ(b.rms_norm_eps, a.rms_norm_eps);
    EXPECT_EQ(b.rope_theta, a.rope_theta);
    EXPECT_EQ(b.max_position_embeddings, a.max_position_embeddings);
    EXPECT_EQ(b.tie_word_embeddings, a.tie_word_embeddings);
    EXPECT_EQ(b.torch_dtype, a.torch_dtype);
    EXPECT_EQ(b.bos_token_ids, a.bos_token_ids);
    EXPECT_EQ(b.eos_token_ids, a.eos_token_ids);
  }
}

TEST(ModelConfig, RejectsMissingOrMistypedFields) {
  json missing = qwen3_30b_a3b_config();
  missing.erase("hidden_size");
  expect_config_error(missing, {"'hidden_size'", "missing"});
  json as_string = qwen3_30b_a3b_config();
  as_string["num_experts"] = "128";
  expect_config_error(as_string, {"'num_experts'", "integer", "string"});
  json as_float = qwen3_30b_a3b_config();
  as_float["hidden_size"] = 2048.5;
  expect_config_error(as_float, {"'hidden_size'", "integer"});
  json bool_as_int = qwen3_30b_a3b_config();
  bool_as_int["norm_topk_prob"] = 1;
  expect_config_error(bool_as_int, {"'norm_topk_prob'", "true or false"});
  json eps_string = qwen3_30b_a3b_config();
  eps_string["rms_norm_eps"] = "1e-6";
  expect_config_error(eps_string, {"'rms_norm_eps'", "number"});
  json no_norm_topk = qwen3_30b_a3b_config();
  no_norm_topk.erase("norm_topk_prob");  // HF's default (false) differs from Qwen's models (true): must be explicit
  expect_config_error(no_norm_topk, {"'norm_topk_prob'", "missing"});
  expect_config_error(json::array(), {"JSON object"});
}

TEST(ModelConfig, RejectsUnsupportedArchitecturesAndFeatures) {
  json llama = qwen3_30b_a3b_config();
  llama["architectures"] = {"LlamaForCausalLM"};
  expect_config_error(llama, {"'architectures'", "LlamaForCausalLM", "Qwen3MoeForCausalLM"});
  json none = qwen3_30b_a3b_config();
  none.erase("architectures");
  expect_config_error(none, {"'architectures'"});
  json rope = qwen3_30b_a3b_config();
  rope["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_config_error(rope, {"'rope_scaling'", "yarn", "not supported"});
  json bias = qwen3_30b_a3b_config();
  bias["attention_bias"] = true;
  expect_config_error(bias, {"'attention_bias'"});
  json gelu = qwen3_30b_a3b_config();
  gelu["hidden_act"] = "gelu";
  expect_config_error(gelu, {"'hidden_act'", "gelu", "silu"});
  json window = qwen3_30b_a3b_config();
  window["use_sliding_window"] = true;
  expect_config_error(window, {"'use_sliding_window'"});
}

TEST(ModelConfig, RejectsInconsistentSizes) {
  json heads = qwen3_30b_a3b_config();
  heads["num_key_value_heads"] = 5;
  expect_config_error(heads, {"num_attention_heads (32)", "num_key_value_heads (5)"});
  json topk = qwen3_30b_a3b_config();
  topk["num_experts_per_tok"] = 129;
  expect_config_error(topk, {"num_experts_per_tok (129)", "num_experts (128)"});
  json zero = qwen3_30b_a3b_config();
  zero["moe_intermediate_size"] = 0;
  expect_config_error(zero, {"'moe_intermediate_size'", "positive"});
  json negative = qwen3_30b_a3b_config();
  negative["vocab_size"] = -1;
  expect_config_error(negative, {"'vocab_size'", "positive"});
  json odd_head = qwen3_30b_a3b_config();
  odd_head["head_dim"] = 127;
  expect_config_error(odd_head, {"'head_dim'", "even"});
  json no_head_dim = qwen3_dense_config();
  no_head_dim["num_attention_heads"] = 24;
  no_head_dim["num_key_value_heads"] = 8;
  expect_config_error(no_head_dim, {"head_dim", "hidden_size (1024)", "num_attention_heads (24)"});
  json eos = qwen3_30b_a3b_config();
  eos["eos_token_id"] = {151645, 151936};
  expect_config_error(eos, {"'eos_token_id'", "151936", "outside the vocabulary"});
  json layers = qwen3_30b_a3b_config();
  layers["mlp_only_layers"] = {48};
  expect_config_error(layers, {"'mlp_only_layers'", "48"});
  json step = qwen3_30b_a3b_config();
  step["decoder_sparse_step"] = 0;
  expect_config_error(step, {"'decoder_sparse_step'"});
}

TEST(ModelConfig, LoadsFromDirectoryAndRejectsDuplicateKeys) {
  TempDir dir;
  expect_error([&] { load_model_config(dir.path()); }, {"config.json", "cannot open"});
  write_json_file(dir / "config.json", qwen3_30b_a3b_config());
  EXPECT_EQ(load_model_config(dir.path()).num_experts, 128);
  io_test::write_file(dir / "config.json", R"({"hidden_size": 1, "hidden_size": 2})");
  expect_error([&] { load_model_config(dir.path()); }, {"config.json", "duplicate key 'hidden_size'"});
}

// Found while writing the request-body fuzz targets: 100000 levels of [ overflowed the parser's recursion.
TEST(JsonText, RefusesDeepNestingWithAnErrorInsteadOfOverflowingTheStack) {
  const int limit = kMaxJsonDepth;
  for (const char* open_close : {"[]", "{}"}) {
    std::string nested_ok;
    for (int i = 0; i < limit; ++i) nested_ok += open_close[0] == '[' ? "[" : "{\"k\":";
    nested_ok += "1";
    for (int i = 0; i < limit; ++i) nested_ok += open_close[1];
    EXPECT_NO_THROW(parse_json_text(nested_ok, "ok.json")) << open_close;
  }
  const int deep = 100000;
  const std::string too_deep = "{\"input_ids\": " + std::string(deep, '[') + std::string(deep, ']') + "}";
  expect_error([&] { parse_json_text(too_deep, "request body"); }, {"request body", "nested deeper than 128"});
  expect_error([&] { parse_json_text(std::string(limit + 1, '['), "x.json"); }, {"x.json", "nested"});
}

// Found by fuzz_checkpoint_index: a number beyond double's range threw nlohmann's out_of_range, not Error.
TEST(JsonText, ANumberOutOfRangeIsMalformedJson) {
  expect_error([&] { parse_json_text(R"({"weight_map": 1e999})", "index.json"); },
               {"index.json", "malformed", "1e999"});
  expect_error([&] { parse_json_text("-1e400", "x.json"); }, {"x.json", "malformed"});
}

// ------------------------------------------------------------------------------------------------------ quantization

// The shape of nvidia/Qwen3-30B-A3B-NVFP4's hf_quant_config.json.
json modelopt_hf_quant_config() {
  return json::parse(R"({
    "producer": {"name": "modelopt", "version": "0.29.0"},
    "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": null, "group_size": 16,
                     "exclude_modules": ["lm_head", "model.layers.*.mlp.gate"]}})");
}

TEST(GlobMatch, MatchesLikeFnmatch) {
  EXPECT_TRUE(glob_match("lm_head", "lm_head"));
  EXPECT_FALSE(glob_match("lm_head", "lm_head2"));
  EXPECT_FALSE(glob_match("lm_head", "model.lm_head"));
  EXPECT_TRUE(glob_match("model.layers.*.mlp.gate", "model.layers.17.mlp.gate"));
  EXPECT_FALSE(glob_match("model.layers.*.mlp.gate", "model.layers.17.mlp.gate_proj"));
  EXPECT_TRUE(glob_match("model.layers.*.mlp.gate*", "model.layers.17.mlp.gate_proj"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("*self_attn*", "model.layers.0.self_attn.q_proj"));  // '*' crosses dots
  EXPECT_TRUE(glob_match("a*b*c", "aXbYbZc"));
  EXPECT_FALSE(glob_match("a*b*c", "aXbYbZ"));
  EXPECT_TRUE(glob_match("layer.?", "layer.7"));
  EXPECT_FALSE(glob_match("layer.?", "layer.17"));
  EXPECT_FALSE(glob_match("", "x"));
  EXPECT_TRUE(glob_match("", ""));
  EXPECT_TRUE(glob_match("**x", "abx"));
  EXPECT_FALSE(glob_match("?", ""));
}

TEST(QuantConfig, ParsesModelOptHfQuantConfig) {
  const QuantConfig q = parse_hf_quant_config(modelopt_hf_quant_config(), "hf_quant_config.json");
  EXPECT_EQ(q.algo, QuantAlgo::Nvfp4);
  EXPECT_EQ(q.group_size, 16);
  EXPECT_EQ(q.producer, "modelopt 0.29.0");
  EXPECT_TRUE(q.is_excluded("lm_head"));
  EXPECT_TRUE(q.is_excluded("model.layers.47.mlp.gate"));
  EXPECT_FALSE(q.is_excluded("model.layers.47.mlp.experts.3.gate_proj"));
  EXPECT_FALSE(q.is_excluded("model.layers.0.self_attn.q_proj"));
  // Round trip through the writer.
  const QuantConfig back = parse_hf_quant_config(to_json(q), "written");
  EXPECT_EQ(back.exclude_modules, q.exclude_modules);
  EXPECT_EQ(back.group_size, 16);
  const QuantConfig embedded = parse_quantization_config(to_quantization_config_json(q), "written");
  EXPECT_EQ(embedded.exclude_modules, q.exclude_modules);
  EXPECT_EQ(embedded.producer, "fp4serve 0");
}

TEST(QuantConfig, ParsesConfigJsonQuantizationConfigVariants) {
  const QuantConfig flat = parse_quantization_config(
      json::parse(R"({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                      "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"]})"),
      "config.json");
  EXPECT_EQ(flat.algo, QuantAlgo::Nvfp4);
  EXPECT_EQ(flat.exclude_modules, std::vector<std::string>{"lm_head"});
  const QuantConfig grouped = parse_quantization_config(
      json::parse(R"({"quant_method": "modelopt", "quant_algo": "NVFP4",
                      "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 16},
                                                    "input_activations": {"num_bits": 4, "group_size": 16}}},
                      "ignore": ["lm_head", "model.layers.*.mlp.gate"],
                      "producer": {"name": "modelopt", "version": "0.33.0"}})"),
      "config.json");
  EXPECT_EQ(grouped.group_size, 16);
  EXPECT_EQ(grouped.producer, "modelopt 0.33.0");
  EXPECT_TRUE(grouped.is_excluded("model.layers.2.mlp.gate"));
}

TEST(QuantConfig, RejectsUnsupportedSchemes) {
  expect_error([] {
    parse_quantization_config(
        json::parse(R"({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"})"), "ckpt/config.json");
  }, {"ckpt/config.json", "compressed-tensors", "not supported yet, use a ModelOpt NVFP4 checkpoint"});
  expect_error([] { parse_quantization_config(json::parse(R"({"quant_method": "gptq"})"), "ckpt/config.json"); },
               {"ckpt/config.json", "'gptq'"});
  json fp8 = modelopt_hf_quant_config();
  fp8["quantization"]["quant_algo"] = "FP8";
  expect_error([&] { parse_hf_quant_config(fp8, "ckpt/hf_quant_config.json"); },
               {"ckpt/hf_quant_config.json", "quant_algo 'FP8'"});
  expect_error([] {
    parse_quantization_config(json::parse(R"({"quant_method": "modelopt", "quant_algo": "NVFP4",
        "config_groups": {"group_0": {"weights": {"group_size": 32}}}})"), "ckpt/config.json");
  }, {"ckpt/config.json", "config_groups.group_0.weights.group_size", "32"});
  json group32 = modelopt_hf_quant_config();
  group32["quantization"]["group_size"] = 32;
  expect_error([&] { parse_hf_quant_config(group32, "ckpt/hf_quant_config.json"); },
               {"ckpt/hf_quant_config.json", "'group_size'", "32", "16"});
  json kv = modelopt_hf_quant_config();
  kv["quantization"]["kv_cache_quant_algo"] = "FP8";
  expect_error([&] { parse_hf_quant_config(kv, "ckpt/hf_quant_config.json"); },
               {"ckpt/hf_quant_config.json", "'kv_cache_quant_algo'", "FP8", "not supported yet"});
  json bad_exclude = modelopt_hf_quant_config();
  bad_exclude["quantization"]["exclude_modules"] = {"lm_head", 3};
  expect_error([&] { parse_hf_quant_config(bad_exclude, "ckpt/hf_quant_config.json"); },
               {"ckpt/hf_quant_config.json", "exclude_modules[1]"});
  expect_error([] { parse_hf_quant_config(json::parse(R"({"quant_algo": "NVFP4"})"), "ckpt/hf_quant_config.json"); },
               {"ckpt/hf_quant_config.json", "'quantization'"});
}

TEST(QuantConfig, LoadsFromDirectory) {
  TempDir dir;
  json config = qwen3_30b_a3b_config();
  write_json_file(dir / "config.json", config);
  EXPECT_EQ(load_quant_config(dir.path()).algo, QuantAlgo::None);  // neither file: unquantized bf16

  write_json_file(dir / kHfQuantConfigFile, modelopt_hf_quant_config());
  EXPECT_EQ(load_quant_config(dir.path()).algo, QuantAlgo::Nvfp4);

  config["quantization_config"] = {{"quant_method", "modelopt"}, {"quant_algo", "NVFP4"}, {"group_size", 16}};
  write_json_file(dir / "config.json", config);
  EXPECT_EQ(load_quant_config(dir.path()).exclude_modules.size(), 2u);  // hf_quant_config.json wins

  config["quantization_config"]["quant_method"] = "compressed-tensors";
  write_json_file(dir / "config.json", config);
  expect_error([&] { load_quant_config(dir.path()); }, {"config.json", "compressed-tensors"});

  std::filesystem::remove(dir / kHfQuantConfigFile);
  config["quantization_config"] = {{"quant_method", "modelopt"}, {"quant_algo", "NVFP4"}, {"group_size", 16}};
  write_json_file(dir / "config.json", config);
  EXPECT_EQ(load_quant_config(dir.path()).algo, QuantAlgo::Nvfp4);  // config.json alone
}

}  // namespace
}  // namespace fp4serve
