// Quantization of a checkpoint directory: ModelOpt NVFP4 (hf_quant_config.json, or config.json's
// quantization_config with quant_method "modelopt") or none (plain bf16). A parsed NVFP4 config always has
// group_size 16 and no KV-cache quantization; other schemes (compressed-tensors, FP8, ...) are rejected clearly.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace fp4serve {

enum class QuantAlgo { None, Nvfp4 };
std::string_view quant_algo_name(QuantAlgo algo);  // "none" | "NVFP4"

inline constexpr std::string_view kHfQuantConfigFile = "hf_quant_config.json";

struct QuantConfig {
  QuantAlgo algo = QuantAlgo::None;
  int group_size = 0;  // elements per block scale: 16 for NVFP4, 0 when unquantized
  // Globs over module names, e.g. "lm_head", "model.layers.*.mlp.gate".
  std::vector<std::string> exclude_modules = {};
  std::string producer = {};  // e.g. "modelopt 0.31.0"; informational, may be empty

  // Whether a module (a name without ".weight", e.g. "model.layers.3.mlp.gate") stays unquantized: true when any
  // exclude pattern matches the whole name.
  bool is_excluded(std::string_view module_name) const;
};

// fnmatch-style match of the whole text: '*' matches any run of characters (dots included), '?' one character;
// every other character matches itself.
bool glob_match(std::string_view pattern, std::string_view text);

QuantConfig parse_hf_quant_config(const nlohmann::json& hf_quant_config, std::string_view source);
// config.json's "quantization_config" object.
QuantConfig parse_quantization_config(const nlohmann::json& quantization_config, std::string_view source);
// hf_quant_config.json if present, else config.json's quantization_config, else QuantAlgo::None (bf16).
QuantConfig load_quant_config(const std::filesystem::path& checkpoint_dir);

nlohmann::json to_json(const QuantConfig& config);                       // hf_quant_config.json contents
nlohmann::json to_quantization_config_json(const QuantConfig& config);  // config.json's quantization_config

}  // namespace fp4serve
