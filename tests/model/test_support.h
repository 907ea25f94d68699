// Test support: checkpoints written from the HF tensor names of qwen3-moe.md (not from the model's bindings, so a
// wrong binding shows as a load error) with random bf16 weights and norms that differ from 1 (a swapped norm shows),
// an NVFP4 (ModelOpt) version quantized with quant/group_quant.h, and running one sequence with observers.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "model/qwen3_model.h"
#include "tensor/tensor.h"
#include "tests/model/test_util.h"

namespace fp4serve::testing_support {

struct RawTensor {
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};
using TensorMap = std::map<std::string, RawTensor>;

// The tiny preset of `fp4serve synth` (qwen3-moe or dense), with a smaller context.
ModelConfig tiny_config(Architecture architecture, bool tie_word_embeddings = false);

// Every tensor a bf16 checkpoint of `config` holds. Linear weights ~ N(0, 1/in_features), embeddings ~ N(0, 1),
// router gates ~ N(0, 4/H) (decisive routing), norms ~ 1 + N(0, 0.1^2). Each tensor depends on (seed, name) only.
TensorMap random_bf16_tensors(const ModelConfig& config, uint64_t seed);

// ModelOpt NVFP4 version: every linear except routers and lm_head quantized, fused groups (q/k/v, gate/up) sharing
// weight_scale_2; input_scale = `input_scale` everywhere.
TensorMap quantize_tensors_nvfp4(const ModelConfig& config, const TensorMap& bf16, float input_scale);
QuantConfig nvfp4_quant_config();  // excludes lm_head, routers and embeddings

// Writes config.json (+ hf_quant_config.json when quant is NVFP4) and model.safetensors into a fresh `dir`.
void write_checkpoint(const std::filesystem::path& dir, const ModelConfig& config, const QuantConfig& quant,
                      const TensorMap& tensors);

// One sequence through the model from position 0 with its own KV cache (pages in reverse order, so paging shows).
struct SequenceRun {
  std::vector<double> logits;                      // [T * V], every position
  std::vector<std::vector<double>> layer_outputs;  // [layer] -> [T * H]
  std::map<int, std::vector<int32_t>> router_ids;  // [MoE layer] -> [T * k]
  // Inputs of every linear by checkpoint prefix [T * K]; an MoE layer's input under "<layer>.mlp.experts".
  std::map<std::string, std::vector<float>> linear_inputs;
};
SequenceRun run_sequence(Qwen3Model& model, const std::vector<int32_t>& tokens);

}  // namespace fp4serve::testing_support
