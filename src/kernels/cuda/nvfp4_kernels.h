// Launchers of the NVFP4 W4A16 kernels, for nvfp4_gemm.cpp (which validates first), tests and the benchmark. Plain C++
// types only, so .cpp files can call them. Arguments are trusted; every launch is asynchronous on args.stream.
// Kernels dequantize to e2m1 * scale * 2^-8 (exact in bf16, see nvfp4_device.cuh) and fold the 256 into alpha.
#pragma once
#include <cstdint>

#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_gemm.h"

namespace fp4serve::cuda {

inline constexpr int kAlphaTableSize = static_cast<int>(kMaxNvfp4AlphaRanges);
// Output rows [row_end[i - 1], row_end[i]) are multiplied by alpha[i]; passed to kernels by value.
struct AlphaTable {
  int32_t count;
  int32_t row_end[kAlphaTableSize];
  float alpha[kAlphaTableSize];
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

// m <= 32 (kNvfp4StreamingMaxTokens); warps_per_cta in [1, 16] split K (nvfp4_streaming_warps_for picks it).
int nvfp4_streaming_warps_for(int64_t m, int64_t n, int64_t k);
void launch_nvfp4_streaming(const Nvfp4LaunchArgs& args, int warps_per_cta);

// w [n, k] bf16 = e2m1 * scale * 2^-8 in logical row order (multiply products by kDequantizedAlphaFactor * alpha).
// Reads args.packed, block_scales, n, k, order, stream.
inline constexpr float kDequantizedAlphaFactor = 256.0f;
void launch_nvfp4_dequantize(const Nvfp4LaunchArgs& args, uint16_t* w);

}  // namespace fp4serve::cuda
