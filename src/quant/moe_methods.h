// The MoE methods behind make_moe_method. Parameters are `<spec.name>.<param>`; checkpoint tensors are
// `<spec.checkpoint_prefix>.<e>.{gate,up,down}_proj.<tensor>`. w13 stacks each expert's gate rows [0, I) then up
// rows [I, 2I); w2 is down_proj. apply runs kernels/cpu/moe_experts.h.
#pragma once
#include <string>

#include "quant/method.h"
#include "quant/nvfp4_layout.h"

namespace fp4serve {

// bf16 experts: w13_weight [E, 2I, H], w2_weight [E, H, I]. Nothing to post-process.
class UnquantizedMoE final : public MoEMethod {
 public:
  UnquantizedMoE(MoESpec spec, const QuantOptions& options);
  void create_weights(ParameterSet& params) const override;
  void bind_checkpoint(std::vector<CheckpointBinding>& out) const override;
  void bind_online_quant(std::vector<OnlineQuantGroup>& out) const override;
  void process_weights_after_loading(ParameterSet& params) const override;
  void apply(const ParameterSet& params, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights, Tensor& y,
             Workspace& ws) const override;
  void export_logical(const ParameterSet& params, std::vector<std::pair<std::string, Tensor>>& out) const override;

 private:
  std::string param(std::string_view suffix) const { return spec_.name + "." + std::string(suffix); }
  QuantOptions options_;
};

// ModelOpt NVFP4 experts (reference-system.md, MoE table). Raw parameters, filled by the loader:
//   w13_weight u8 [E, 2I, H/2], w13_weight_scale e4m3 [E, 2I, H/16], w13_weight_scale_2 f32 [E, 2] (gate, up),
//   w13_input_scale f32 [E, 2], w2_weight u8 [E, H, I/2], w2_weight_scale e4m3 [E, H, I/16],
//   w2_weight_scale_2 f32 [E], w2_input_scale f32 [E] (input scales created as 1.0, required only in static mode).
// Derived on every load, from the raw bytes only (on the GPU for a model on cuda, else on the host):
//   w13_weight, w2_weight            TRT-LLM: rows gated-reordered (w13, gate first) then shuffled, in place
//   w13_blockscale_swizzled,         e4m3, the scales in the same row order, swizzled; alias *_weight_scale when
//   w2_blockscale_swizzled           the shape allows, else own zero-padded [E, Np, Kp] buffers (both layouts)
//   w13_input_scale_reduced f32 [1]  max over experts and gate/up of w13_input_scale (static; 1 otherwise): every
//   w2_input_scale_reduced  f32 [1]  expert sees the same input, and the max never saturates a block scale
//   w13_input_scale_quant,          1 / the reduced scales
//   w2_input_scale_quant    f32 [1]
//   g1_alphas f32 [E, 2]             reduced w13 input scale * w13_weight_scale_2[e, gate|up]: gate and up keep
//                                    EXACT alphas of their own when their weight_scale_2 differ
//   g2_alphas f32 [E]                reduced w2 input scale * w2_weight_scale_2[e]
//   g1_scale_c f32 [E, 2]            TRT-LLM only: w2_input_scale_quant * g1_alphas
class ModelOptNvfp4MoE final : public MoEMethod {
 public:
  ModelOptNvfp4MoE(MoESpec spec, const QuantOptions& options);
  void create_weights(ParameterSet& params) const override;
  void bind_checkpoint(std::vector<CheckpointBinding>& out) const override;
  void bind_online_quant(std::vector<OnlineQuantGroup>& out) const override;
  void process_weights_after_loading(ParameterSet& params) const override;
  void apply(const ParameterSet& params, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights, Tensor& y,
             Workspace& ws) const override;
  void export_logical(const ParameterSet& params, std::vector<std::pair<std::string, Tensor>>& out) const override;

 private:
  std::string param(std::string_view suffix) const { return spec_.name + "." + std::string(suffix); }
  void process_weights_on_gpu(ParameterSet& params) const;
  QuantOptions options_;
  Nvfp4MatrixShape w13_shape_;  // [E, 2I, H], gated
  Nvfp4MatrixShape w2_shape_;   // [E, H, I]
};

}  // namespace fp4serve
