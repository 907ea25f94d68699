// NVFP4-weight W4A16 linear on Hopper: y[t, n] = bf16(alpha(n) * sum_k x[t, k] * W_q[n, k]), W_q = e2m1 * e4m3
// (exact), fp32 accumulation. Weights stay as loaded: packed [N, K/2] in a Nvfp4RowOrder, block scales 128x4-swizzled
// (nvfp4.md §3a). All tensor pointers are device memory; calls are asynchronous on the given stream. Host-only header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "format/bf16.h"
#include "kernels/cpu/nvfp4_gemm.h"

namespace fp4serve::cuda {

// Output rows [previous range's row_end, row_end) are scaled by alpha: one range per fused shard (q/k/v, gate/up),
// since shards may carry different weight_scale_2.
struct Nvfp4AlphaRange {
  int64_t row_end;
  float alpha;
};
inline constexpr size_t kMaxNvfp4AlphaRanges = 8;

// Which kernel runs. Auto picks by shape (nvfp4_gemm_auto_path); the others force a path (tests, benchmarks).
enum class Nvfp4GemmPath : uint8_t {
  Auto,
  Streaming,      // m <= kNvfp4StreamingMaxTokens: weight rows streamed once with 16-byte loads, tensor-core dot
  Fused,          // any m: packed weights pipelined through shared memory, dequantized into mma.sync fragments
  DequantCublas,  // any m: weights dequantized to a bf16 workspace, then cuBLAS bf16 GEMM (one per alpha range)
  // any m (--deterministic): the fused kernel with one tile shape for every m and a K split fixed by the weight's
  // shape, so each output's summation order, hence its bits, never depend on m or on the other rows
  BatchInvariant,
};
inline constexpr int64_t kNvfp4StreamingMaxTokens = 32;
inline constexpr int64_t kMaxNvfp4Rows = int64_t{1} << 21;  // the fused kernel's grid covers n / 32 <= 65535 tiles

struct Nvfp4GemmArgs {
  const bf16_bits* x = nullptr;  // [m, weight.k] bf16, row-major, 16-byte aligned
  int64_t m = 0;
  Nvfp4WeightView weight{};  // device pointers; block-scale padding may hold anything (it is never used)
  std::span<const Nvfp4AlphaRange> alphas;  // host memory; row_end strictly increasing, last == weight.n_rows
  // Optional device [alphas.size()]: alpha i is read here when the kernels run (alphas[i].alpha is then unused), so
  // a CUDA graph captured around this call stays right when a reload rewrites the alphas in place.
  const float* device_alphas = nullptr;
  bf16_bits* y = nullptr;                   // [m, weight.n_rows] bf16, row-major
  void* stream = nullptr;                   // cudaStream_t; nullptr is the legacy default stream
  Nvfp4GemmPath path = Nvfp4GemmPath::Auto;
};

// Per-thread state of the GEMM: the cuBLAS handle and the bf16 weight workspace of the DequantCublas path, the
// split-K partials of the Fused path, all created on first use on the device current then. Not thread-safe: one
// context per host thread (or stream).
class Nvfp4GemmContext {
 public:
  Nvfp4GemmContext();
  ~Nvfp4GemmContext();
  Nvfp4GemmContext(const Nvfp4GemmContext&) = delete;
  Nvfp4GemmContext& operator=(const Nvfp4GemmContext&) = delete;

  // Allocates now what the DequantCublas path needs for weights up to n_rows x k, so that later calls allocate
  // nothing (a CUDA graph capture may not allocate).
  void reserve_dequant(int64_t n_rows, int64_t k);
  // The same for the split-K workspace of the Fused and BatchInvariant paths, for every m <= max_m.
  void reserve_fused(int64_t max_m, int64_t n_rows, int64_t k);
  size_t workspace_bytes() const;  // device memory held now: cuBLAS workspace, dequantized weights, split-K partials

 private:
  friend void nvfp4_gemm_w4a16(Nvfp4GemmContext& context, const Nvfp4GemmArgs& args);
  struct State;
  std::unique_ptr<State> state_;
};

// The path Auto takes for m tokens on an [n, k] weight (measured on H100, bench/RESULTS.md): Streaming for m <= 8 on
// weights of at most 8192^2 elements, Fused otherwise up to m = 128, DequantCublas past it.
Nvfp4GemmPath nvfp4_gemm_auto_path(int64_t m, int64_t n, int64_t k);

// Validates the arguments (throws fp4serve::Error naming the field at fault), then launches. m == 0 does nothing.
void nvfp4_gemm_w4a16(Nvfp4GemmContext& context, const Nvfp4GemmArgs& args);

}  // namespace fp4serve::cuda
