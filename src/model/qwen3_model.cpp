#include "model/qwen3_model.h"

#include <fmt/format.h>

#include "common/error.h"

namespace fp4serve {

namespace {

// Whether every module of a fused group is quantized; a group that is half excluded cannot be fused.
bool group_is_quantized(const QuantConfig& quant, const std::vector<std::string>& modules) {
  if (quant.algo != QuantAlgo::Nvfp4) return false;
  const bool first_excluded = quant.is_excluded(modules.front());
  for (const std::string& module : modules)
    FP4_CHECK(quant.is_excluded(module) == first_excluded,
              "quantization config excludes '{}' but not '{}' (or the reverse): modules fused into one layer must be "
              "quantized alike; fix exclude_modules in hf_quant_config.json",
              first_excluded ? modules.front() : module, first_excluded ? module : modules.front());
  return !first_excluded;
}

std::vector<std::string> shard_prefixes(const LinearSpec& spec) {
  std::vector<std::string> prefixes;
  for (const LinearShard& shard : spec.shards) prefixes.push_back(shard.checkpoint_prefix);
  return prefixes;
}

}  // namespace

Qwen3Model::Qwen3Model(const ModelConfig& config, const QuantConfig& quant, const QuantOptions& options)
    : config_(config),
      quant_(quant),
      options_(options),
      params_(MemoryArena::create(options.device, device_memory_bytes(options.device))) {
  const int64_t H = config.hidden_size, head_dim = config.head_dim, V = config.vocab_size;
  const int64_t q_size = int64_t{config.num_attention_heads} * head_dim;
  const int64_t kv_size = int64_t{config.num_key_value_heads} * head_dim;

  embed_tokens_ = make_linear_method(
      {.name = "model.embed_tokens", .in_features = H, .shards = {{"model.embed_tokens", V}}}, false, options_);
  embed_tokens_->create_weights(params_);
  if (config.tie_word_embeddings) {
    FP4_CHECK(quant.algo != QuantAlgo::Nvfp4 || quant.is_excluded("lm_head"),
              "lm_head is tied to model.embed_tokens, which stays bf16, but the quantization config does not exclude "
              "it: add \"lm_head\" to exclude_modules in hf_quant_config.json");
  } else {
    lm_head_ = make_linear({.name = "lm_head", .in_features = H, .shards = {{"lm_head", V}}}, true);
  }
  add_norm("model.norm.weight", H);

  for (int l = 0; l < config.num_hidden_layers; ++l) {
    Layer layer;
    layer.prefix = fmt::format("model.layers.{}", l);
    const std::string& p = layer.prefix;
    layer.qkv_proj = make_linear({.name = p + ".self_attn.qkv_proj",
                                  .in_features = H,
                                  .shards = {{p + ".self_attn.q_proj", q_size},
                                             {p + ".self_attn.k_proj", kv_size},
                                             {p + ".self_attn.v_proj", kv_size}}},
                                 true);
    layer.o_proj = make_linear(
        {.name = p + ".self_attn.o_proj", .in_features = q_size, .shards = {{p + ".self_attn.o_proj", H}}}, true);
    add_norm(p + ".self_attn.q_norm.weight", head_dim);
    add_norm(p + ".self_attn.k_norm.weight", head_dim);
    add_norm(p + ".input_layernorm.weight", H);
    add_norm(p + ".post_attention_layernorm.weight", H);
    if (config.is_moe_layer(l)) {
      const int64_t E = config.num_experts, I = config.moe_intermediate_size;
      layer.router = make_linear_method({.name = p + ".mlp.gate", .in_features = H, .shards = {{p + ".mlp.gate", E}}},
                                        false, options_);
      layer.router->create_weights(params_);
      std::vector<std::string> expert_modules;
      for (int64_t e = 0; e < E; ++e)
        for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
          expert_modules.push_back(fmt::format("{}.mlp.experts.{}.{}", p, e, proj));
      const bool quantized = group_is_quantized(quant, expert_modules);
      is_nvfp4_ = is_nvfp4_ || quantized;
      layer.experts = make_moe_method({.name = p + ".mlp.experts",
                                       .checkpoint_prefix = p + ".mlp.experts",
                                       .n_experts = E,
                                       .hidden = H,
                                       .intermediate = I},
                                      quantized, options_);
      layer.experts->create_weights(params_);
    } else {
      const int64_t I = config.intermediate_size;
      FP4_CHECK(I > 0, "config.json: layer {} is a dense MLP layer but intermediate_size is {}", l, I);
      layer.gate_up_proj = make_linear({.name = p + ".mlp.gate_up_proj",
                                        .in_features = H,
                                        .shards = {{p + ".mlp.gate_proj", I}, {p + ".mlp.up_proj", I}}},
                                       true);
      layer.down_proj =
          make_linear({.name = p + ".mlp.down_proj", .in_features = I, .shards = {{p + ".mlp.down_proj", H}}}, true);
    }
    layers_.push_back(std::move(layer));
  }
  if (options_.device == Device::CUDA) check_cuda_support();
}

Qwen3Model::~Qwen3Model() = default;

std::unique_ptr<LinearMethod> Qwen3Model::make_linear(LinearSpec spec, bool can_quantize) {
  const bool quantized = can_quantize && group_is_quantized(quant_, shard_prefixes(spec));
  is_nvfp4_ = is_nvfp4_ || quantized;
  auto method = make_linear_method(std::move(spec), quantized, options_);
  method->create_weights(params_);
  return method;
}

void Qwen3Model::add_norm(const std::string& name, int64_t size) {
  params_.add(name, Tensor::empty({size}, DType::BF16, options_.device));
  norm_names_.push_back(name);
}

std::vector<const LinearMethod*> Qwen3Model::linear_methods() const {
  std::vector<const LinearMethod*> methods{embed_tokens_.get()};
  if (lm_head_) methods.push_back(lm_head_.get());
  for (const Layer& layer : layers_)
    for (const auto* method : {&layer.qkv_proj, &layer.o_proj, &layer.router, &layer.gate_up_proj, &layer.down_proj})
      if (*method) methods.push_back(method->get());
  return methods;
}

std::vector<CheckpointBinding> Qwen3Model::checkpoint_bindings() const {
  std::vector<CheckpointBinding> bindings;
  for (const LinearMethod* method : linear_methods()) method->bind_checkpoint(bindings);
  for (const Layer& layer : layers_)
    if (layer.experts) layer.experts->bind_checkpoint(bindings);
  for (const std::string& name : norm_names_)
    bindings.push_back({.checkpoint_name = name,
                        .dtype = DType::BF16,
                        .shape = params_.get(name).shape,
                        .param = name,
                        .role = BindingRole::Norm});
  return bindings;
}

std::vector<OnlineQuantGroup> Qwen3Model::online_quant_groups() const {
  std::vector<OnlineQuantGroup> groups;
  for (const LinearMethod* method : linear_methods()) method->bind_online_quant(groups);
  for (const Layer& layer : layers_)
    if (layer.experts) layer.experts->bind_online_quant(groups);
  return groups;
}

void Qwen3Model::mark_raw_weights_loaded() { weight_state_ = WeightState::RawLoaded; }

void Qwen3Model::process_weights_after_loading() {
  FP4_CHECK(weight_state_ != WeightState::Empty,
            "process_weights_after_loading called before any weights were loaded: load a checkpoint first");
  FP4_CHECK(weight_state_ == WeightState::RawLoaded,
            "process_weights_after_loading called twice after one load: the parameters already hold derived "
            "layouts; post-processing must run exactly once per load (reload the checkpoint to run it again)");
  weight_state_ = WeightState::Empty;  // a failure halfway leaves parameters that only a new load can repair
  for (const LinearMethod* method : linear_methods()) method->process_weights_after_loading(params_);
  for (const Layer& layer : layers_)
    if (layer.experts) layer.experts->process_weights_after_loading(params_);
  if (options_.device == Device::CUDA) prepare_cuda_forward();
  weight_state_ = WeightState::Ready;
}

std::vector<std::pair<std::string, Tensor>> Qwen3Model::export_logical() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const LinearMethod* method : linear_methods()) method->export_logical(params_, out);
  for (const Layer& layer : layers_)
    if (layer.experts) layer.experts->export_logical(params_, out);
  for (const std::string& name : norm_names_) out.emplace_back(name, to_host(params_.get(name)));
  return out;
}

}  // namespace fp4serve
