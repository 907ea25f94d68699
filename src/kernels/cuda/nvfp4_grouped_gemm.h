// Grouped NVFP4 W4A16 GEMM for MoE experts: for every expert e, rows [expert_offsets[e], expert_offsets[e+1]) of x
// (tokens already gathered expert by expert) times dequant(W_e)^T, times alpha (per expert, or per gate/up half of
// w13). expert_offsets live on the device: no host synchronization; experts with no rows cost (almost) nothing, since
// the grid covers only max_rows worth of (expert, token-tile) work items, found on the device. Host-only header.
#pragma once
#include <cstdint>

#include "format/bf16.h"
#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_gemm.h"

namespace fp4serve::cuda {

struct Nvfp4GroupedGemmArgs {
  const bf16_bits* x = nullptr;  // [max_rows, k] bf16, row-major, 16-byte aligned
  int64_t max_rows = 0;          // host bound on expert_offsets[n_experts]; sizes the grid
  const int32_t* expert_offsets = nullptr;  // device [n_experts + 1], non-decreasing from 0, last <= max_rows
  int64_t n_experts = 0;
  const uint8_t* packed = nullptr;        // device [E, n, k/2] e2m1, low nibble first, rows of each expert in row_order
  const uint8_t* block_scales = nullptr;  // device [E, Np * Kp] e4m3, 128x4 swizzled per expert (layout.h)
  int64_t n = 0;                          // output rows per expert (w13: 2 * I, w2: H)
  int64_t k = 0;                          // multiple of 16
  Nvfp4RowOrder row_order = Nvfp4RowOrder::Linear;
  // device [E, alphas_per_expert]: 1 = one alpha per expert (w2); 2 = rows [0, n/2) use the first, [n/2, n) the
  // second (w13: gate, up). Logical rows, whatever the row_order.
  const float* alphas = nullptr;
  int64_t alphas_per_expert = 1;
  bf16_bits* y = nullptr;  // [max_rows, n] bf16; rows past expert_offsets[n_experts] are not written
  void* stream = nullptr;  // cudaStream_t
  // --deterministic: one tile shape whatever max_rows (nvfp4_batch_invariant_tile), so a row's outputs do not depend
  // on how many rows the experts received; otherwise the tile follows the expected rows per expert.
  bool batch_invariant = false;
};

// Validates the arguments on the host (throws fp4serve::Error naming the field), then launches asynchronously.
// Device contents (offsets, alphas) are trusted. max_rows == 0 does nothing.
void nvfp4_grouped_gemm_w4a16(Nvfp4GemmContext& context, const Nvfp4GroupedGemmArgs& args);

}  // namespace fp4serve::cuda
