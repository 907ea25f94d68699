// Host side of the GPU MoE layer: validation (messages name the field), the workspace layout, the routing path (fused
// kernel for small batches, cuBLAS router GEMM + two kernels above), the expert-GEMM path rule and the launch sequence.
// Everything after validation is enqueued on one stream without synchronization.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/moe_layer.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "format/layout.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/cuda/nvfp4_grouped_gemm.h"

namespace fp4serve::cuda {
namespace {

void check_cublas(cublasStatus_t status, const char* call) {
  FP4_CHECK(status == CUBLAS_STATUS_SUCCESS, "moe_layer_forward: {} failed: {}", call, cublasGetStatusString(status));
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The workspace, carved in this order at 256-byte boundaries (base == nullptr only measures). Two row buffers serve
// both expert paths, each value dead before its buffer is rewritten:
//   LayerKernels: x -> GEMM1 -> sorted_rows (activation) -> GEMM2 -> expert_rows (expert output) -> combine
//   GroupedGemm:  x -> gather -> sorted_rows (x rows) -> GEMM1 -> expert_rows (gate|up) -> SwiGLU -> sorted_rows
//                 (activation) -> GEMM2 -> expert_rows (expert output) -> combine
struct MoeWorkspace {
  uint16_t* logits;  // [M, E] bf16
  MoeRoutingBuffers routing;
  uint16_t* sorted_rows;  // [M * k, max(H, I)] bf16, one row per sorted slot
  uint16_t* expert_rows;  // [M * k, max(2I, H)] bf16, one row per sorted slot
  size_t bytes;
};

MoeWorkspace carve_workspace(const MoeLayerShape& s, void* base) {
  size_t used = 0;
  auto take = [&](size_t bytes) {
    void* p = base == nullptr ? nullptr : static_cast<uint8_t*>(base) + used;
    used += (bytes + 255) / 256 * 256;
    return p;
  };
  const auto slots = static_cast<size_t>(s.max_tokens * s.top_k), experts = static_cast<size_t>(s.n_experts);
  const auto sorted_width = static_cast<size_t>(std::max(s.hidden, s.intermediate));
  const auto expert_width = static_cast<size_t>(std::max(2 * s.intermediate, s.hidden));
  MoeWorkspace w{};
  w.logits = static_cast<uint16_t*>(take(static_cast<size_t>(s.max_tokens) * experts * sizeof(uint16_t)));
  w.routing.topk_ids = static_cast<int32_t*>(take(slots * sizeof(int32_t)));
  w.routing.topk_weights = static_cast<float*>(take(slots * sizeof(float)));
  w.routing.expert_offsets = static_cast<int32_t*>(take((experts + 1) * sizeof(int32_t)));
  w.routing.active_experts = static_cast<int32_t*>(take(experts * sizeof(int32_t)));
  w.routing.n_active = static_cast<int32_t*>(take(sizeof(int32_t)));
  w.routing.sorted_token = static_cast<int32_t*>(take(slots * sizeof(int32_t)));
  w.routing.slot_position = static_cast<int32_t*>(take(slots * sizeof(int32_t)));
  w.sorted_rows = static_cast<uint16_t*>(take(slots * sorted_width * sizeof(uint16_t)));
  w.expert_rows = static_cast<uint16_t*>(take(slots * expert_width * sizeof(uint16_t)));
  w.bytes = used;
  return w;
}

void check_shape(const MoeLayerShape& s) {
  FP4_CHECK(s.n_experts >= 1 && s.n_experts <= kMoeMaxExperts,
            "moe_layer_forward: shape.n_experts = {} must lie in [1, {}]", s.n_experts, kMoeMaxExperts);
  FP4_CHECK(s.top_k >= 1 && s.top_k <= std::min(s.n_experts, kMoeMaxTopK),
            "moe_layer_forward: shape.top_k = {} must lie in [1, min(n_experts = {}, {})]", s.top_k, s.n_experts,
            kMoeMaxTopK);
  for (const auto& [value, name] : {std::pair{s.hidden, "hidden"}, std::pair{s.intermediate, "intermediate"}})
    FP4_CHECK(value >= 16 && value % 16 == 0 && value <= kMoeMaxK,
              "moe_layer_forward: shape.{} = {} must be a multiple of 16 (the NVFP4 block) in [16, {}]", name, value,
              kMoeMaxK);
  FP4_CHECK(s.max_tokens >= 1 && s.max_tokens * s.top_k <= (int64_t{1} << 24),
            "moe_layer_forward: shape.max_tokens = {} is out of range (tokens * top_k must stay below 2^24)",
            s.max_tokens);
}

// Auto takes the layer's own kernels up to this many tokens and the public grouped GEMM above. Measured in the joint
// run (bench/RESULTS.md, H100, whole layer in a CUDA graph): layer kernels 41.0 / 282.8 / 417.0 / 583.8 / 5193 us,
// grouped GEMM 43.3 / 239.9 / 352.4 / 568.6 / 2719 us at 1 / 16 / 64 / 256 / 4096 tokens.
constexpr int64_t kMoeLayerKernelsMaxTokens = 1;

}  // namespace

size_t moe_layer_workspace_bytes(const MoeLayerShape& shape) {
  check_shape(shape);
  return carve_workspace(shape, nullptr).bytes;
}

MoeRouting moe_layer_routing(const MoeLayerShape& shape, const void* workspace) {
  check_shape(shape);
  const MoeWorkspace w = carve_workspace(shape, const_cast<void*>(workspace));
  return {w.routing.topk_ids, w.routing.topk_weights};
}

MoeExpertGemm moe_expert_gemm_for(const MoeLayerShape& /*shape*/, int64_t m) {
  return m <= kMoeLayerKernelsMaxTokens ? MoeExpertGemm::LayerKernels : MoeExpertGemm::GroupedGemm;
}

struct MoeLayerContext::State {
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  uint32_t* done_counters = nullptr;  // [kMoeFastRoutingCounters], the fused routing kernel's; zero between launches
  Nvfp4GemmContext gemm;
  static constexpr size_t kBlasWorkspaceBytes = size_t{4} << 20;

  ~State() {
    // Destructors must not throw: release what exists and ignore teardown errors (the driver may be gone).
    if (blas != nullptr) cublasDestroy(blas);
    if (blas_workspace != nullptr) cudaFree(blas_workspace);
    if (done_counters != nullptr) cudaFree(done_counters);
  }
  void ensure_created() {
    if (blas != nullptr) return;
    FP4_CUDA_CHECK(cudaMalloc(&done_counters, kMoeFastRoutingCounters * sizeof(uint32_t)));
    FP4_CUDA_CHECK(cudaMemset(done_counters, 0, kMoeFastRoutingCounters * sizeof(uint32_t)));
    FP4_CUDA_CHECK(cudaMalloc(&blas_workspace, kBlasWorkspaceBytes));
    check_cublas(cublasCreate(&blas), "cublasCreate");
    check_cublas(cublasSetWorkspace(blas, blas_workspace, kBlasWorkspaceBytes), "cublasSetWorkspace");
    // Logits must be fp32 sums rounded to bf16 once: a split-K reduction in the output type would round twice
    // (seen on H100 at H = 4096, E = 4: a different top-k order than the single-rounded reference).
    check_cublas(cublasSetMathMode(blas, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), "cublasSetMathMode");
  }
};

MoeLayerContext::MoeLayerContext() : state_(std::make_unique<State>()) {}
MoeLayerContext::~MoeLayerContext() = default;

size_t MoeLayerContext::workspace_bytes() const {
  const State& s = *state_;
  const size_t own = s.blas != nullptr ? State::kBlasWorkspaceBytes + kMoeFastRoutingCounters * sizeof(uint32_t) : 0;
  return own + s.gemm.workspace_bytes();
}

namespace {

// Logits, top-k routing and grouping into the workspace.
void route(cublasHandle_t blas, uint32_t* done_counters, const MoeLayerShape& shape, const MoeLayerWeights& weights,
           const MoeLayerArgs& args, const MoeWorkspace& w) {
  const auto m = static_cast<int32_t>(args.m), E = static_cast<int32_t>(shape.n_experts);
  const auto k = static_cast<int32_t>(shape.top_k), H = static_cast<int32_t>(shape.hidden);
  if (m <= kMoeFastRoutingMaxTokens) {
    launch_moe_fast_route(args.x, weights.router, m, E, H, k, shape.norm_topk_prob, w.logits, w.routing,
                          done_counters, args.stream);
    return;
  }
  if (args.batch_invariant) {
    // The GEMV's logits of a token depend on its row only. Each chunk's own routing is overwritten below; the
    // routing kernels compute what the fused kernel's tail does.
    for (int32_t first = 0; first < m; first += kMoeFastRoutingMaxTokens)
      launch_moe_fast_route(args.x + static_cast<int64_t>(first) * H, weights.router,
                            std::min(kMoeFastRoutingMaxTokens, m - first), E, H, k, shape.norm_topk_prob,
                            w.logits + static_cast<int64_t>(first) * E, w.routing, done_counters, args.stream);
    launch_moe_route(w.logits, m, E, k, shape.norm_topk_prob, w.routing, args.stream);
    launch_moe_group(m, E, k, w.routing, args.stream);
    return;
  }
  // Router logits [m, E] = x [m, H] . router[E, H]^T, bf16 out: column-major logits^T = router^T^T . x^T.
  check_cublas(cublasSetStream(blas, static_cast<cudaStream_t>(args.stream)), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  check_cublas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, E, m, H, &one, weights.router, CUDA_R_16BF, H,
                            args.x, CUDA_R_16BF, H, &zero, w.logits, CUDA_R_16BF, E, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (router logits)");
  launch_moe_route(w.logits, m, E, k, shape.norm_topk_prob, w.routing, args.stream);
  launch_moe_group(m, E, k, w.routing, args.stream);
}

// x -> expert_rows (each sorted slot's expert output) on the layer's own grouped kernels.
void run_layer_kernels(const MoeLayerShape& shape, const MoeLayerWeights& weights, const MoeLayerArgs& args,
                       const MoeWorkspace& w) {
  const auto m = static_cast<int32_t>(args.m), E = static_cast<int32_t>(shape.n_experts);
  const auto k = static_cast<int32_t>(shape.top_k);
  const int32_t max_active = std::min(E, m * k);
  MoeGroupedGemm gemm1{.a = args.x,
                       .a_rows = w.routing.sorted_token,
                       .packed = weights.w13_packed,
                       .scales = weights.w13_scales,
                       .order = weights.w13_row_order,
                       .n_rows = static_cast<int32_t>(2 * shape.intermediate),
                       .k = static_cast<int32_t>(shape.hidden),
                       .alphas = weights.g1_alphas,
                       .expert_offsets = w.routing.expert_offsets,
                       .active_experts = w.routing.active_experts,
                       .n_active = w.routing.n_active,
                       .out = w.sorted_rows,
                       .stream = args.stream};
  launch_moe_grouped_gemm(gemm1, true, max_active);
  MoeGroupedGemm gemm2 = gemm1;
  gemm2.a = w.sorted_rows;
  gemm2.a_rows = nullptr;
  gemm2.packed = weights.w2_packed;
  gemm2.scales = weights.w2_scales;
  gemm2.order = weights.w2_row_order;
  gemm2.n_rows = static_cast<int32_t>(shape.hidden);
  gemm2.k = static_cast<int32_t>(shape.intermediate);
  gemm2.alphas = weights.g2_alphas;
  gemm2.out = w.expert_rows;
  launch_moe_grouped_gemm(gemm2, false, max_active);
}

// The same through the public grouped GEMM: gather, GEMM1 (gate|up), SwiGLU, GEMM2.
void run_grouped_gemm(Nvfp4GemmContext& gemm, const MoeLayerShape& shape, const MoeLayerWeights& weights,
                      const MoeLayerArgs& args, const MoeWorkspace& w) {
  const auto rows = static_cast<int32_t>(args.m * shape.top_k), H = static_cast<int32_t>(shape.hidden);
  const auto I = static_cast<int32_t>(shape.intermediate);
  auto* x_rows = reinterpret_cast<bf16_bits*>(w.sorted_rows);
  auto* expert_rows = reinterpret_cast<bf16_bits*>(w.expert_rows);
  launch_moe_gather_rows(args.x, w.routing.sorted_token, rows, H, w.sorted_rows, args.stream);
  Nvfp4GroupedGemmArgs gemm1{.x = x_rows,
                              .max_rows = rows,
                              .expert_offsets = w.routing.expert_offsets,
                              .n_experts = shape.n_experts,
                              .packed = weights.w13_packed,
                              .block_scales = weights.w13_scales,
                              .n = 2 * shape.intermediate,
                              .k = shape.hidden,
                              .row_order = weights.w13_row_order,
                              .alphas = weights.g1_alphas,
                              .alphas_per_expert = 2,
                              .y = expert_rows,
                              .stream = args.stream,
                              .batch_invariant = args.batch_invariant};
  nvfp4_grouped_gemm_w4a16(gemm, gemm1);
  launch_moe_swiglu(w.expert_rows, rows, I, w.sorted_rows, args.stream);
  Nvfp4GroupedGemmArgs gemm2 = gemm1;  // x_rows now holds the activations, expert_rows receives the outputs
  gemm2.packed = weights.w2_packed;
  gemm2.block_scales = weights.w2_scales;
  gemm2.n = shape.hidden;
  gemm2.k = shape.intermediate;
  gemm2.row_order = weights.w2_row_order;
  gemm2.alphas = weights.g2_alphas;
  gemm2.alphas_per_expert = 1;
  nvfp4_grouped_gemm_w4a16(gemm, gemm2);
}

}  // namespace

void moe_layer_forward(MoeLayerContext& context, const MoeLayerShape& shape, const MoeLayerWeights& weights,
                       const MoeLayerArgs& args) {
  check_shape(shape);
  FP4_CHECK(args.m >= 0 && args.m <= shape.max_tokens,
            "moe_layer_forward: m = {} tokens exceeds shape.max_tokens = {} (size the workspace for more)", args.m,
            shape.max_tokens);
  const MoeWorkspace w = carve_workspace(shape, args.workspace);
  FP4_CHECK(args.workspace != nullptr && aligned(args.workspace, 256) && args.workspace_bytes >= w.bytes,
            "moe_layer_forward: workspace must be a 256-byte aligned device buffer of moe_layer_workspace_bytes() = "
            "{} bytes, got {} bytes",
            w.bytes, args.workspace_bytes);
  const std::pair<const void*, const char*> weight_pointers[] = {
      {weights.router, "router"},       {weights.w13_packed, "w13_packed"}, {weights.w13_scales, "w13_scales"},
      {weights.w2_packed, "w2_packed"}, {weights.w2_scales, "w2_scales"},   {weights.g1_alphas, "g1_alphas"},
      {weights.g2_alphas, "g2_alphas"}};
  for (const auto& [pointer, name] : weight_pointers)
    FP4_CHECK(pointer != nullptr, "moe_layer_forward: weights.{} must be a device pointer", name);
  FP4_CHECK(aligned(weights.router, 16), "moe_layer_forward: weights.router must be 16-byte aligned");
  FP4_CHECK(aligned(weights.w13_packed, 8) && aligned(weights.w2_packed, 8),
            "moe_layer_forward: weights.w13_packed and weights.w2_packed must be 8-byte aligned");
  for (const auto& [order, rows, name] : {std::tuple{weights.w13_row_order, 2 * shape.intermediate, "w13_row_order"},
                                          std::tuple{weights.w2_row_order, shape.hidden, "w2_row_order"}})
    FP4_CHECK(order == Nvfp4RowOrder::Linear || rows % 32 == 0,
              "moe_layer_forward: weights.{} is a TRT-LLM shuffle, which needs rows % 32 == 0 (got {})", name, rows);
  FP4_CHECK(weights.w2_row_order != Nvfp4RowOrder::GatedShuffled,
            "moe_layer_forward: weights.w2_row_order cannot be GatedShuffled (w2 is not gated)");
  FP4_CHECK(args.expert_gemm == MoeExpertGemm::Auto || args.expert_gemm == MoeExpertGemm::LayerKernels ||
                args.expert_gemm == MoeExpertGemm::GroupedGemm,
            "moe_layer_forward: args.expert_gemm = {} is not a MoeExpertGemm", static_cast<int>(args.expert_gemm));
  FP4_CHECK(!args.batch_invariant || args.expert_gemm != MoeExpertGemm::LayerKernels,
            "moe_layer_forward: args.batch_invariant runs the grouped GEMM path; expert_gemm LayerKernels "
            "contradicts it");
  if (args.m == 0) return;
  FP4_CHECK(args.x != nullptr && aligned(args.x, 16), "moe_layer_forward: x must be a 16-byte aligned device pointer");
  FP4_CHECK(args.y != nullptr && aligned(args.y, 16), "moe_layer_forward: y must be a 16-byte aligned device pointer");
  const auto x_begin = reinterpret_cast<uintptr_t>(args.x), y_begin = reinterpret_cast<uintptr_t>(args.y);
  const auto io_bytes = static_cast<uintptr_t>(args.m * shape.hidden * 2);
  FP4_CHECK(x_begin + io_bytes <= y_begin || y_begin + io_bytes <= x_begin, "moe_layer_forward: y overlaps x");

  MoeLayerContext::State& state = *context.state_;
  state.ensure_created();
  route(state.blas, state.done_counters, shape, weights, args, w);
  const MoeExpertGemm path = args.batch_invariant                  ? MoeExpertGemm::GroupedGemm
                             : args.expert_gemm == MoeExpertGemm::Auto ? moe_expert_gemm_for(shape, args.m)
                                                                       : args.expert_gemm;
  if (path == MoeExpertGemm::LayerKernels)
    run_layer_kernels(shape, weights, args, w);
  else
    run_grouped_gemm(state.gemm, shape, weights, args, w);
  launch_moe_combine(w.expert_rows, w.routing, static_cast<int32_t>(args.m), static_cast<int32_t>(shape.top_k),
                     static_cast<int32_t>(shape.hidden), args.y, args.stream);
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
