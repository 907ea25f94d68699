#include "io/quant_config.h"

#include <optional>

#include <fmt/format.h>

#include "common/error.h"
#include "io/json_file.h"

namespace fp4serve {

namespace {

constexpr int kNvfp4GroupSize = 16;

QuantAlgo parse_algo(const nlohmann::json& object, std::string_view source) {
  const std::string algo = required_string(object, "quant_algo", source);
  FP4_CHECK(algo == "NVFP4", "{}: quant_algo '{}' is not supported; fp4serve loads ModelOpt NVFP4 checkpoints",
            source, algo);
  return QuantAlgo::Nvfp4;
}

void check_group_size(int64_t group_size, std::string_view field, std::string_view source) {
  FP4_CHECK(group_size == kNvfp4GroupSize, "{}: field '{}' is {}; NVFP4 requires {}", source, field, group_size,
            kNvfp4GroupSize);
}

void check_no_kv_cache_quant(const nlohmann::json& object, std::string_view field, std::string_view source) {
  auto it = object.find(field);
  FP4_CHECK(it == object.end() || it->is_null(),
            "{}: field '{}' = {}: KV-cache quantization is not supported yet (needs null)", source, field,
            it->dump());
}

// ModelOpt writes "producer" as {"name", "version"}; accept a plain string as well. Informational only.
std::string producer_string(const nlohmann::json& object, std::string_view source) {
  auto producer = object.find("producer");
  if (producer == object.end() || producer->is_null()) return "";
  if (producer->is_string()) return producer->get<std::string>();
  const std::string where = fmt::format("{} (producer)", source);
  return fmt::format("{} {}", optional_string(*producer, "name", where).value_or("?"),
                     optional_string(*producer, "version", where).value_or("?"));
}

}  // namespace

std::string_view quant_algo_name(QuantAlgo algo) { return algo == QuantAlgo::Nvfp4 ? "NVFP4" : "none"; }

bool glob_match(std::string_view pattern, std::string_view text) {
  // Greedy with one backtrack point: on mismatch, let the last '*' swallow one more character.
  size_t p = 0, t = 0, star = std::string_view::npos, star_text = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_text = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++star_text;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

bool QuantConfig::is_excluded(std::string_view module_name) const {
  for (const std::string& pattern : exclude_modules)
    if (glob_match(pattern, module_name)) return true;
  return false;
}

QuantConfig parse_hf_quant_config(const nlohmann::json& hf_quant_config, std::string_view source) {
  FP4_CHECK(hf_quant_config.is_object() && hf_quant_config.contains("quantization") &&
                hf_quant_config["quantization"].is_object(),
            "{}: expected an object with a 'quantization' object (ModelOpt format)", source);
  const nlohmann::json& quantization = hf_quant_config["quantization"];
  const std::string where = fmt::format("{} (quantization)", source);
  QuantConfig config;
  config.algo = parse_algo(quantization, where);
  const int64_t group_size = required_int(quantization, "group_size", where);
  check_group_size(group_size, "group_size", where);
  config.group_size = static_cast<int>(group_size);
  check_no_kv_cache_quant(quantization, "kv_cache_quant_algo", where);
  config.exclude_modules = optional_string_list(quantization, "exclude_modules", where);
  config.producer = producer_string(hf_quant_config, source);
  return config;
}

QuantConfig parse_quantization_config(const nlohmann::json& quantization_config, std::string_view source) {
  const std::string where = fmt::format("{} (quantization_config)", source);
  FP4_CHECK(quantization_config.is_object(), "{}: expected an object, got {}", where,
            json_type_name(quantization_config));
  const std::string method = required_string(quantization_config, "quant_method", where);
  FP4_CHECK(method != "compressed-tensors",
            "{}: quant_method 'compressed-tensors' (llm-compressor) is not supported yet, use a ModelOpt NVFP4 "
            "checkpoint", where);
  FP4_CHECK(method == "modelopt", "{}: quant_method '{}' is not supported; fp4serve loads ModelOpt NVFP4 checkpoints",
            where, method);
  QuantConfig config;
  config.algo = parse_algo(quantization_config, where);
  // Flat "group_size" (older ModelOpt), else every config_groups.*.weights.group_size (newer ModelOpt).
  if (auto flat = optional_int(quantization_config, "group_size", where)) {
    check_group_size(*flat, "group_size", where);
  } else {
    auto groups = quantization_config.find("config_groups");
    FP4_CHECK(groups != quantization_config.end() && groups->is_object() && !groups->empty(),
              "{}: no 'group_size' and no 'config_groups' giving one", where);
    for (const auto& [name, group] : groups->items()) {
      const std::string field = fmt::format("config_groups.{}.weights", name);
      FP4_CHECK(group.is_object() && group.contains("weights"), "{}: '{}' is missing", where, field);
      check_group_size(required_int(group["weights"], "group_size", where), field + ".group_size", where);
    }
  }
  config.group_size = kNvfp4GroupSize;
  check_no_kv_cache_quant(quantization_config, "kv_cache_quant_algo", where);
  check_no_kv_cache_quant(quantization_config, "kv_cache_scheme", where);
  config.exclude_modules = quantization_config.contains("exclude_modules")
                               ? optional_string_list(quantization_config, "exclude_modules", where)
                               : optional_string_list(quantization_config, "ignore", where);
  config.producer = producer_string(quantization_config, where);
  return config;
}

QuantConfig load_quant_config(const std::filesystem::path& checkpoint_dir) {
  // Both files are validated when present; both parsers accept only NVFP4 with group 16, so they cannot disagree.
  std::optional<QuantConfig> from_config;
  const std::filesystem::path config_path = checkpoint_dir / "config.json";
  if (std::filesystem::exists(config_path)) {
    const nlohmann::json config = read_json_file(config_path);
    if (config.is_object() && config.contains("quantization_config") && !config["quantization_config"].is_null())
      from_config = parse_quantization_config(config["quantization_config"], config_path.string());
  }
  const std::filesystem::path hf_path = checkpoint_dir / kHfQuantConfigFile;
  if (std::filesystem::exists(hf_path)) return parse_hf_quant_config(read_json_file(hf_path), hf_path.string());
  return from_config.value_or(QuantConfig{});
}

nlohmann::json to_json(const QuantConfig& config) {
  FP4_CHECK(config.algo == QuantAlgo::Nvfp4, "to_json(QuantConfig): an unquantized checkpoint has no {}",
            kHfQuantConfigFile);
  return {{"producer", {{"name", "fp4serve"}, {"version", "0"}}},
          {"quantization",
           {{"quant_algo", "NVFP4"},
            {"group_size", config.group_size},
            {"kv_cache_quant_algo", nullptr},
            {"exclude_modules", config.exclude_modules}}}};
}

nlohmann::json to_quantization_config_json(const QuantConfig& config) {
  FP4_CHECK(config.algo == QuantAlgo::Nvfp4, "to_quantization_config_json: an unquantized checkpoint has none");
  return {{"quant_method", "modelopt"},
          {"quant_algo", "NVFP4"},
          {"group_size", config.group_size},
          {"kv_cache_quant_algo", nullptr},
          {"exclude_modules", config.exclude_modules},
          {"producer", {{"name", "fp4serve"}, {"version", "0"}}}};
}

}  // namespace fp4serve
