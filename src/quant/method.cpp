// Names of the quantization options, the workspace, and the two factories that pick a method for a layer.
// Invariant: every (quantized, layout, act_quant) combination maps to exactly one method class here.
#include "quant/method.h"

#include "common/error.h"
#include "quant/linear_methods.h"
#include "quant/moe_methods.h"

namespace fp4serve {

std::string_view weight_layout_name(WeightLayout layout) {
  return layout == WeightLayout::Cutlass ? "cutlass" : "trtllm";
}

std::string_view act_quant_name(ActQuant mode) {
  switch (mode) {
    case ActQuant::None:
      return "none";
    case ActQuant::Static:
      return "static";
    case ActQuant::PerToken:
      return "per-token";
  }
  return "?";
}

WeightLayout parse_weight_layout(std::string_view name) {
  if (name == "cutlass") return WeightLayout::Cutlass;
  if (name == "trtllm") return WeightLayout::Trtllm;
  fail("unknown weight layout / MoE backend '{}': use 'cutlass' or 'trtllm'", name);
}

ActQuant parse_act_quant(std::string_view name) {
  if (name == "none") return ActQuant::None;
  if (name == "static") return ActQuant::Static;
  if (name == "per-token") return ActQuant::PerToken;
  fail("unknown activation quantization '{}': use 'none', 'static' or 'per-token'", name);
}

int64_t LinearSpec::out_features() const {
  int64_t total = 0;
  for (const auto& shard : shards) total += shard.out_features;
  return total;
}

uint8_t* Workspace::reserve(size_t nbytes, Device device) {
  if (!buffer.defined() || buffer.device() != device || buffer.nbytes() < nbytes)
    buffer = Tensor::empty({static_cast<int64_t>(nbytes)}, DType::U8, device);
  return buffer.raw();
}

std::unique_ptr<LinearMethod> make_linear_method(LinearSpec spec, bool quantized, const QuantOptions& options) {
  FP4_CHECK(!spec.shards.empty(), "linear '{}' has no shards", spec.name);
  if (quantized) return std::make_unique<ModelOptNvfp4Linear>(std::move(spec), options);
  return std::make_unique<UnquantizedLinear>(std::move(spec), options);
}

std::unique_ptr<MoEMethod> make_moe_method(MoESpec spec, bool quantized, const QuantOptions& options) {
  if (quantized) return std::make_unique<ModelOptNvfp4MoE>(std::move(spec), options);
  return std::make_unique<UnquantizedMoE>(std::move(spec), options);
}

}  // namespace fp4serve
