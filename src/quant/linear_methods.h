// The linear methods behind make_linear_method. Parameters are named `<spec.name>.<param>` and checkpoint tensors
// `<shard.checkpoint_prefix>.<tensor>`; shards fill consecutive row ranges of the fused parameters in spec order.
#pragma once
#include <string>

#include "quant/method.h"
#include "quant/nvfp4_layout.h"

namespace fp4serve {

// bf16 weight [N, K]; apply is y = x W^T (kernels/cpu/bf16_gemm.h). Nothing to post-process.
class UnquantizedLinear final : public LinearMethod {
 public:
  UnquantizedLinear(LinearSpec spec, const QuantOptions& options);
  void create_weights(ParameterSet& params) const override;
  void bind_checkpoint(std::vector<CheckpointBinding>& out) const override;
  void bind_online_quant(std::vector<OnlineQuantGroup>& out) const override;
  void process_weights_after_loading(ParameterSet& params) const override;
  void apply(const ParameterSet& params, const Tensor& x, Tensor& y, Workspace& ws) const override;
  void export_logical(const ParameterSet& params, std::vector<std::pair<std::string, Tensor>>& out) const override;

 private:
  QuantOptions options_;
  std::string weight_;  // "<name>.weight"
};

// ModelOpt NVFP4 (reference-system.md, linear table). Raw parameters, filled by the loader:
//   weight u8 [N, K/2], weight_scale e4m3 [N, K/16], weight_scale_2 f32 [S], input_scale f32 [S] (S = shards).
// Derived on every load, from the raw bytes only (on the GPU for a model on cuda, else on the host):
//   weight                    rows shuffled in place (TRT-LLM layout; untouched for CUTLASS)
//   weight_scale_interleaved  e4m3, (shuffled, then) swizzled weight_scale: aliases it when the shape allows,
//                             else its own zero-padded [Np, Kp] buffer (nvfp4_layout.h)
//   alpha                     f32 [S]: input_scale[s] * weight_scale_2[s] (static), weight_scale_2[s] (none,
//                             per-token) — one EXACT alpha per shard, never a max over shards
//   input_scale_inv           f32 [S]: 1 / input_scale[s] (static), 1 (none, per-token: input scales ignored)
// input_scale is created as 1.0 (what an uncalibrated quantization writes) and is required from the checkpoint
// only in static mode.
class ModelOptNvfp4Linear final : public LinearMethod {
 public:
  ModelOptNvfp4Linear(LinearSpec spec, const QuantOptions& options);
  void create_weights(ParameterSet& params) const override;
  void bind_checkpoint(std::vector<CheckpointBinding>& out) const override;
  void bind_online_quant(std::vector<OnlineQuantGroup>& out) const override;
  void process_weights_after_loading(ParameterSet& params) const override;
  void apply(const ParameterSet& params, const Tensor& x, Tensor& y, Workspace& ws) const override;
  void export_logical(const ParameterSet& params, std::vector<std::pair<std::string, Tensor>>& out) const override;

 private:
  std::string param(std::string_view suffix) const { return spec_.name + "." + std::string(suffix); }
  void process_weights_on_gpu(ParameterSet& params) const;
  QuantOptions options_;
  Nvfp4MatrixShape shape_;  // the fused weight [N, K]
};

}  // namespace fp4serve
