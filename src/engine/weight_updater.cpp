#include "engine/weight_updater.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <set>

#include "common/error.h"
#include "io/quant_config.h"
#include "quant/group_quant.h"

namespace fp4serve {

void check_same_model(const ModelConfig& served, const ModelConfig& candidate, std::string_view source) {
  auto same = [&](std::string_view field, const auto& a, const auto& b) {
    if (a != b) fail("{}: {} differs from the served model's; a reload must keep the model's architecture", source, field);
  };
  same("architectures", served.architecture, candidate.architecture);
  same("hidden_size", served.hidden_size, candidate.hidden_size);
  same("num_hidden_layers", served.num_hidden_layers, candidate.num_hidden_layers);
  same("num_attention_heads", served.num_attention_heads, candidate.num_attention_heads);
  same("num_key_value_heads", served.num_key_value_heads, candidate.num_key_value_heads);
  same("head_dim", served.head_dim, candidate.head_dim);
  same("intermediate_size", served.intermediate_size, candidate.intermediate_size);
  same("moe_intermediate_size", served.moe_intermediate_size, candidate.moe_intermediate_size);
  same("num_experts", served.num_experts, candidate.num_experts);
  same("num_experts_per_tok", served.num_experts_per_tok, candidate.num_experts_per_tok);
  same("norm_topk_prob", served.norm_topk_prob, candidate.norm_topk_prob);
  same("decoder_sparse_step", served.decoder_sparse_step, candidate.decoder_sparse_step);
  same("mlp_only_layers", served.mlp_only_layers, candidate.mlp_only_layers);
  same("vocab_size", served.vocab_size, candidate.vocab_size);
  same("rms_norm_eps", served.rms_norm_eps, candidate.rms_norm_eps);
  same("rope_theta", served.rope_theta, candidate.rope_theta);
  same("tie_word_embeddings", served.tie_word_embeddings, candidate.tie_word_embeddings);
}

WeightUpdater::WeightUpdater(LoadableModel& model, ModelConfig served_config, LoadOptions options)
    : model_(model), served_config_(std::move(served_config)), loader_(model, std::move(options)) {}

LoadResult WeightUpdater::load(const std::filesystem::path& dir) {
  check_same_model(served_config_, load_model_config(dir), (dir / "config.json").string());
  QuantConfig quant = load_quant_config(dir);
  SourceFormat format = SourceFormat::Native;
  if (quant.algo == QuantAlgo::Nvfp4) {
    FP4_CHECK(model_.is_nvfp4(), "{}: the checkpoint is NVFP4 but the served model is bf16; restart the server on an "
              "NVFP4 checkpoint to serve NVFP4 weights", dir.string());
  } else if (model_.is_nvfp4()) {
    format = SourceFormat::Bf16Online;
  }
  bool first = loader_.state() == WeightLoader::State::Empty;
  LoadResult result = loader_.load(dir, format);
  if (!first) ++reloads_;
  log_load(first ? "loaded" : "reloaded", result);
  return result;
}

void WeightUpdater::log_load(std::string_view what, const LoadResult& result) const {
  spdlog::info("{} {} ({}{} tensors, {:.1f} MB) in {:.3f} s: validate {:.3f} s, write {:.3f} s, post-process {:.3f} s; "
               "peak staging {:.1f} MB; {} read thread{}",
               what, result.source, result.format == SourceFormat::Bf16Online ? "bf16 quantized on load, " : "",
               result.tensors, result.bytes / 1e6,
               result.validate_seconds + result.commit_seconds + result.post_process_seconds, result.validate_seconds,
               result.commit_seconds, result.post_process_seconds, result.peak_staging_bytes / 1e6, result.threads,
               result.threads == 1 ? "" : "s");
}

namespace {

std::string_view module_of(std::string_view name) { return name.substr(0, name.rfind('.')); }

// The tensors an update names, sorted by how they are loaded, every name and dtype and shape checked.
struct UpdatePlan {
  std::vector<const NamedTensor*> native;  // in the model's format: copied as given
  // Per online quantization group: the indices of the members given (bf16), in group order, and their tensors.
  std::map<size_t, std::map<size_t, const NamedTensor*>> online;
};

UpdatePlan plan_update(const std::vector<CheckpointBinding>& bindings,
                       const std::vector<OnlineQuantGroup>& groups, std::span<const NamedTensor> tensors,
                       std::string_view source) {
  std::map<std::string, const CheckpointBinding*, std::less<>> binding_of;
  std::map<std::string, std::vector<const CheckpointBinding*>, std::less<>> module_bindings;
  for (const CheckpointBinding& b : bindings) {
    binding_of.emplace(b.checkpoint_name, &b);
    module_bindings[std::string(module_of(b.checkpoint_name))].push_back(&b);
  }
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> online_member;  // name -> (group, member)
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t m = 0; m < groups[g].checkpoint_names.size(); ++m) online_member[groups[g].checkpoint_names[m]] = {g, m};

  UpdatePlan plan;
  std::set<std::string, std::less<>> given, online_modules;
  for (const NamedTensor& t : tensors) {
    FP4_CHECK(given.insert(t.name).second, "{}: tensor '{}' is given twice", source, t.name);
    const auto binding = binding_of.find(t.name);
    const auto member = online_member.find(t.name);
    FP4_CHECK(binding != binding_of.end() || member != online_member.end(),
              "{}: tensor '{}' is not a tensor of this model (names are the checkpoint's, e.g. '{}')", source, t.name,
              bindings.front().checkpoint_name);
    if (member != online_member.end() && t.dtype == DType::BF16) {
      const auto [g, m] = member->second;
      const Shape expected{groups[g].n_rows[m], groups[g].in_features};
      FP4_CHECK(t.shape == expected, "{}: tensor '{}': shape is {}, expected {} (a bf16 weight, quantized online)",
                source, t.name, shape_to_string(t.shape), shape_to_string(expected));
      plan.online[g][m] = &t;
      online_modules.insert(std::string(module_of(t.name)));
      continue;
    }
    const std::string also_bf16 = member != online_member.end() ? " (NVFP4), or BF16 (quantized online)" : "";
    FP4_CHECK(binding != binding_of.end(), "{}: tensor '{}': dtype is {}, expected BF16 (quantized online)", source,
              t.name, dtype_name(t.dtype));
    const CheckpointBinding& b = *binding->second;
    FP4_CHECK(t.dtype == b.dtype, "{}: tensor '{}': dtype is {}, expected {}{}", source, t.name,
              dtype_name(t.dtype), dtype_name(b.dtype), also_bf16);
    FP4_CHECK(t.shape == b.shape, "{}: tensor '{}': shape is {}, expected {}", source, t.name,
              shape_to_string(t.shape), shape_to_string(b.shape));
    plan.native.push_back(&t);
  }

  // A quantized module's tensors describe one quantization together: all of them, or its bf16 weight alone.
  for (const NamedTensor* t : plan.native) {
    const std::string_view module = module_of(t->name);
    const std::vector<const CheckpointBinding*>& siblings = module_bindings.find(module)->second;
    const bool quantized = std::any_of(siblings.begin(), siblings.end(),
                                       [](const CheckpointBinding* b) { return b->role == BindingRole::BlockScale; });
    if (!quantized) continue;
    const BindingRole role = binding_of.find(t->name)->second->role;
    if (online_modules.contains(module)) {
      FP4_CHECK(role == BindingRole::InputScale,
                "{}: tensor '{}' is given with {}.weight in bf16, which is quantized online and gets its own scales: "
                "send the bf16 weight alone, or the module's NVFP4 weight with all of its scales",
                source, t->name, module);
      continue;
    }
    for (const CheckpointBinding* b : siblings)
      FP4_CHECK(b->optional || given.contains(b->checkpoint_name),
                "{}: tensor '{}' (NVFP4) is given without '{}': an NVFP4 module's weight, weight_scale and "
                "weight_scale_2 come together in one call",
                source, t->name, b->checkpoint_name);
  }
  return plan;
}

}  // namespace

LoadResult WeightUpdater::update(std::span<const NamedTensor> tensors, std::string_view source, bool replace_all) {
  FP4_CHECK(loader_.state() == WeightLoader::State::Loaded,
            "{}: the served weights are inconsistent after a failed load; load a checkpoint directory first", source);
  FP4_CHECK(!tensors.empty(), "{}: no tensors given", source);
  const std::vector<CheckpointBinding> bindings = model_.checkpoint_bindings();
  const std::vector<OnlineQuantGroup> groups =
      model_.is_nvfp4() ? model_.online_quant_groups() : std::vector<OnlineQuantGroup>{};
  const UpdatePlan plan = plan_update(bindings, groups, tensors, source);

  // The quantized bytes of the bf16 weights given, per member: weight, weight_scale, weight_scale_2.
  std::deque<std::vector<uint8_t>> quantized;  // a deque: growing it moves none of the buffers referenced below
  std::vector<NamedTensor> overlay;
  for (const auto& [g, members] : plan.online) {
    const OnlineQuantGroup& group = groups[g];
    const int64_t k = group.in_features;
    std::vector<GroupMember> inputs;
    std::vector<std::string> names;
    int64_t rows = 0;
    for (const auto& [m, t] : members) {
      inputs.push_back({{reinterpret_cast<const bf16_bits*>(t->bytes.data()), t->bytes.size() / 2}, t->shape[0]});
      names.push_back(t->name);
      rows += t->shape[0];
    }
    std::vector<uint8_t>& packed = quantized.emplace_back(static_cast<size_t>(rows * k / 2));
    std::vector<uint8_t>& scales = quantized.emplace_back(static_cast<size_t>(rows * k / 16));
    std::vector<uint8_t>& global = quantized.emplace_back(sizeof(float));
    const float global_scale = quantize_group(inputs, k, packed.data(), scales.data(),
                                              fmt::format("{}: {}", source, fmt::join(names, " + ")));
    std::memcpy(global.data(), &global_scale, sizeof(float));
    int64_t first_row = 0;
    for (const auto& [m, t] : members) {
      const int64_t n = t->shape[0];
      const std::string module(module_of(t->name));
      overlay.push_back({module + ".weight", DType::U8, {n, k / 2},
                         std::span<const uint8_t>(packed).subspan(first_row * k / 2, n * k / 2)});
      overlay.push_back({module + ".weight_scale", DType::F8_E4M3, {n, k / 16},
                         std::span<const uint8_t>(scales).subspan(first_row * k / 16, n * k / 16)});
      overlay.push_back({module + ".weight_scale_2", DType::F32, {}, global});
      first_row += n;
    }
  }
  for (const NamedTensor* t : plan.native) overlay.push_back(*t);

  // The served weights in checkpoint form: what is not given, and what a failed write restores.
  const std::vector<std::pair<std::string, Tensor>> exported = model_.export_logical();
  std::vector<NamedTensor> served, next;
  std::map<std::string_view, const NamedTensor*> replacement;
  for (const NamedTensor& t : overlay) replacement[t.name] = &t;
  size_t replaced = 0;
  for (const auto& [name, tensor] : exported) {
    served.push_back({name, tensor.dtype, tensor.shape, {tensor.raw(), tensor.nbytes()}});
    const auto it = replacement.find(name);
    replaced += it != replacement.end();
    next.push_back(it == replacement.end() ? served.back() : *it->second);
  }
  FP4_CHECK(replaced == replacement.size(), "internal error: {} of the {} tensors to write are not exported by the model",
            replacement.size() - replaced, replacement.size());
  if (replace_all && replaced < served.size()) {
    const auto kept = std::find_if(served.begin(), served.end(),
                                   [&](const NamedTensor& t) { return !replacement.contains(t.name); });
    fail("{}: the served weights were discarded at a memory release, so an update must give every tensor of the model "
         "(or load a directory with /update_weights_from_disk); {} are missing, e.g. '{}'",
         source, served.size() - replaced, kept->name);
  }

  // Discarded weights are no state to go back to (their bytes would not even pass validation).
  LoadResult result = loader_.load(source, next, replace_all ? std::span<const NamedTensor>{} : served);
  ++reloads_;
  log_load(fmt::format("updated {} tensors from", tensors.size()), result);
  return result;
}

}  // namespace fp4serve
