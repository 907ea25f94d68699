// Qwen3-MoE and Qwen3 dense (qwen3-moe.md), assembled only from quantization methods (src/quant/method.h) and CPU
// kernels, or with QuantOptions::device cuda on the CUDA kernels (qwen3_forward_cuda.cpp). The model owns one
// ParameterSet with HF-like names (fused `qkv_proj`, `gate_up_proj`, `experts.w13_weight`). Weights go through a strict cycle: a load writes raw checkpoint bytes and calls
// mark_raw_weights_loaded(), then process_weights_after_loading() runs exactly once; forward needs both.
// Not thread-safe: one engine thread owns the model.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/model_config.h"
#include "io/quant_config.h"
#include "model/forward_batch.h"
#include "quant/loadable.h"
#include "quant/method.h"
#include "tensor/memory_arena.h"

namespace fp4serve {

class Qwen3Model final : public LoadableModel {
 public:
  // A module is NVFP4 iff `quant` is NVFP4 and does not exclude it; embeddings, norms and routers stay bf16.
  // Throws when the config is inconsistent with the quantization (a fused group half excluded, a quantized tied
  // lm_head).
  Qwen3Model(const ModelConfig& config, const QuantConfig& quant, const QuantOptions& options);
  ~Qwen3Model() override;

  const ModelConfig& config() const { return config_; }
  const QuantOptions& options() const { return options_; }

  ParameterSet& params() override { return params_; }
  const ParameterSet& params() const { return params_; }
  std::vector<CheckpointBinding> checkpoint_bindings() const override;
  std::vector<OnlineQuantGroup> online_quant_groups() const override;
  bool is_nvfp4() const override { return is_nvfp4_; }
  void mark_raw_weights_loaded() override;
  void process_weights_after_loading() override;  // throws unless a load preceded it since the last call

  // Every parameter lives in this arena (memory_arena.h), so the engine can release and resume their memory at the
  // same addresses.
  MemoryArena& weights_memory() { return *params_.arena(); }
  // The parameters' bytes were dropped (memory released without a copy): forward refuses, as before the first
  // load, until a load and its post-processing succeed.
  void forget_weights() { weight_state_ = WeightState::Empty; }

  // The checkpoint view of every weight (name -> host tensor, named and laid out as in the checkpoint).
  std::vector<std::pair<std::string, Tensor>> export_logical() const override;

  // Runs the batch; writes the new tokens' keys and values into batch.kv_cache (on the model's device). Throws before
  // weights are ready. The logits come back as host f32 tensors on either device.
  ForwardOutput forward(const ForwardBatch& batch);

  // Device cuda: how many decode steps were captured as CUDA graphs and how many replayed one (zeros on cpu).
  struct CudaGraphStats {
    int64_t captures = 0, replays = 0;
  };
  CudaGraphStats cuda_graph_stats() const;
  // Device cuda: the GPU forward's device memory besides weights and KV cache: activations, logits, attention and
  // GEMM scratch, the cuBLAS workspaces and the sampler (0 on cpu). Captured graphs allocate none of their own (no
  // memory nodes); the driver memory behind their executable form is not queryable and is not counted.
  size_t device_workspace_bytes() const;

 private:
  struct Layer {
    std::unique_ptr<LinearMethod> qkv_proj, o_proj;
    std::unique_ptr<LinearMethod> router;                   // MoE layers: mlp.gate, bf16
    std::unique_ptr<MoEMethod> experts;                     // MoE layers
    std::unique_ptr<LinearMethod> gate_up_proj, down_proj;  // dense layers
    std::string prefix;                                     // "model.layers.L"
  };
  enum class WeightState { Empty, RawLoaded, Ready };

  std::unique_ptr<LinearMethod> make_linear(LinearSpec spec, bool can_quantize);
  void add_norm(const std::string& name, int64_t size);
  std::vector<const LinearMethod*> linear_methods() const;
  struct BatchLayout;  // a ForwardBatch flattened into rows (qwen3_forward.cpp)
  BatchLayout layout_batch(const ForwardBatch& batch) const;
  Tensor run_linear(const LinearMethod& method, const Tensor& x, const ForwardObserver* observer);
  Tensor attention_block(int layer_index, const Tensor& hidden, const BatchLayout& rows,
                         const ForwardObserver* observer);
  Tensor mlp_block(int layer_index, const Tensor& hidden, const ForwardObserver* observer);
  Tensor compute_logits(const Tensor& hidden, const std::vector<int64_t>& rows, const ForwardObserver* observer);

  // The GPU forward (qwen3_forward_cuda.cpp): its stream, kernel contexts, workspaces and views of the weights.
  struct CudaForward;
  struct CudaForwardDeleter {
    void operator()(CudaForward* forward) const;
  };
  void check_cuda_support() const;  // throws naming the option or module the GPU forward cannot run
  void prepare_cuda_forward();      // after every post-processing: weight views and host copies of the alphas
  ForwardOutput forward_cuda(const ForwardBatch& batch, const BatchLayout& rows);

  ModelConfig config_;
  QuantConfig quant_;
  QuantOptions options_;
  bool is_nvfp4_ = false;
  ParameterSet params_;
  std::vector<std::string> norm_names_;         // bf16 [size] parameters named as in the checkpoint
  std::unique_ptr<LinearMethod> embed_tokens_;  // bf16 [V, H]; also the lm_head when tied
  std::unique_ptr<LinearMethod> lm_head_;       // null when tied
  std::vector<Layer> layers_;
  WeightState weight_state_ = WeightState::Empty;
  Workspace workspace_;
  std::unique_ptr<CudaForward, CudaForwardDeleter> cuda_;  // device cuda only
};

}  // namespace fp4serve
