// Host side of the NVFP4 W4A16 GEMM: argument validation (messages name the field), path choice and the cuBLAS
// path. Built only with the CUDA backend; the kernels themselves live in nvfp4_{fused,streaming,dequantize}.cu.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/nvfp4_gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/error.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/nvfp4_kernels.h"

namespace fp4serve::cuda {
namespace {

void check_cublas(cublasStatus_t status, const char* call) {
  FP4_CHECK(status == CUBLAS_STATUS_SUCCESS, "nvfp4_gemm_w4a16: {} failed: {}", call, cublasGetStatusString(status));
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

const char* path_name(Nvfp4GemmPath path) {
  switch (path) {
    case Nvfp4GemmPath::Auto: return "Auto";
    case Nvfp4GemmPath::Streaming: return "Streaming";
    case Nvfp4GemmPath::Fused: return "Fused";
    case Nvfp4GemmPath::DequantCublas: return "DequantCublas";
    case Nvfp4GemmPath::BatchInvariant: return "BatchInvariant";
  }
  return "?";
}

// Checks everything the kernels trust and packs the launch arguments.
Nvfp4LaunchArgs validated_launch_args(const Nvfp4GemmArgs& a) {
  const Nvfp4WeightView& w = a.weight;
  FP4_CHECK(w.k >= 16 && w.k % 16 == 0 && w.k <= (int64_t{1} << 30),
            "nvfp4_gemm_w4a16: weight.k = {} must be a positive multiple of 16 (the NVFP4 block size)", w.k);
  FP4_CHECK(w.n_rows >= 1 && w.n_rows <= kMaxNvfp4Rows, "nvfp4_gemm_w4a16: weight.n_rows = {} is not in [1, {}]",
            w.n_rows, kMaxNvfp4Rows);
  FP4_CHECK(a.m >= 0 && a.m <= (int64_t{1} << 30), "nvfp4_gemm_w4a16: m = {} is out of range", a.m);
  FP4_CHECK(w.n_rows * w.k / 2 < (int64_t{1} << 40), "nvfp4_gemm_w4a16: weight [{}, {}] is too large", w.n_rows, w.k);
  if (a.m > 0) {
    FP4_CHECK(a.x != nullptr && aligned(a.x, 16),
              "nvfp4_gemm_w4a16: x must be a non-null 16-byte aligned device pointer");
    FP4_CHECK(a.y != nullptr && aligned(a.y, 2),
              "nvfp4_gemm_w4a16: y must be a non-null 2-byte aligned device pointer");
  }
  FP4_CHECK(w.packed != nullptr && aligned(w.packed, 8),
            "nvfp4_gemm_w4a16: weight.packed must be a non-null 8-byte aligned device pointer");
  FP4_CHECK(w.block_scales != nullptr && aligned(w.block_scales, 4),
            "nvfp4_gemm_w4a16: weight.block_scales must be a non-null 4-byte aligned device pointer");
  if (w.row_order != Nvfp4RowOrder::Linear)
    FP4_CHECK(w.n_rows % 32 == 0,
              "nvfp4_gemm_w4a16: weight.row_order is a TRT-LLM shuffle, which needs n_rows % 32 == 0 (got {})",
              w.n_rows);
  FP4_CHECK(!a.alphas.empty() && a.alphas.size() <= kMaxNvfp4AlphaRanges,
            "nvfp4_gemm_w4a16: alphas has {} ranges; give 1 to {} (one per fused shard)", a.alphas.size(),
            kMaxNvfp4AlphaRanges);
  Nvfp4LaunchArgs launch{};
  int64_t previous_end = 0;
  for (size_t i = 0; i < a.alphas.size(); ++i) {
    const Nvfp4AlphaRange& range = a.alphas[i];
    FP4_CHECK(range.row_end > previous_end && range.row_end <= w.n_rows,
              "nvfp4_gemm_w4a16: alphas[{}].row_end = {} must lie in ({}, {}]", i, range.row_end, previous_end,
              w.n_rows);
    FP4_CHECK(a.device_alphas != nullptr || std::isfinite(range.alpha),
              "nvfp4_gemm_w4a16: alphas[{}].alpha = {} is not finite", i, range.alpha);
    launch.alphas.row_end[i] = static_cast<int32_t>(range.row_end);
    launch.alphas.alpha[i] = range.alpha;
    previous_end = range.row_end;
  }
  FP4_CHECK(previous_end == w.n_rows, "nvfp4_gemm_w4a16: alphas cover rows [0, {}) but the weight has {} rows",
            previous_end, w.n_rows);
  launch.alphas.count = static_cast<int32_t>(a.alphas.size());
  FP4_CHECK(a.device_alphas == nullptr || aligned(a.device_alphas, 4),
            "nvfp4_gemm_w4a16: device_alphas must be a 4-byte aligned device pointer");
  launch.alphas.device_alpha = a.device_alphas;
  launch.x = a.x;
  launch.m = static_cast<int32_t>(a.m);
  launch.packed = w.packed;
  launch.block_scales = w.block_scales;
  launch.n = static_cast<int32_t>(w.n_rows);
  launch.k = static_cast<int32_t>(w.k);
  launch.order = w.row_order;
  launch.y = a.y;
  launch.stream = a.stream;
  return launch;
}


// The BatchInvariant path's launch: the split is the one the auto rule gives one token on this weight, so decode keeps
// its parallelism and the split is a function of (n, k) alone; larger m pays for partials it would not need.
Nvfp4FusedConfig batch_invariant_config(int64_t m, int64_t n, int64_t k) {
  Nvfp4FusedConfig config = nvfp4_batch_invariant_tile(m);
  config.k_splits = nvfp4_fused_splits_for(1, n, k, nvfp4_batch_invariant_tile(1));
  return config;
}

}  // namespace

struct Nvfp4GemmContext::State {
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  uint16_t* weights = nullptr;  // [n, k] bf16 dequantized weights of the DequantCublas path
  size_t weight_bytes = 0;
  float* blas_scalars = nullptr;  // [kAlphaTableSize + 1]: device alphas and beta of the DequantCublas GEMMs
  float* partials = nullptr;     // split-K partial tiles of the Fused path
  int32_t* counters = nullptr;   // per output tile, zero between launches
  int64_t partial_floats = 0, counter_count = 0;

  static constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;

  ~State() {
    // Destructors must not throw: release what exists and ignore teardown errors (the driver may be gone).
    if (blas != nullptr) cublasDestroy(blas);
    if (blas_workspace != nullptr) cudaFree(blas_workspace);
    if (blas_scalars != nullptr) cudaFree(blas_scalars);
    if (weights != nullptr) cudaFree(weights);
    if (partials != nullptr) cudaFree(partials);
    if (counters != nullptr) cudaFree(counters);
  }

  void ensure_blas() {
    if (blas != nullptr) return;
    check_cublas(cublasCreate(&blas), "cublasCreate");
    // A fixed workspace lets cuBLAS calls be captured in CUDA graphs.
    FP4_CUDA_CHECK(cudaMalloc(&blas_workspace, kBlasWorkspaceBytes));
    check_cublas(cublasSetWorkspace(blas, blas_workspace, kBlasWorkspaceBytes), "cublasSetWorkspace");
    FP4_CUDA_CHECK(cudaMalloc(&blas_scalars, (kAlphaTableSize + 1) * sizeof(float)));
  }

  void ensure_weights(int64_t n_rows, int64_t k) {
    const size_t bytes = static_cast<size_t>(n_rows * k) * sizeof(uint16_t);
    if (bytes <= weight_bytes) return;
    if (weights != nullptr) FP4_CUDA_CHECK(cudaFree(weights));
    weights = nullptr;
    weight_bytes = 0;
    FP4_CUDA_CHECK(cudaMalloc(&weights, bytes));
    weight_bytes = bytes;
  }

  void ensure_split_workspace(const Nvfp4FusedWorkspaceSize& size) {
    if (size.partial_floats > partial_floats) {
      if (partials != nullptr) FP4_CUDA_CHECK(cudaFree(partials));
      partials = nullptr;
      partial_floats = 0;
      FP4_CUDA_CHECK(cudaMalloc(&partials, static_cast<size_t>(size.partial_floats) * sizeof(float)));
      partial_floats = size.partial_floats;
    }
    if (size.counters > counter_count) {
      if (counters != nullptr) FP4_CUDA_CHECK(cudaFree(counters));
      counters = nullptr;
      counter_count = 0;
      FP4_CUDA_CHECK(cudaMalloc(&counters, static_cast<size_t>(size.counters) * sizeof(int32_t)));
      FP4_CUDA_CHECK(cudaMemset(counters, 0, static_cast<size_t>(size.counters) * sizeof(int32_t)));
      counter_count = size.counters;
    }
  }
};

Nvfp4GemmContext::Nvfp4GemmContext() : state_(std::make_unique<State>()) {}
Nvfp4GemmContext::~Nvfp4GemmContext() = default;

size_t Nvfp4GemmContext::workspace_bytes() const {
  const State& s = *state_;
  const size_t blas = s.blas != nullptr ? State::kBlasWorkspaceBytes + (kAlphaTableSize + 1) * sizeof(float) : 0;
  return blas + s.weight_bytes + static_cast<size_t>(s.partial_floats) * sizeof(float) +
         static_cast<size_t>(s.counter_count) * sizeof(int32_t);
}

void Nvfp4GemmContext::reserve_dequant(int64_t n_rows, int64_t k) {
  FP4_CHECK(n_rows >= 1 && k >= 16, "Nvfp4GemmContext::reserve_dequant: shape [{}, {}] is empty", n_rows, k);
  state_->ensure_blas();
  state_->ensure_weights(n_rows, k);
}

void Nvfp4GemmContext::reserve_fused(int64_t max_m, int64_t n_rows, int64_t k) {
  FP4_CHECK(max_m >= 1 && n_rows >= 1 && k >= 16, "Nvfp4GemmContext::reserve_fused: shape m {} x [{}, {}] is empty",
            max_m, n_rows, k);
  for (int64_t m = 1; m <= max_m; ++m)
    for (const Nvfp4FusedConfig& config :
         {nvfp4_fused_config_for(m, n_rows, k), batch_invariant_config(m, n_rows, k)})
      state_->ensure_split_workspace(nvfp4_fused_workspace_size(m, n_rows, config));
}

Nvfp4FusedConfig nvfp4_batch_invariant_tile(int64_t tokens) {
  // The fused kernel's summation order depends on warps_n (how a stage's K is shared between warps), on the number
  // of accumulator chains (4 / (token_tiles * row_tiles), at least 1) and on k_splits; the token tiles only decide
  // how many tokens a CTA carries.
  return {.token_tiles = tokens <= 32 ? 4 : 8, .warps_n = 8, .k_splits = 1, .row_tiles = 1};
}

Nvfp4GemmPath nvfp4_gemm_auto_path(int64_t m, int64_t n, int64_t k) {
  // H100, bench/RESULTS.md (joint run of 2026-11-23): streaming wins for m <= 8 on weights up to 8192x8192 elements
  // (it loses ~1 µs to the fused kernel at o_proj m = 16 / 32 and wins nowhere else past m = 8); the fused kernel
  // wins up to m = 128 on every shape (qkv / o_proj m = 64: 15.9 / 15.8 µs vs 25.6 / 23.9 for dequantize + cuBLAS);
  // past m = 128 dequantize + cuBLAS wins everywhere.
  const int64_t elements = n * k, large = int64_t{8192} * 8192;
  if (m > 128) return Nvfp4GemmPath::DequantCublas;
  if (m <= 8 && elements <= large) return Nvfp4GemmPath::Streaming;
  return Nvfp4GemmPath::Fused;
}

void nvfp4_gemm_w4a16(Nvfp4GemmContext& context, const Nvfp4GemmArgs& args) {
  const Nvfp4LaunchArgs launch = validated_launch_args(args);
  if (args.m == 0) return;
  const Nvfp4GemmPath path =
      args.path == Nvfp4GemmPath::Auto ? nvfp4_gemm_auto_path(args.m, args.weight.n_rows, args.weight.k) : args.path;
  if (path == Nvfp4GemmPath::Streaming) {
    FP4_CHECK(args.m <= kNvfp4StreamingMaxTokens, "nvfp4_gemm_w4a16: path {} takes m <= {} tokens, got m = {}",
              path_name(path), kNvfp4StreamingMaxTokens, args.m);
    launch_nvfp4_streaming(launch, nvfp4_streaming_warps_for(args.m, args.weight.n_rows, args.weight.k));
    return;
  }
  Nvfp4GemmContext::State& state = *context.state_;
  if (path == Nvfp4GemmPath::Fused || path == Nvfp4GemmPath::BatchInvariant) {
    const Nvfp4FusedConfig config = path == Nvfp4GemmPath::Fused
                                        ? nvfp4_fused_config_for(args.m, args.weight.n_rows, args.weight.k)
                                        : batch_invariant_config(args.m, args.weight.n_rows, args.weight.k);
    state.ensure_split_workspace(nvfp4_fused_workspace_size(args.m, args.weight.n_rows, config));
    launch_nvfp4_fused(launch, config, state.partials, state.counters);
    return;
  }
  state.ensure_blas();
  state.ensure_weights(args.weight.n_rows, args.weight.k);
  launch_nvfp4_dequantize(launch, state.weights);
  check_cublas(cublasSetStream(state.blas, static_cast<cudaStream_t>(args.stream)), "cublasSetStream");
  // Row-major y [m, n] = x [m, k] . W^T is column-major y^T [n, m] = W^T^T [n, k] . x^T [k, m]; one GEMM per
  // alpha range writes its columns of y.
  // Device alphas reach cuBLAS as device scalars (pointer mode device), scaled on the stream first.
  const bool device_scalars = launch.alphas.device_alpha != nullptr;
  if (device_scalars) launch_scaled_device_alphas(launch.alphas, state.blas_scalars, args.stream);
  check_cublas(cublasSetPointerMode(state.blas, device_scalars ? CUBLAS_POINTER_MODE_DEVICE : CUBLAS_POINTER_MODE_HOST),
               "cublasSetPointerMode");
  const int k = launch.k, m = launch.m, n = launch.n;
  int first_row = 0;
  for (int i = 0; i < launch.alphas.count; ++i) {
    const int rows = launch.alphas.row_end[i] - first_row;
    const float host_alpha = launch.alphas.alpha[i] * kDequantizedAlphaFactor, host_beta = 0.0f;
    const float* alpha = device_scalars ? state.blas_scalars + i : &host_alpha;
    const float* beta = device_scalars ? state.blas_scalars + launch.alphas.count : &host_beta;
    check_cublas(cublasGemmEx(state.blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, m, k, alpha,
                              state.weights + static_cast<int64_t>(first_row) * k, CUDA_R_16BF, k, args.x,
                              CUDA_R_16BF, k, beta, args.y + first_row, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
    first_row = launch.alphas.row_end[i];
  }
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
