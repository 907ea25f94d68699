#include "test_support.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>

#include "format/bf16.h"
#include "format/nvfp4.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "quant/group_quant.h"

namespace fp4serve::testing_support {

namespace fs = std::filesystem;

ModelConfig tiny_config(Architecture architecture, bool tie_word_embeddings) {
  ModelConfig c;
  c.architecture = architecture;
  c.hidden_size = 128;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  if (architecture == Architecture::Qwen3Moe) {
    c.moe_intermediate_size = 64;
    c.num_experts = 8;
    c.num_experts_per_tok = 2;
    c.norm_topk_prob = true;
  } else {
    c.intermediate_size = 256;
  }
  c.vocab_size = 259;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = tie_word_embeddings;
  c.eos_token_ids = {258};
  return c;
}

namespace {

RawTensor random_bf16(const Shape& shape, uint64_t seed, const std::string& name, double mean, double stddev) {
  std::mt19937_64 rng(seed ^ std::hash<std::string>{}(name));
  std::normal_distribution<double> dist(mean, stddev);
  RawTensor t{DType::BF16, shape, std::vector<uint8_t>(static_cast<size_t>(shape_numel(shape)) * 2)};
  auto* values = reinterpret_cast<bf16_bits*>(t.bytes.data());
  for (int64_t i = 0; i < shape_numel(shape); ++i) values[i] = float_to_bf16(static_cast<float>(dist(rng)));
  return t;
}

template <typename T>
RawTensor scalar(DType dtype, T value) {
  RawTensor t{dtype, {}, std::vector<uint8_t>(sizeof(T))};
  std::memcpy(t.bytes.data(), &value, sizeof(T));
  return t;
}

}  // namespace

TensorMap random_bf16_tensors(const ModelConfig& c, uint64_t seed) {
  TensorMap m;
  const int64_t H = c.hidden_size, D = c.head_dim, V = c.vocab_size;
  const int64_t q_size = int64_t{c.num_attention_heads} * D, kv_size = int64_t{c.num_key_value_heads} * D;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    m[name] = random_bf16({out, in}, seed, name, 0.0, 1.0 / std::sqrt(double(in)));
  };
  auto norm = [&](const std::string& name, int64_t size) { m[name] = random_bf16({size}, seed, name, 1.0, 0.1); };
  m["model.embed_tokens.weight"] = random_bf16({V, H}, seed, "model.embed_tokens.weight", 0.0, 1.0);
  if (!c.tie_word_embeddings) linear("lm_head.weight", V, H);
  norm("model.norm.weight", H);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}", l);
    linear(p + ".self_attn.q_proj.weight", q_size, H);
    linear(p + ".self_attn.k_proj.weight", kv_size, H);
    linear(p + ".self_attn.v_proj.weight", kv_size, H);
    linear(p + ".self_attn.o_proj.weight", H, q_size);
    norm(p + ".self_attn.q_norm.weight", D);
    norm(p + ".self_attn.k_norm.weight", D);
    norm(p + ".input_layernorm.weight", H);
    norm(p + ".post_attention_layernorm.weight", H);
    if (c.is_moe_layer(l)) {
      const std::string gate = p + ".mlp.gate.weight";
      m[gate] = random_bf16({c.num_experts, H}, seed, gate, 0.0, 2.0 / std::sqrt(double(H)));
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string x = fmt::format("{}.mlp.experts.{}", p, e);
        linear(x + ".gate_proj.weight", c.moe_intermediate_size, H);
        linear(x + ".up_proj.weight", c.moe_intermediate_size, H);
        linear(x + ".down_proj.weight", H, c.moe_intermediate_size);
      }
    } else {
      linear(p + ".mlp.gate_proj.weight", c.intermediate_size, H);
      linear(p + ".mlp.up_proj.weight", c.intermediate_size, H);
      linear(p + ".mlp.down_proj.weight", H, c.intermediate_size);
    }
  }
  return m;
}

QuantConfig nvfp4_quant_config() {
  QuantConfig q;
  q.algo = QuantAlgo::Nvfp4;
  q.group_size = 16;
  q.exclude_modules = {"lm_head", "model.embed_tokens", "model.layers.*.mlp.gate"};
  q.producer = "fp4serve tests";
  return q;
}

TensorMap quantize_tensors_nvfp4(const ModelConfig& c, const TensorMap& bf16, float input_scale) {
  TensorMap out = bf16;
  // Fused groups share weight_scale_2; every other quantized projection is a group of one.
  std::vector<std::vector<std::string>> groups;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}", l);
    groups.push_back({p + ".self_attn.q_proj", p + ".self_attn.k_proj", p + ".self_attn.v_proj"});
    groups.push_back({p + ".self_attn.o_proj"});
    if (c.is_moe_layer(l)) {
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string x = fmt::format("{}.mlp.experts.{}", p, e);
        groups.push_back({x + ".gate_proj", x + ".up_proj"});
        groups.push_back({x + ".down_proj"});
      }
    } else {
      groups.push_back({p + ".mlp.gate_proj", p + ".mlp.up_proj"});
      groups.push_back({p + ".mlp.down_proj"});
    }
  }
  for (const auto& group : groups) {
    std::vector<GroupMember> members;
    int64_t n_rows = 0;
    const int64_t K = bf16.at(group[0] + ".weight").shape[1];
    for (const std::string& prefix : group) {
      const RawTensor& w = bf16.at(prefix + ".weight");
      members.push_back(
          {{reinterpret_cast<const bf16_bits*>(w.bytes.data()), static_cast<size_t>(w.shape[0] * K)}, w.shape[0]});
      n_rows += w.shape[0];
    }
    std::vector<uint8_t> packed(static_cast<size_t>(n_rows * K / 2)), scales(static_cast<size_t>(n_rows * K / 16));
    const float weight_scale_2 = quantize_group(members, K, packed.data(), scales.data(), group[0]);
    int64_t row = 0;
    for (size_t i = 0; i < group.size(); ++i) {
      const int64_t rows = members[i].n_rows;
      out[group[i] + ".weight"] = {
          DType::U8, {rows, K / 2}, {packed.begin() + row * K / 2, packed.begin() + (row + rows) * K / 2}};
      out[group[i] + ".weight_scale"] = {
          DType::F8_E4M3, {rows, K / 16}, {scales.begin() + row * K / 16, scales.begin() + (row + rows) * K / 16}};
      out[group[i] + ".weight_scale_2"] = scalar(DType::F32, weight_scale_2);
      out[group[i] + ".input_scale"] = scalar(DType::F32, input_scale);
      row += rows;
    }
  }
  return out;
}

void write_checkpoint(const fs::path& dir, const ModelConfig& config, const QuantConfig& quant,
                      const TensorMap& tensors) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json config_json = to_json(config);
  write_json_file(dir / "config.json", config_json);
  if (quant.algo == QuantAlgo::Nvfp4) write_json_file(dir / kHfQuantConfigFile, to_json(quant));
  std::vector<TensorDecl> decls;
  for (const auto& [name, t] : tensors) decls.push_back({name, t.dtype, t.shape});
  SafetensorsWriter writer(dir / "model.safetensors", decls);
  for (const auto& [name, t] : tensors) writer.write(name, t.bytes);
  writer.finish();
}

SequenceRun run_sequence(Qwen3Model& model, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = model.config();
  const int64_t page_size = 16, n_pages = (static_cast<int64_t>(tokens.size()) + page_size - 1) / page_size;
  const Shape kv_shape{c.num_hidden_layers, n_pages, page_size, c.num_key_value_heads, c.head_dim};
  const KvCacheTensors kv{Tensor::empty(kv_shape, DType::BF16, Device::CPU),
                          Tensor::empty(kv_shape, DType::BF16, Device::CPU)};
  std::vector<int32_t> pages(static_cast<size_t>(n_pages));
  for (int64_t p = 0; p < n_pages; ++p) pages[p] = static_cast<int32_t>(n_pages - 1 - p);

  SequenceRun run;
  run.layer_outputs.resize(static_cast<size_t>(c.num_hidden_layers));
  auto as_doubles = [](const Tensor& t) { return std::vector<double>(t.data<float>(), t.data<float>() + t.numel()); };
  auto as_floats = [](const Tensor& t) { return std::vector<float>(t.data<float>(), t.data<float>() + t.numel()); };
  ForwardObserver observer{
      .on_linear_input = [&](const std::string& prefix,
                             const Tensor& input) { run.linear_inputs[prefix] = as_floats(input); },
      .on_moe_routing =
          [&](int layer, const Tensor& input, const Tensor& ids, const Tensor&) {
            run.router_ids[layer].assign(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
            run.linear_inputs[fmt::format("model.layers.{}.mlp.experts", layer)] = as_floats(input);
          },
      .on_layer_output = [&](int layer, const Tensor& hidden) { run.layer_outputs[layer] = as_doubles(hidden); },
  };
  const ForwardBatch batch{.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = pages}},
                           .kv_cache = &kv,
                           .all_logits = true,
                           .observer = &observer};
  run.logits = as_doubles(model.forward(batch).all_logits);
  return run;
}

}  // namespace fp4serve::testing_support
