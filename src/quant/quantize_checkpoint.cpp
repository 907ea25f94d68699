#include "quant/quantize_checkpoint.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "common/error.h"
#include "format/nvfp4.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "quant/group_quant.h"

namespace fp4serve {

namespace {

constexpr std::string_view kWeightSuffix = ".weight";
constexpr const char* kCopiedFiles[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};

struct Member {
  std::string module;  // "model.layers.0.self_attn.q_proj"
  const TensorDecl* weight;
  int64_t rows;
};
struct Group {
  std::string name;
  std::vector<Member> members;
  int64_t in_features;
};

std::string_view module_of(std::string_view weight_name) {
  return weight_name.substr(0, weight_name.size() - kWeightSuffix.size());
}

std::string_view last_component(std::string_view module) {
  const size_t dot = module.rfind('.');
  return dot == std::string_view::npos ? module : module.substr(dot + 1);
}

// The quantized output of one group, handed to the writer tensor by tensor and then dropped.
struct GroupOutput {
  std::map<std::string, std::vector<uint8_t>, std::less<>> tensors;
};

GroupOutput quantize(const Group& group, const Bf16Model& model, const QuantizeOptions& options) {
  const int64_t k = group.in_features;
  int64_t total_rows = 0;
  std::vector<std::vector<bf16_bits>> values(group.members.size());
  std::vector<GroupMember> members;
  for (size_t i = 0; i < group.members.size(); ++i) {
    const Member& m = group.members[i];
    values[i].resize(static_cast<size_t>(m.rows * k));
    model.read(*m.weight, {reinterpret_cast<uint8_t*>(values[i].data()), values[i].size() * sizeof(bf16_bits)});
    members.push_back({values[i], m.rows});
    total_rows += m.rows;
  }
  std::vector<uint8_t> packed(static_cast<size_t>(total_rows * k / 2));
  std::vector<uint8_t> scales(static_cast<size_t>(total_rows * k / kNvfp4BlockSize));
  const float weight_scale_2 = quantize_group(members, k, packed.data(), scales.data(), group.name);

  float input_scale = 1.0f;
  if (!options.input_amax.empty()) {
    float amax = 0.0f;
    for (const Member& m : group.members) {
      auto it = options.input_amax.find(m.module);
      FP4_CHECK(it != options.input_amax.end(), "calibration recorded no input amax for linear '{}'", m.module);
      amax = std::max(amax, it->second);
    }
    input_scale = nvfp4_global_scale(amax);
  }
  auto scalar = [](float v) {
    std::vector<uint8_t> bytes(sizeof(float));
    std::memcpy(bytes.data(), &v, sizeof(float));
    return bytes;
  };
  GroupOutput out;
  int64_t first_row = 0;
  for (const Member& m : group.members) {
    const auto* packed_rows = packed.data() + first_row * (k / 2);
    const auto* scale_rows = scales.data() + first_row * (k / kNvfp4BlockSize);
    out.tensors[m.module + ".weight"].assign(packed_rows, packed_rows + m.rows * (k / 2));
    out.tensors[m.module + ".weight_scale"].assign(scale_rows, scale_rows + m.rows * (k / kNvfp4BlockSize));
    out.tensors[m.module + ".weight_scale_2"] = scalar(weight_scale_2);
    out.tensors[m.module + ".input_scale"] = scalar(input_scale);
    first_row += m.rows;
  }
  return out;
}

// Groups every quantized linear and checks the rules the output format needs.
std::vector<Group> plan_groups(const std::vector<TensorDecl>& tensors, std::string_view source,
                               const QuantConfig& quant) {
  std::map<std::string, Group> by_name;
  std::map<std::string, std::set<bool>> excluded_members;  // group -> {excluded?} over its members
  for (const TensorDecl& t : tensors) {
    if (!is_linear_weight(t)) continue;
    const std::string& name = t.name;
    const std::string module(module_of(name));
    const std::string group_name = fused_group_of(module);
    const bool excluded = quant.is_excluded(module);
    excluded_members[group_name].insert(excluded);
    if (excluded) continue;
    FP4_CHECK(t.dtype == DType::BF16, "{}: '{}' is {}; quantize reads bf16 checkpoints only", source, name,
              dtype_name(t.dtype));
    const int64_t rows = t.shape[0], k = t.shape[1];
    FP4_CHECK(k % kNvfp4BlockSize == 0,
              "{}: '{}' has {} input features, not a multiple of the NVFP4 block size 16; keep it bf16 with "
              "--exclude {}",
              source, name, k, module);
    Group& group = by_name[group_name];
    group.name = group_name;
    FP4_CHECK(group.members.empty() || group.in_features == k,
              "{}: '{}' has {} input features but the other members of fused group '{}' have {}", source, name,
              k, group_name, group.in_features);
    group.in_features = k;
    group.members.push_back({module, &t, rows});
  }
  for (const auto& [group_name, flags] : excluded_members)
    FP4_CHECK(flags.size() == 1,
              "exclude patterns keep part of fused group '{}' bf16 and quantize the rest; the server fuses the group "
              "into one layer, so exclude all of its members or none",
              group_name);
  std::vector<Group> groups;
  for (auto& [_, group] : by_name) groups.push_back(std::move(group));
  return groups;
}

void write_configs(const Bf16Model& model, const QuantizeOptions& options, const QuantConfig& quant,
                   bool calibrated) {
  nlohmann::json config = model.model_config;
  config["quantization_config"] = to_quantization_config_json(quant);
  write_json_file(options.output_dir / "config.json", config);
  nlohmann::json hf_quant = to_json(quant);
  hf_quant["fp4serve"] = {
      {"input_scales_calibrated", calibrated},
      {"input_scales",
       calibrated ? "amax / (6 * 448) of each linear's calibrated input, max over fused groups"
                  : "uncalibrated: every input_scale is 1.0; serve with --act-quant none or per-token, or requantize "
                    "with --calib-prompts for static W4A4"}};
  write_json_file(options.output_dir / kHfQuantConfigFile, hf_quant);
}

}  // namespace

std::vector<std::string> default_exclude_modules() {
  return {"lm_head", "model.layers.*.mlp.gate", "model.embed_tokens"};
}

bool is_linear_weight(const TensorDecl& tensor) {
  if (tensor.shape.size() != 2 || !tensor.name.ends_with(kWeightSuffix)) return false;
  const std::string_view module = module_of(tensor.name);
  const std::string_view last = last_component(module);
  return last.ends_with("_proj") || module == "lm_head" || last == "gate";
}

std::string fused_group_of(std::string_view module) {
  const std::string_view last = last_component(module);
  const std::string_view parent = module.substr(0, module.size() - last.size());  // keeps the trailing '.'
  if (parent.ends_with("self_attn.") && (last == "q_proj" || last == "k_proj" || last == "v_proj"))
    return std::string(parent) + "qkv_proj";
  if (last == "gate_proj" || last == "up_proj") return std::string(parent) + "gate_up_proj";
  return std::string(module);
}

QuantizeSummary write_quantized_checkpoint(const Bf16Model& model, const QuantizeOptions& options) {
  QuantConfig quant{
      .algo = QuantAlgo::Nvfp4, .group_size = 16, .exclude_modules = default_exclude_modules(), .producer = "fp4serve"};
  for (const auto& pattern : options.exclude)
    if (std::find(quant.exclude_modules.begin(), quant.exclude_modules.end(), pattern) == quant.exclude_modules.end())
      quant.exclude_modules.push_back(pattern);
  std::vector<TensorDecl> inputs = model.tensors;
  std::sort(inputs.begin(), inputs.end(), [](const TensorDecl& a, const TensorDecl& b) { return a.name < b.name; });
  const std::vector<Group> groups = plan_groups(inputs, model.source, quant);

  // Output order: input name order, except that a group's tensors all follow its first member, so the writer asks
  // for one group at a time.
  QuantizeSummary summary{.groups = static_cast<int64_t>(groups.size()), .calibrated = !options.input_amax.empty()};
  std::map<std::string, size_t, std::less<>> group_of_weight;
  for (size_t g = 0; g < groups.size(); ++g)
    for (const Member& m : groups[g].members) group_of_weight[m.module + ".weight"] = g;
  CheckpointWriter writer(options.output_dir, options.max_shard_bytes);
  std::map<std::string, size_t, std::less<>> group_of_output;  // output tensor name -> group
  std::set<size_t> planned;
  for (const TensorDecl& input : inputs) {
    auto it = group_of_weight.find(input.name);
    if (it == group_of_weight.end()) {
      writer.add(input);
      ++summary.kept_tensors;
      continue;
    }
    if (!planned.insert(it->second).second) continue;
    for (const Member& m : groups[it->second].members) {
      const int64_t k = groups[it->second].in_features;
      const std::pair<std::string, TensorDecl> outputs[] = {
          {".weight", {"", DType::U8, {m.rows, k / 2}}},
          {".weight_scale", {"", DType::F8_E4M3, {m.rows, k / kNvfp4BlockSize}}},
          {".weight_scale_2", {"", DType::F32, {}}},
          {".input_scale", {"", DType::F32, {}}}};
      for (auto [suffix, decl] : outputs) {
        decl.name = m.module + suffix;
        group_of_output[decl.name] = it->second;
        writer.add(decl);
      }
      ++summary.quantized_linears;
    }
  }

  GroupOutput current;
  writer.write([&](const TensorDecl& decl, std::span<uint8_t> out) {
    auto group = group_of_output.find(decl.name);
    if (group == group_of_output.end()) {
      model.read(decl, out);
      return;
    }
    if (!current.tensors.contains(decl.name)) current = quantize(groups[group->second], model, options);
    auto node = current.tensors.extract(decl.name);
    FP4_CHECK(node.mapped().size() == out.size(), "quantize: internal size mismatch for '{}'", decl.name);
    std::memcpy(out.data(), node.mapped().data(), out.size());
  });
  write_configs(model, options, quant, summary.calibrated);
  spdlog::info("quantize: {} linears in {} groups to NVFP4, {} tensors kept, input scales {}",
               summary.quantized_linears, summary.groups, summary.kept_tensors,
               summary.calibrated ? "calibrated" : "uncalibrated (1.0)");
  return summary;
}

QuantizeSummary quantize_checkpoint(const QuantizeOptions& options) {
  FP4_CHECK(
      std::filesystem::weakly_canonical(options.input_dir) != std::filesystem::weakly_canonical(options.output_dir),
      "quantize: --out must differ from --in ({})", options.input_dir.string());
  load_model_config(options.input_dir);  // rejects what the server could not load
  FP4_CHECK(load_quant_config(options.input_dir).algo == QuantAlgo::None,
            "{}: the checkpoint is already quantized; quantize reads bf16 checkpoints", options.input_dir.string());
  const Checkpoint in = Checkpoint::open(options.input_dir);
  Bf16Model model{.source = options.input_dir.string(),
                  .read = [&in](const TensorDecl& tensor, std::span<uint8_t> out) {
                    const CheckpointTensor& t = in.tensor(tensor.name);
                    t.shard->read(*t.info, 0, out);
                  },
                  .model_config = read_json_file(options.input_dir / "config.json")};
  for (const auto& name : in.tensor_names()) {
    const TensorInfo& info = *in.tensor(name).info;
    model.tensors.push_back({info.name, info.dtype, info.shape});
  }
  const QuantizeSummary summary = write_quantized_checkpoint(model, options);
  for (const char* file : kCopiedFiles) {
    const auto source = options.input_dir / file;
    if (std::filesystem::exists(source))
      std::filesystem::copy_file(source, options.output_dir / file, std::filesystem::copy_options::overwrite_existing);
    else
      spdlog::warn("quantize: {} has no {}; the output will not have one either", options.input_dir.string(), file);
  }
  return summary;
}

}  // namespace fp4serve
