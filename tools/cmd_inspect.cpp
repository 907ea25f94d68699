// fp4serve inspect: describes a checkpoint directory (architecture, quantization, every tensor grouped by layer with
// byte and parameter counts), as text or as one JSON object. Parameters count logical weights: a packed E2M1 byte
// of an NVFP4 checkpoint holds two, and NVFP4 scale tensors (weight_scale, weight_scale_2, input_scale) hold none.
#include <charconv>
#include <map>
#include <iostream>
#include <memory>
#include <optional>

#include "common/error.h"
#include "io/checkpoint.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "tools/commands.h"

namespace fp4serve::tools {

namespace {

struct InspectOptions {
  std::string dir;
  bool json = false;
};

struct TensorGroup {
  std::optional<int> layer;  // nullopt: the "other" group (embeddings, final norm, lm_head)
  std::vector<const CheckpointTensor*> tensors;
  uint64_t bytes = 0;
  uint64_t params = 0;
};

// N for names under "model.layers.N.", else nullopt.
std::optional<int> layer_of(std::string_view name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  int layer = 0;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), layer);
  if (ec != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '.') return std::nullopt;
  return layer;
}

uint64_t logical_params(const TensorInfo& info, const QuantConfig& quant) {
  const uint64_t numel = shape_numel(info.shape, info.name);
  if (quant.algo != QuantAlgo::Nvfp4) return numel;
  for (std::string_view scale_suffix : {".weight_scale", ".weight_scale_2", ".input_scale"})
    if (info.name.ends_with(scale_suffix)) return 0;
  return info.dtype == DType::U8 && info.name.ends_with(".weight") ? 2 * numel : numel;
}

std::string group_name(const TensorGroup& group) {
  return group.layer ? fmt::format("layer {}", *group.layer) : "other";
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) value /= 1024, ++unit;
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", value, units[unit]);
}

std::string describe_config(const ModelConfig& c) {
  std::string text =
      fmt::format("{}: {} layers, hidden {}, heads {}/{} x {}, vocab {}", architecture_name(c.architecture),
                  c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                  c.vocab_size);
  if (c.num_experts > 0)
    text += fmt::format(", {} experts top-{} (moe_intermediate {})", c.num_experts, c.num_experts_per_tok,
                        c.moe_intermediate_size);
  if (c.architecture == Architecture::Qwen3 || c.intermediate_size > 0)
    text += fmt::format(", intermediate {}", c.intermediate_size);
  return text + (c.tie_word_embeddings ? ", tied embeddings" : "");
}

void run_inspect(const InspectOptions& options) {
  const std::filesystem::path dir = options.dir;
  const Checkpoint checkpoint = Checkpoint::open(dir);
  std::optional<ModelConfig> config;
  if (std::filesystem::exists(dir / "config.json")) config = load_model_config(dir);
  const QuantConfig quant = load_quant_config(dir);

  std::map<int, TensorGroup> layers;
  TensorGroup other;
  for (const std::string& name : checkpoint.tensor_names()) {
    const CheckpointTensor& tensor = checkpoint.tensor(name);
    const std::optional<int> layer = layer_of(name);
    TensorGroup& group = layer ? layers[*layer] : other;
    group.layer = layer;
    group.tensors.push_back(&tensor);
    group.bytes += tensor.info->nbytes;
    group.params += logical_params(*tensor.info, quant);
  }
  std::vector<const TensorGroup*> groups;
  for (const auto& [layer, group] : layers) groups.push_back(&group);
  if (!other.tensors.empty()) groups.push_back(&other);
  uint64_t total_bytes = 0, total_params = 0;
  for (const TensorGroup* g : groups) total_bytes += g->bytes, total_params += g->params;

  if (options.json) {
    nlohmann::ordered_json out;
    out["dir"] = dir.string();
    out["architecture"] = config ? nlohmann::ordered_json(architecture_name(config->architecture)) : nullptr;
    out["config"] = config ? nlohmann::ordered_json(to_json(*config)) : nullptr;
    out["quantization"] = {{"algo", quant_algo_name(quant.algo)},
                           {"group_size", quant.group_size},
                           {"exclude_modules", quant.exclude_modules},
                           {"producer", quant.producer}};
    nlohmann::ordered_json shards = nlohmann::ordered_json::array();
    for (const SafetensorsFile& shard : checkpoint.shards())
      shards.push_back(std::filesystem::path(shard.path()).filename().string());
    out["shards"] = shards;
    nlohmann::ordered_json group_list = nlohmann::ordered_json::array();
    for (const TensorGroup* g : groups) {
      nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
      for (const CheckpointTensor* t : g->tensors)
        tensors.push_back({{"name", t->info->name},
                           {"dtype", dtype_name(t->info->dtype)},
                           {"shape", t->info->shape},
                           {"bytes", t->info->nbytes},
                           {"params", logical_params(*t->info, quant)}});
      group_list.push_back({{"name", group_name(*g)},
                            {"layer", g->layer ? nlohmann::ordered_json(*g->layer) : nullptr},
                            {"tensors", tensors},
                            {"bytes", g->bytes},
                            {"params", g->params}});
    }
    out["groups"] = group_list;
    out["total"] = {{"tensors", checkpoint.num_tensors()}, {"bytes", total_bytes}, {"params", total_params}};
    std::cout << out.dump(2) << '\n';
    return;
  }

  fmt::print("checkpoint    {} ({} shards, {} tensors)\n", dir.string(), checkpoint.shards().size(),
             checkpoint.num_tensors());
  fmt::print("architecture  {}\n", config ? describe_config(*config) : "unknown (no config.json)");
  if (quant.algo == QuantAlgo::None) {
    fmt::print("quantization  none\n");
  } else {
    fmt::print("quantization  {}, group size {}, excluded: {}{}\n", quant_algo_name(quant.algo), quant.group_size,
               quant.exclude_modules.empty() ? "nothing" : fmt::format("{}", fmt::join(quant.exclude_modules, ", ")),
               quant.producer.empty() ? "" : fmt::format(" (producer {})", quant.producer));
  }
  for (const TensorGroup* g : groups) {
    fmt::print("\n{}: {} tensors, {}, {} params\n", group_name(*g), g->tensors.size(), human_bytes(g->bytes),
               g->params);
    for (const CheckpointTensor* t : g->tensors)
      fmt::print("  {:<56} {:<8} {:<16} {}\n", t->info->name, dtype_name(t->info->dtype),
                 shape_to_string(t->info->shape), t->info->nbytes);
  }
  fmt::print("\ntotal: {} tensors, {} ({} bytes), {} params\n", checkpoint.num_tensors(), human_bytes(total_bytes),
             total_bytes, total_params);
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a checkpoint: architecture, quantization, tensors by layer");
  cmd->add_option("dir", options->dir, "Checkpoint directory")->required();
  cmd->add_flag("--json", options->json, "Print one JSON object instead of text");
  cmd->callback([options] { run_inspect(*options); });
}

}  // namespace fp4serve::tools
