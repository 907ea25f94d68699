// `fp4serve quantize`: a bf16 HF checkpoint -> a ModelOpt NVFP4 checkpoint (nvfp4.md §4), streamed group by group.
// Invariants: fused groups (q/k/v of a layer; gate/up of a dense MLP or of an expert) share weight_scale_2 = amax
// over the group / (6*448), computed by quantize_group — the function online quantization uses — so loading the
// output equals quantizing on load, byte for byte; at most one group's tensors are in memory at a time.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"

namespace fp4serve {

struct QuantizeOptions {
  std::filesystem::path input_dir = {};   // bf16 HF checkpoint (quantize_checkpoint only)
  std::filesystem::path output_dir = {};  // created; must not hold a checkpoint yet
  std::vector<std::string> exclude = {};  // module globs kept bf16, added to default_exclude_modules()
  // Calibrated amax of each linear's input, by checkpoint prefix ("model.layers.0.self_attn.q_proj"); a fused
  // group takes the max over its members. Empty: uncalibrated, every input_scale = 1.0 (recorded in
  // hf_quant_config.json).
  std::map<std::string, float> input_amax = {};
  uint64_t max_shard_bytes = 4'000'000'000;
};

struct QuantizeSummary {
  int64_t quantized_linears = 0;  // checkpoint linears written as NVFP4
  int64_t groups = 0;             // fused groups (each shares one weight_scale_2)
  int64_t kept_tensors = 0;       // tensors copied unchanged (excluded linears, embeddings, norms)
  bool calibrated = false;
};

// lm_head, the MoE routers and the embeddings; norms are not linears and are never quantized.
std::vector<std::string> default_exclude_modules();

// A linear layer's weight: a 2-D "<module>.weight" whose module ends in "_proj", is "lm_head" or a router ".gate".
bool is_linear_weight(const TensorDecl& tensor);

// The fused group of a linear module: "<X>.self_attn.qkv_proj" for q/k/v_proj, "<X>.gate_up_proj" for
// gate/up_proj (dense MLP or expert), else the module itself.
std::string fused_group_of(std::string_view module);

// The bf16 model a quantized checkpoint is made from: an input directory (quantize_checkpoint), or weights generated
// on the fly (`fp4serve synth --format nvfp4`), so that both write the same checkpoint from the same bf16 values.
struct Bf16Model {
  std::string source = {};               // names the origin in errors: the input directory, "synth"
  std::vector<TensorDecl> tensors = {};  // every tensor, any order (the output follows name order)
  std::function<void(const TensorDecl& tensor, std::span<uint8_t> out)> read = {};  // one tensor's bf16 bytes
  nlohmann::json model_config = {};      // its config.json
};

// Writes the NVFP4 checkpoint of `model` into options.output_dir: the shards and index, config.json with
// quantization_config and hf_quant_config.json (the tokenizer and generation config are the caller's). Output
// tensors follow the input names' sorted order, a fused group's tensors all after its first member. Throws naming
// the tensor or module at fault: non-bf16 linears, K % 16 != 0 (exclude the module), an exclude pattern that
// splits a fused group, calibration missing a linear.
QuantizeSummary write_quantized_checkpoint(const Bf16Model& model, const QuantizeOptions& options);

// write_quantized_checkpoint of the bf16 checkpoint options.input_dir, copying its tokenizer and generation config;
// also rejects an already quantized input.
QuantizeSummary quantize_checkpoint(const QuantizeOptions& options);

}  // namespace fp4serve
