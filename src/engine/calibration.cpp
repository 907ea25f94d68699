#include "engine/calibration.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"
#include "engine/weight_loader.h"
#include "format/nvfp4.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "kernels/cpu/bf16_gemm.h"
#include "kernels/cpu/silu_mul.h"
#include "model/qwen3_model.h"

namespace fp4serve {

namespace {

void record(std::map<std::string, float>& amax, const std::string& prefix, float value) {
  float& slot = amax[prefix];
  slot = std::max(slot, value);
}

// amax of silu(gate) * up for each expert over the tokens routed to it (the MoE kernel's intermediate, recomputed
// from the layer's bf16 w13 [E, 2I, H]).
void record_expert_activations(const Tensor& w13, const Tensor& x, const Tensor& topk_ids, const std::string& prefix,
                               std::map<std::string, float>& amax) {
  const int64_t n_experts = w13.shape[0], two_i = w13.shape[1], H = w13.shape[2], M = x.shape[0];
  const int64_t k = topk_ids.shape[1];
  for (int64_t e = 0; e < n_experts; ++e) {
    std::vector<float> rows;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < k; ++j)
        if (topk_ids.data<int32_t>()[m * k + j] == e)
          rows.insert(rows.end(), x.data<float>() + m * H, x.data<float>() + (m + 1) * H);
    const int64_t n_rows = static_cast<int64_t>(rows.size()) / H;
    if (n_rows == 0) continue;
    std::vector<float> gate_up(static_cast<size_t>(n_rows * two_i)), activated(static_cast<size_t>(n_rows * two_i / 2));
    std::vector<uint8_t> scratch(bf16_gemm_scratch_bytes(n_rows, H));
    bf16_gemm_cpu(rows.data(), n_rows, H, w13.data<bf16_bits>() + e * two_i * H, two_i, gate_up.data(), two_i,
                  scratch.data());
    silu_mul_cpu(gate_up.data(), n_rows, two_i / 2, activated.data());
    record(amax, fmt::format("{}.{}.down_proj", prefix, e), amax_abs(activated.data(), n_rows * two_i / 2));
  }
}

}  // namespace

std::map<std::string, float> calibrate_input_amax(const std::filesystem::path& model_dir,
                                                  const std::vector<std::vector<int32_t>>& prompts) {
  FP4_CHECK(!prompts.empty(), "calibration of {}: no prompts", model_dir.string());
  FP4_CHECK(load_quant_config(model_dir).algo == QuantAlgo::None,
            "calibration needs the bf16 checkpoint, and {} is already quantized", model_dir.string());
  const ModelConfig config = load_model_config(model_dir);
  Qwen3Model model(config, QuantConfig{}, {});
  WeightLoader(model).load(model_dir, SourceFormat::Native);

  std::map<std::string, float> amax;
  const ForwardObserver observer{
      .on_linear_input =
          [&](const std::string& prefix, const Tensor& input) {
            record(amax, prefix, amax_abs(input.data<float>(), input.numel()));
          },
      .on_moe_routing =
          [&](int layer, const Tensor& input, const Tensor& topk_ids, const Tensor&) {
            const std::string prefix = fmt::format("model.layers.{}.mlp.experts", layer);
            const float input_amax = amax_abs(input.data<float>(), input.numel());
            for (int e = 0; e < config.num_experts; ++e)
              for (const char* proj : {"gate_proj", "up_proj"})
                record(amax, fmt::format("{}.{}.{}", prefix, e, proj), input_amax);
            record_expert_activations(model.params().get(prefix + ".w13_weight"), input, topk_ids, prefix, amax);
          },
      .on_layer_output = nullptr,
  };
  for (size_t p = 0; p < prompts.size(); ++p) {
    const int64_t n_tokens = static_cast<int64_t>(prompts[p].size());
    FP4_CHECK(n_tokens > 0, "calibration prompt {} is empty", p);
    const Shape kv_shape{config.num_hidden_layers, 1, n_tokens, config.num_key_value_heads, config.head_dim};
    const KvCacheTensors kv{Tensor::empty(kv_shape, DType::BF16, Device::CPU),
                            Tensor::empty(kv_shape, DType::BF16, Device::CPU)};
    const std::vector<int32_t> pages{0};
    model.forward({.sequences = {{.token_ids = prompts[p], .start_position = 0, .page_table = pages}},
                   .kv_cache = &kv,
                   .observer = &observer});
  }
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    if (!config.is_moe_layer(l)) continue;
    float layer_max = 0.0f;
    for (int e = 0; e < config.num_experts; ++e) {
      const auto it = amax.find(fmt::format("model.layers.{}.mlp.experts.{}.down_proj", l, e));
      if (it != amax.end()) layer_max = std::max(layer_max, it->second);
    }
    for (int e = 0; e < config.num_experts; ++e)
      amax.try_emplace(fmt::format("model.layers.{}.mlp.experts.{}.down_proj", l, e), layer_max);
  }
  return amax;
}

}  // namespace fp4serve
