// JSON text parsed as config.json (parse_model_config), as hf_quant_config.json (parse_hf_quant_config) and, from
// its "quantization_config", as config.json's quantization block. What parses writes back (to_json) and parses
// again to the same config; an accepted config is consistent; exclude patterns match the names they spell.
#include <algorithm>

#include "fuzz/fuzz_util.h"
#include "io/json_file.h"
#include "io/model_config.h"
#include "io/quant_config.h"

using namespace fp4serve;

namespace {

void check_model_config(const nlohmann::json& json) {
  fuzz::allow_error([&] {
    const ModelConfig config = parse_model_config(json, "config.json");
    FUZZ_EXPECT(config.hidden_size > 0 && config.num_hidden_layers > 0 && config.vocab_size > 0 &&
                    config.head_dim > 0 && config.num_attention_heads > 0 && config.num_key_value_heads > 0,
                "an accepted config has a non-positive size");
    FUZZ_EXPECT(config.num_attention_heads % config.num_key_value_heads == 0, "heads {} not divisible by KV heads {}",
                config.num_attention_heads, config.num_key_value_heads);
    FUZZ_EXPECT(config.num_experts == 0 ||
                    (config.num_experts_per_tok >= 1 && config.num_experts_per_tok <= config.num_experts),
                "top-k {} outside [1, {}]", config.num_experts_per_tok, config.num_experts);
    for (const std::vector<int>* ids : {&config.bos_token_ids, &config.eos_token_ids})
      for (int id : *ids) FUZZ_EXPECT(id >= 0 && id < config.vocab_size, "token id {} outside the vocabulary", id);
    for (int layer = 0; layer < std::min(config.num_hidden_layers, 4); ++layer) config.is_moe_layer(layer);
    const ModelConfig again = parse_model_config(to_json(config), "to_json(config.json)");
    FUZZ_EXPECT(again == config, "to_json does not round-trip: {}", to_json(config).dump());
  });
}

// to_json writes fp4serve as the producer; everything else must come back.
void check_round_trip(const QuantConfig& config, const QuantConfig& again) {
  FUZZ_EXPECT(again.algo == config.algo && again.group_size == config.group_size &&
                  again.exclude_modules == config.exclude_modules,
              "the quantization config does not round-trip through to_json");
}

void check_quant_config(const QuantConfig& config) {
  FUZZ_EXPECT(config.algo == QuantAlgo::Nvfp4 && config.group_size == 16, "an accepted config is not NVFP4/16");
  for (const std::string& pattern : config.exclude_modules) {
    // The text a pattern spells with every '*' empty and every '?' one character always matches it.
    std::string spelled;
    for (char c : pattern)
      if (c != '*') spelled += c == '?' ? 'x' : c;
    FUZZ_EXPECT(glob_match(pattern, spelled), "pattern '{}' does not match '{}'", pattern, spelled);
    FUZZ_EXPECT(config.is_excluded(spelled), "'{}' is not excluded by its own pattern", spelled);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const nlohmann::json json = parse_json_text(fuzz::as_text(data, size), "config.json");
    check_model_config(json);
    fuzz::allow_error([&] {
      const QuantConfig config = parse_hf_quant_config(json, "hf_quant_config.json");
      check_quant_config(config);
      check_round_trip(config, parse_hf_quant_config(to_json(config), "to_json"));
    });
    if (json.is_object() && json.contains("quantization_config")) {
      fuzz::allow_error([&] {
        const QuantConfig config = parse_quantization_config(json["quantization_config"], "config.json");
        check_quant_config(config);
        check_round_trip(config, parse_quantization_config(to_quantization_config_json(config), "to_json"));
      });
    }
  });
  return 0;
}
