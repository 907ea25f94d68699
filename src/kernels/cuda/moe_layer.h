// Fused MoE layer for NVFP4 experts on the GPU (Qwen3-MoE; W4A16: bf16 activations, weights dequantized in
// registers). One host call runs, with no host synchronization and no allocation (so it can be captured in a CUDA
// graph): router logits (bf16 output as HF's router Linear) -> softmax, top-k, renormalize -> token grouping by expert
// (counts, offsets, permutation; tokens increasing within an expert) -> grouped GEMM1 (w13) with SwiGLU -> grouped
// GEMM2 (w2) -> weighted combine, summing each token's k expert outputs in top-k order. Up to
// kMoeFastRoutingMaxTokens tokens, logits (a GEMV), routing and grouping are one kernel; above, logits go through
// cuBLAS and routing and grouping are two kernels. The expert GEMMs run on one of two paths (MoeExpertGemm). No float
// atomics: results are bitwise reproducible. Only experts that received tokens read weights, so a decode token
// touches exactly its k experts. bf16 storage points are those of kernels/cpu/moe_experts.h (g, u, silu, act, each
// expert output, y). Host-only header; pointers are device memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "format/bf16.h"
#include "kernels/cpu/nvfp4_gemm.h"

namespace fp4serve::cuda {

struct MoeLayerShape {
  int64_t n_experts = 0;     // E <= kMoeMaxExperts
  int64_t top_k = 0;         // k in [1, min(E, kMoeMaxTopK)]
  int64_t hidden = 0;        // H, a multiple of 16, at most kMoeMaxK
  int64_t intermediate = 0;  // I, a multiple of 16, at most kMoeMaxK
  bool norm_topk_prob = true;
  int64_t max_tokens = 0;  // the workspace holds this many tokens
};
inline constexpr int64_t kMoeMaxExperts = 256;
inline constexpr int64_t kMoeMaxTopK = 16;
inline constexpr int64_t kMoeMaxK = 4096;  // weights of a CTA's rows stay in registers

struct MoeLayerWeights {
  const bf16_bits* router = nullptr;   // [E, H] bf16 (mlp.gate.weight), 16-byte aligned
  const uint8_t* w13_packed = nullptr;  // [E, 2I, H/2] e2m1; logical gate rows [0, I), up [I, 2I), in w13_row_order
  const uint8_t* w13_scales = nullptr;  // [E, Np * Kp] e4m3 swizzled per expert, swizzled_scale_shape(2I, H/16)
  Nvfp4RowOrder w13_row_order = Nvfp4RowOrder::Linear;
  const uint8_t* w2_packed = nullptr;  // [E, H, I/2] e2m1 in w2_row_order
  const uint8_t* w2_scales = nullptr;  // [E, Np * Kp] e4m3, swizzled_scale_shape(H, I/16)
  Nvfp4RowOrder w2_row_order = Nvfp4RowOrder::Linear;
  const float* g1_alphas = nullptr;  // [E, 2] f32: weight_scale_2 of gate and up (W4A16)
  const float* g2_alphas = nullptr;  // [E] f32
};

// How the expert GEMMs run. LayerKernels: this layer's grouped kernels (moe_experts.cu: row gather in GEMM1's
// operand load, SwiGLU in its epilogue). GroupedGemm: the public nvfp4_grouped_gemm_w4a16 (nvfp4_grouped_gemm.h)
// between a row-gather and a SwiGLU kernel. Both store the same bf16 intermediates (they differ only in fp32 summation
// order). Auto: moe_expert_gemm_for.
enum class MoeExpertGemm { Auto, LayerKernels, GroupedGemm };

// The path Auto takes for m tokens: the rule measured on H100 (bench_cuda_moe's per-path columns; the threshold is
// kMoeLayerKernelsMaxTokens in moe_layer.cpp).
MoeExpertGemm moe_expert_gemm_for(const MoeLayerShape& shape, int64_t m);

struct MoeLayerArgs {
  const bf16_bits* x = nullptr;  // [m, H] bf16, 16-byte aligned
  int64_t m = 0;                 // tokens, <= shape.max_tokens
  bf16_bits* y = nullptr;        // [m, H] bf16, 16-byte aligned; must not overlap x
  void* workspace = nullptr;     // moe_layer_workspace_bytes(shape) bytes of device memory, 256-byte aligned
  size_t workspace_bytes = 0;
  void* stream = nullptr;  // cudaStream_t; nullptr is the legacy default stream
  MoeExpertGemm expert_gemm = MoeExpertGemm::Auto;
  // --deterministic: the same kernels for every m, so a token's output never depends on the other tokens: router
  // logits always from the small-batch GEMV (in chunks of kMoeFastRoutingMaxTokens tokens), the grouped GEMM path
  // with its batch-invariant tile (expert_gemm must be Auto or GroupedGemm).
  bool batch_invariant = false;
};

// For Qwen3-30B-A3B (E 128, k 8, H 2048, I 768): about 2 KB + 64.4 KB per token, mostly two bf16 buffers per routed
// slot of max(H, I) (gathered x, then the activation) and max(2I, H) (GEMM1's gate|up, then the expert output)
// elements: 258 MB for 4096 tokens.
size_t moe_layer_workspace_bytes(const MoeLayerShape& shape);

// Where the last forward left its routing in the workspace (device memory): topk_ids [m, k] i32 (most probable
// first, ties to the lower expert index) and topk_weights [m, k] f32. For tests and inspection.
struct MoeRouting {
  const int32_t* topk_ids;
  const float* topk_weights;
};
MoeRouting moe_layer_routing(const MoeLayerShape& shape, const void* workspace);

// The cuBLAS handle of the router GEMM for large batches (with a fixed cuBLAS workspace, so that calls can be captured)
// and the fused routing kernel's completion counters, created on first use on the device current then. Not thread-safe,
// and forwards that may run concurrently (other host threads or streams) need contexts of their own.
class MoeLayerContext {
 public:
  MoeLayerContext();
  ~MoeLayerContext();
  MoeLayerContext(const MoeLayerContext&) = delete;
  MoeLayerContext& operator=(const MoeLayerContext&) = delete;
  size_t workspace_bytes() const;  // device memory held now (cuBLAS workspace, counters, the expert GEMMs' context)

 private:
  friend void moe_layer_forward(MoeLayerContext&, const MoeLayerShape&, const MoeLayerWeights&, const MoeLayerArgs&);
  struct State;
  std::unique_ptr<State> state_;
};

// Validates shapes and pointers on the host (errors name the field), then enqueues the layer on args.stream. m == 0
// does nothing. The first call with m > 0 creates the context's device state: make it before a graph capture.
void moe_layer_forward(MoeLayerContext& context, const MoeLayerShape& shape, const MoeLayerWeights& weights,
                       const MoeLayerArgs& args);

}  // namespace fp4serve::cuda
