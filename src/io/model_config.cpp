#include "io/model_config.h"

#include <algorithm>
#include <climits>

#include <fmt/format.h>

#include "common/error.h"
#include "io/json_file.h"

namespace fp4serve {

namespace {

int to_int(int64_t value, std::string_view field, std::string_view source) {
  FP4_CHECK(value >= INT_MIN && value <= INT_MAX, "{}: field '{}' = {} is out of range", source, field, value);
  return static_cast<int>(value);
}

int required_positive(const nlohmann::json& config, std::string_view field, std::string_view source) {
  const int value = to_int(required_int(config, field, source), field, source);
  FP4_CHECK(value > 0, "{}: field '{}' must be positive, got {}", source, field, value);
  return value;
}

// bos_token_id / eos_token_id: an integer, a list of integers, or null; each must be a valid token id.
std::vector<int> token_ids(const nlohmann::json& config, std::string_view field, int vocab_size,
                           std::string_view source) {
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) return {};
  const nlohmann::json list = it->is_array() ? *it : nlohmann::json::array({*it});
  std::vector<int> ids;
  for (const auto& item : list) {
    FP4_CHECK(item.is_number_integer(), "{}: field '{}' must be an integer or a list of integers, got {}", source,
              field, it->dump());
    const int64_t id = item.get<int64_t>();
    FP4_CHECK(id >= 0 && id < vocab_size, "{}: field '{}' holds token id {} outside the vocabulary [0, {})", source,
              field, id, vocab_size);
    ids.push_back(static_cast<int>(id));
  }
  return ids;
}

nlohmann::json token_ids_json(const std::vector<int>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

}  // namespace

std::string_view architecture_name(Architecture architecture) {
  return architecture == Architecture::Qwen3Moe ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM";
}

bool ModelConfig::is_moe_layer(int layer) const {
  FP4_CHECK(layer >= 0 && layer < num_hidden_layers, "is_moe_layer: layer {} outside [0, {})", layer,
            num_hidden_layers);
  const bool mlp_only = std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end();
  return !mlp_only && num_experts > 0 && (layer + 1) % decoder_sparse_step == 0;
}

ModelConfig parse_model_config(const nlohmann::json& config, std::string_view source) {
  FP4_CHECK(config.is_object(), "{}: expected a JSON object, got {}", source, json_type_name(config));
  ModelConfig c;

  const auto architectures = optional_string_list(config, "architectures", source);
  FP4_CHECK(architectures.size() == 1, "{}: field 'architectures' must name exactly one architecture, got {}",
            source, architectures.size());
  if (architectures[0] == architecture_name(Architecture::Qwen3Moe)) {
    c.architecture = Architecture::Qwen3Moe;
  } else if (architectures[0] == architecture_name(Architecture::Qwen3)) {
    c.architecture = Architecture::Qwen3;
  } else {
    fail("{}: field 'architectures' is '{}'; fp4serve supports Qwen3MoeForCausalLM and Qwen3ForCausalLM", source,
         architectures[0]);
  }

  c.hidden_size = required_positive(config, "hidden_size", source);
  c.num_hidden_layers = required_positive(config, "num_hidden_layers", source);
  c.num_attention_heads = required_positive(config, "num_attention_heads", source);
  c.num_key_value_heads = required_positive(config, "num_key_value_heads", source);
  FP4_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
            "{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source,
            c.num_attention_heads, c.num_key_value_heads);
  if (config.contains("head_dim") && !config["head_dim"].is_null()) {
    c.head_dim = required_positive(config, "head_dim", source);
  } else {
    FP4_CHECK(c.hidden_size % c.num_attention_heads == 0,
              "{}: head_dim is absent and hidden_size ({}) is not a multiple of num_attention_heads ({})", source,
              c.hidden_size, c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  FP4_CHECK(c.head_dim % 2 == 0, "{}: field 'head_dim' must be even for rotary embeddings, got {}", source,
            c.head_dim);

  if (c.architecture == Architecture::Qwen3Moe) {
    c.moe_intermediate_size = required_positive(config, "moe_intermediate_size", source);
    c.num_experts = required_positive(config, "num_experts", source);
    c.num_experts_per_tok = required_positive(config, "num_experts_per_tok", source);
    FP4_CHECK(c.num_experts_per_tok <= c.num_experts,
              "{}: num_experts_per_tok ({}) must not exceed num_experts ({})", source, c.num_experts_per_tok,
              c.num_experts);
    c.norm_topk_prob = required_bool(config, "norm_topk_prob", source);
    c.decoder_sparse_step = to_int(optional_int(config, "decoder_sparse_step", source).value_or(1),
                                   "decoder_sparse_step", source);
    FP4_CHECK(c.decoder_sparse_step >= 1, "{}: field 'decoder_sparse_step' must be >= 1, got {}", source,
              c.decoder_sparse_step);
    if (config.contains("mlp_only_layers") && !config["mlp_only_layers"].is_null()) {
      const auto& layers = config["mlp_only_layers"];
      FP4_CHECK(layers.is_array(), "{}: field 'mlp_only_layers' must be a list of layer indices, got {}", source,
                json_type_name(layers));
      for (const auto& layer : layers) {
        FP4_CHECK(layer.is_number_integer() && layer.get<int64_t>() >= 0 &&
                      layer.get<int64_t>() < c.num_hidden_layers,
                  "{}: field 'mlp_only_layers' holds {}, not a layer index in [0, {})", source, layer.dump(),
                  c.num_hidden_layers);
        c.mlp_only_layers.push_back(layer.get<int>());
      }
    }
  }
  // The dense width is needed by Qwen3 and by any MoE-model layer that the HF rule makes dense.
  bool any_dense_layer = false;
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) any_dense_layer |= !c.is_moe_layer(layer);
  if (any_dense_layer) {
    c.intermediate_size = required_positive(config, "intermediate_size", source);
  } else {
    c.intermediate_size = to_int(optional_int(config, "intermediate_size", source).value_or(0), "intermediate_size",
                                 source);
  }

  c.vocab_size = required_positive(config, "vocab_size", source);
  c.rms_norm_eps = required_number(config, "rms_norm_eps", source);
  FP4_CHECK(c.rms_norm_eps > 0, "{}: field 'rms_norm_eps' must be positive, got {}", source, c.rms_norm_eps);
  c.rope_theta = required_number(config, "rope_theta", source);
  FP4_CHECK(c.rope_theta > 0, "{}: field 'rope_theta' must be positive, got {}", source, c.rope_theta);
  c.max_position_embeddings = required_positive(config, "max_position_embeddings", source);
  c.tie_word_embeddings = optional_bool(config, "tie_word_embeddings", source).value_or(false);

  auto rope_scaling = config.find("rope_scaling");
  FP4_CHECK(rope_scaling == config.end() || rope_scaling->is_null(),
            "{}: field 'rope_scaling' = {} is not supported (only null, plain RoPE)", source, rope_scaling->dump());
  FP4_CHECK(!optional_bool(config, "attention_bias", source).value_or(false),
            "{}: field 'attention_bias' is true; Qwen3 attention has no bias and fp4serve does not support one",
            source);
  FP4_CHECK(!optional_bool(config, "use_sliding_window", source).value_or(false),
            "{}: field 'use_sliding_window' is true; sliding-window attention is not supported", source);
  const std::string hidden_act = optional_string(config, "hidden_act", source).value_or("silu");
  FP4_CHECK(hidden_act == "silu", "{}: field 'hidden_act' is '{}'; only 'silu' is supported", source, hidden_act);
  // Newer transformers write "dtype" where older ones wrote "torch_dtype".
  c.torch_dtype = optional_string(config, "torch_dtype", source)
                      .value_or(optional_string(config, "dtype", source).value_or("bfloat16"));

  c.bos_token_ids = token_ids(config, "bos_token_id", c.vocab_size, source);
  c.eos_token_ids = token_ids(config, "eos_token_id", c.vocab_size, source);
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& checkpoint_dir) {
  const std::filesystem::path path = checkpoint_dir / "config.json";
  return parse_model_config(read_json_file(path), path.string());
}

nlohmann::json to_json(const ModelConfig& c) {
  const bool moe = c.architecture == Architecture::Qwen3Moe;
  nlohmann::json config = {
      {"architectures", {architecture_name(c.architecture)}},
      {"model_type", moe ? "qwen3_moe" : "qwen3"},
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"intermediate_size", c.intermediate_size},
      {"vocab_size", c.vocab_size},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", nullptr},
      {"max_position_embeddings", c.max_position_embeddings},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"hidden_act", "silu"},
      {"initializer_range", 0.02},
      {"use_cache", true},
      {"use_sliding_window", false},
      {"sliding_window", nullptr},
      {"torch_dtype", c.torch_dtype},
      {"bos_token_id", token_ids_json(c.bos_token_ids)},
      {"eos_token_id", token_ids_json(c.eos_token_ids)},
  };
  if (moe) {
    config["moe_intermediate_size"] = c.moe_intermediate_size;
    config["num_experts"] = c.num_experts;
    config["num_experts_per_tok"] = c.num_experts_per_tok;
    config["norm_topk_prob"] = c.norm_topk_prob;
    config["decoder_sparse_step"] = c.decoder_sparse_step;
    config["mlp_only_layers"] = c.mlp_only_layers;
    config["output_router_logits"] = false;
    config["router_aux_loss_coef"] = 0.001;
  }
  return config;
}

}  // namespace fp4serve
