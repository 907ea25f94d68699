// Launchers of the NVFP4 W4A16 kernels, for nvfp4_gemm.cpp (which validates first), tests and the benchmark. Plain C++
// types only, so .cpp files can call them. Arguments are trusted; every launch is asynchronous on args.stream.
// Kernels dequantize to e2m1 * scale * 2^-8 (exact in bf16, see nvfp4_device.cuh) and fold the 256 into alpha.
#pragma once
#include <cstdint>

#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_gemm.h"

namespace fp4serve::cuda {

inline constexpr int kAlphaTableSize = static_cast<int>(kMaxNvfp4AlphaRanges);
// Output rows [row_end[i - 1], row_end[i]) are multiplied by alpha[i]; passed to kernels by value. With
// device_alpha set, alpha[i] is read from device memory at run time instead (values in `alpha` are unused), so that a
// captured CUDA graph follows a reload that changes the alphas in place.
struct AlphaTable {
  int32_t count;
  int32_t row_end[kAlphaTableSize];
  float alpha[kAlphaTableSize];
  const float* device_alpha;  // nullptr, or device [count]
};

struct Nvfp4LaunchArgs {
  const uint16_t* x;             // [m, k] bf16, 16-byte aligned rows
  int32_t m;
  const uint8_t* packed;         // [n, k/2] e2m1, low nibble first, rows in `order`, 8-byte aligned
  const uint8_t* block_scales;   // [Np * Kp] e4m3, 128x4 swizzled over the physical rows
  int32_t n;
  int32_t k;                     // multiple of 16
  Nvfp4RowOrder order;
  AlphaTable alphas;             // last row_end == n
  uint16_t* y;                   // [m, n] bf16
  void* stream;                  // cudaStream_t
};

// The fused kernel (nvfp4_fused.cu): weights stay packed, a cp.async pipeline stages codes, scales and the token
// tile in shared memory, each warp dequantizes 16 * row_tiles weight rows in registers into mma.sync fragments (one
// token fragment load serves its row_tiles m16 tiles). A CTA covers 8 * token_tiles tokens x 16 * warps_n * row_tiles
// rows; its 8 warps split the rows (warps_n) and each stage's K (8 / warps_n).
// k_splits > 1 splits K over CTAs; their fp32 partials meet in `partials` and the last CTA of a tile adds them in
// split order (deterministic), counted in `counters` (zero-initialized; the last CTA resets its counter).
struct Nvfp4FusedConfig {
  int token_tiles;  // 1, 2, 4 or 8
  int warps_n;      // 8, 4 or 2
  int k_splits;     // >= 1, <= nvfp4_fused_max_splits
  int row_tiles;    // 1 or 2: m16 weight tiles per warp
};
Nvfp4FusedConfig nvfp4_fused_config_for(int64_t m, int64_t n, int64_t k);
// The tile of Nvfp4GemmPath::BatchInvariant and of the grouped GEMM's batch_invariant mode (nvfp4_gemm.cpp): 8 warps
// over the rows (each warp adds a stage's whole K), 4 or 8 token tiles by `tokens` (one accumulator chain either
// way), one row tile, k_splits 1. Every output then adds the same products in the same order for any token count.
Nvfp4FusedConfig nvfp4_batch_invariant_tile(int64_t tokens);
// The rule's K split for `tile`'s token_tiles, warps_n and row_tiles (its k_splits is ignored).
int nvfp4_fused_splits_for(int64_t m, int64_t n, int64_t k, const Nvfp4FusedConfig& tile);
int nvfp4_fused_max_splits(int64_t k, int warps_n);
// Workspace a launch needs: floats of partials and counters (both 0 when k_splits == 1).
struct Nvfp4FusedWorkspaceSize {
  int64_t partial_floats;
  int64_t counters;
};
Nvfp4FusedWorkspaceSize nvfp4_fused_workspace_size(int64_t m, int64_t n, const Nvfp4FusedConfig& config);
void launch_nvfp4_fused(const Nvfp4LaunchArgs& args, const Nvfp4FusedConfig& config, float* partials,
                        int32_t* counters);

// The grouped form (nvfp4_grouped_gemm.h): one launch over all experts; validated arguments.
struct Nvfp4GroupedLaunchArgs {
  const uint16_t* x;              // [max_rows, k] bf16
  int32_t max_rows;
  const int32_t* expert_offsets;  // device [n_experts + 1]
  int32_t n_experts;
  const uint8_t* packed;          // [E, n, k/2]
  const uint8_t* block_scales;    // [E, Np * Kp]
  int32_t n;
  int32_t k;
  Nvfp4RowOrder order;
  const float* alphas;            // device [E, alphas_per_expert]
  int32_t alphas_per_expert;      // 1 or 2
  uint16_t* y;                    // [max_rows, n]
  void* stream;
};
// token_tiles / warps_n / row_tiles as in Nvfp4FusedConfig (no K split); nvfp4_grouped_config_for picks them.
Nvfp4FusedConfig nvfp4_grouped_config_for(int64_t max_rows, int64_t n_experts, int64_t n, int64_t k);
void launch_nvfp4_grouped(const Nvfp4GroupedLaunchArgs& args, const Nvfp4FusedConfig& config);

// m <= 32 (kNvfp4StreamingMaxTokens); warps_per_cta in [1, 16] split K (nvfp4_streaming_warps_for picks it).
int nvfp4_streaming_warps_for(int64_t m, int64_t n, int64_t k);
void launch_nvfp4_streaming(const Nvfp4LaunchArgs& args, int warps_per_cta);

// w [n, k] bf16 = e2m1 * scale * 2^-8 in logical row order (multiply products by kDequantizedAlphaFactor * alpha).
// Reads args.packed, block_scales, n, k, order, stream.
inline constexpr float kDequantizedAlphaFactor = 256.0f;
// scaled[i] = kDequantizedAlphaFactor * alpha_i for i < count (from device_alpha), then scaled[count] = 0: the alpha
// and beta of the DequantCublas path's GEMMs in cuBLAS's device pointer mode.
void launch_scaled_device_alphas(const AlphaTable& table, float* scaled, void* stream);
void launch_nvfp4_dequantize(const Nvfp4LaunchArgs& args, uint16_t* w);

}  // namespace fp4serve::cuda
