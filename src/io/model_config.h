// The HF config.json of a Qwen3-MoE or Qwen3 dense model (field names as in HF). A parsed ModelConfig is
// consistent: sizes positive, heads divisible by KV heads, 1 <= k <= E, token ids inside the vocabulary; features
// we do not implement (rope_scaling, attention bias, sliding window, non-silu activations) are rejected.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace fp4serve {

enum class Architecture { Qwen3Moe, Qwen3 };
std::string_view architecture_name(Architecture architecture);  // "Qwen3MoeForCausalLM" | "Qwen3ForCausalLM"

struct ModelConfig {
  Architecture architecture = Architecture::Qwen3Moe;
  int hidden_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;               // config's head_dim, else hidden_size / num_attention_heads
  int intermediate_size = 0;      // dense MLP width (Qwen3, and MoE models' mlp_only_layers); 0 if unused
  int moe_intermediate_size = 0;  // per-expert MLP width; 0 for Qwen3 dense
  int num_experts = 0;            // 0 for Qwen3 dense
  int num_experts_per_tok = 0;
  bool norm_topk_prob = false;
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers = {};
  int vocab_size = 0;
  double rms_norm_eps = 0;
  double rope_theta = 0;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  std::string torch_dtype = "bfloat16";
  std::vector<int> bos_token_ids = {};  // config's int or list; empty for null
  std::vector<int> eos_token_ids = {};

  // HF's rule: not in mlp_only_layers, num_experts > 0, and (layer + 1) % decoder_sparse_step == 0.
  bool is_moe_layer(int layer) const;
  bool operator==(const ModelConfig&) const = default;
};

// `source` names the file in error messages (e.g. "ckpt/config.json").
ModelConfig parse_model_config(const nlohmann::json& config, std::string_view source);
ModelConfig load_model_config(const std::filesystem::path& checkpoint_dir);  // reads checkpoint_dir/config.json
nlohmann::json to_json(const ModelConfig& config);  // an HF config.json that parse_model_config accepts back

}  // namespace fp4serve
