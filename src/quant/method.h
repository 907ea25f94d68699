// Quantization methods: how a layer's weights are created, filled from a checkpoint, post-processed and applied.
// The life cycle (reference-system.md) is create_weights -> load (raw checkpoint bytes into parameters, driven by
// the bindings a method declares) -> process_weights_after_loading (derive kernel layouts IN PLACE, alias when the
// shape is unchanged) -> apply. Loading and post-processing repeat, in that order, on every reload: after a load
// the parameters hold raw checkpoint bytes again, so post-processing must derive everything from them each time.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "tensor/parameter.h"
#include "tensor/tensor.h"

namespace fp4serve {

enum class WeightLayout { Cutlass, Trtllm };      // --moe-backend / linear layout: nvfp4.md 3a, or 3b+3c
enum class ActQuant { None, Static, PerToken };   // --act-quant: W4A16, W4A4 with input_scale, W4A4 per-token
std::string_view weight_layout_name(WeightLayout layout);
std::string_view act_quant_name(ActQuant mode);
WeightLayout parse_weight_layout(std::string_view name);  // "cutlass" | "trtllm", else throws
ActQuant parse_act_quant(std::string_view name);          // "none" | "static" | "per-token", else throws

struct QuantOptions {
  WeightLayout layout = WeightLayout::Cutlass;
  ActQuant act_quant = ActQuant::Static;
  Device device = Device::CPU;
  // Device cuda: decode steps of up to this many sequences replay CUDA graphs (captured on first use); 0: eager.
  int64_t cuda_graph_max_batch = 0;
  // --deterministic: kernel paths whose reduction order depends neither on the number of rows nor on the batch's
  // composition, so a request's logits are bitwise the same whatever else runs. The CPU kernels always are; on the
  // GPU it trades speed for it (qwen3_forward_cuda.cpp).
  bool deterministic = false;
};

// What a checkpoint tensor is, for validation beyond shape and dtype.
enum class BindingRole {
  Weight,       // bf16 weight or packed e2m1 bytes: any bytes allowed
  BlockScale,   // e4m3 block scales: no NaN code; zero allowed only where the block is zero (checked as >= 0)
  GlobalScale,  // f32 scalar weight_scale_2: finite and > 0
  InputScale,   // f32 scalar input_scale: finite and > 0
  Norm,         // bf16 norm weight: finite
};

// One checkpoint tensor and where its raw bytes go: `nbytes` at `byte_offset` inside parameter `param`.
// Every binding of a model together must cover each raw (non-derived) parameter byte exactly once.
struct CheckpointBinding {
  std::string checkpoint_name;  // "model.layers.0.self_attn.k_proj.weight_scale"
  DType dtype;                  // expected dtype in the checkpoint
  Shape shape;                  // expected shape in the checkpoint
  std::string param;            // "model.layers.0.self_attn.qkv_proj.weight_scale"
  size_t byte_offset = 0;       // where inside the parameter the bytes start
  BindingRole role = BindingRole::Weight;
  bool optional = false;        // may be absent (then the parameter keeps its bytes), e.g. input_scale
};

// A group of bf16 checkpoint weights that are quantized together when a bf16 checkpoint is loaded into an NVFP4
// model (online quantization): the group shares one weight_scale_2 = amax over the group / (6*448), exactly as
// `fp4serve quantize` does, so quantize-then-load and online load give identical bytes.
struct OnlineQuantGroup {
  std::vector<std::string> checkpoint_names;  // bf16 [n_rows_i, K] each, e.g. q/k/v or an expert's gate/up
  std::vector<int64_t> n_rows;                // rows of each member
  int64_t in_features;                        // K
  std::string weight_param;                   // packed destination [.., N, K/2] u8
  std::string block_scale_param;              // [.., N, K/16] e4m3
  std::string global_scale_param;             // f32 slots, one per member
  size_t weight_byte_offset;                  // where the group's first row starts in weight_param
  size_t block_scale_byte_offset;             // where the group's first row starts in block_scale_param
  std::vector<size_t> global_scale_slots;     // slot index (f32 elements) of each member in global_scale_param
};

// A (possibly fused) projection y = x W^T. Shards are checkpoint projections stacked along the output rows in order.
struct LinearShard {
  std::string checkpoint_prefix;  // "model.layers.0.self_attn.q_proj"
  int64_t out_features;
};
struct LinearSpec {
  std::string name;  // parameter prefix: "model.layers.0.self_attn.qkv_proj"
  int64_t in_features;
  std::vector<LinearShard> shards;  // output rows = sum of out_features
  int64_t out_features() const;
};

// Experts of one MoE layer; checkpoint names are `<checkpoint_prefix>.<e>.{gate,up,down}_proj.*`.
struct MoESpec {
  std::string name;               // parameter prefix: "model.layers.0.mlp.experts"
  std::string checkpoint_prefix;  // "model.layers.0.mlp.experts"
  int64_t n_experts;
  int64_t hidden;        // H
  int64_t intermediate;  // I
};

// Scratch the apply functions may use; grows once to the largest request and is reused (no per-call allocation).
struct Workspace {
  Tensor buffer;
  uint8_t* reserve(size_t nbytes, Device device);
};

class LinearMethod {
 public:
  virtual ~LinearMethod() = default;
  virtual void create_weights(ParameterSet& params) const = 0;
  virtual void bind_checkpoint(std::vector<CheckpointBinding>& out) const = 0;
  virtual void bind_online_quant(std::vector<OnlineQuantGroup>& out) const = 0;  // empty for bf16 layers
  virtual void process_weights_after_loading(ParameterSet& params) const = 0;
  // x [M, K] f32 (values are bf16-representable), y [M, N] f32 (rounded to bf16 on output), same device.
  virtual void apply(const ParameterSet& params, const Tensor& x, Tensor& y, Workspace& ws) const = 0;
  // The logical (checkpoint-layout) weight tensors of this layer, un-deriving any layout: name -> host tensor,
  // named as in the checkpoint. Used for the weights checksum and to test layouts.
  virtual void export_logical(const ParameterSet& params, std::vector<std::pair<std::string, Tensor>>& out) const = 0;
  const LinearSpec& spec() const { return spec_; }

 protected:
  explicit LinearMethod(LinearSpec spec) : spec_(std::move(spec)) {}
  LinearSpec spec_;
};

class MoEMethod {
 public:
  virtual ~MoEMethod() = default;
  virtual void create_weights(ParameterSet& params) const = 0;
  virtual void bind_checkpoint(std::vector<CheckpointBinding>& out) const = 0;
  virtual void bind_online_quant(std::vector<OnlineQuantGroup>& out) const = 0;
  virtual void process_weights_after_loading(ParameterSet& params) const = 0;
  // x [M, H] f32; topk_ids [M, k] i32; topk_weights [M, k] f32; y [M, H] f32 = sum_j w_j * expert_{id_j}(x).
  virtual void apply(const ParameterSet& params, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                     Tensor& y, Workspace& ws) const = 0;
  virtual void export_logical(const ParameterSet& params, std::vector<std::pair<std::string, Tensor>>& out) const = 0;
  const MoESpec& spec() const { return spec_; }

 protected:
  explicit MoEMethod(MoESpec spec) : spec_(std::move(spec)) {}
  MoESpec spec_;
};

// Factories: `quantized` false gives the bf16 method (excluded modules, unquantized checkpoints).
std::unique_ptr<LinearMethod> make_linear_method(LinearSpec spec, bool quantized, const QuantOptions& options);
std::unique_ptr<MoEMethod> make_moe_method(MoESpec spec, bool quantized, const QuantOptions& options);

}  // namespace fp4serve
