// Mixture-of-experts FFN on the CPU, bf16 or NVFP4 experts: for each token t,
//   y[t] = bf16(sum over slots j = 0..top_k-1, in order, of topk_weights[t, j] * d_j)      (fp32 sum from 0)
//   d_j  = bf16(down(a)),  a[i] = bf16(bf16(silu(g[i])) * u[i]),  g = bf16(gate(x[t])), u = bf16(up(x[t]))
// with e = topk_ids[t, j]. Tokens are grouped by expert (increasing token order) so each expert runs its two GEMMs
// once over its own tokens; the GEMMs are gemm_rows.h's, so results do not depend on the grouping or batch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "format/bf16.h"
#include "kernels/cpu/nvfp4_gemm.h"

namespace fp4serve {

struct MoeProblem {
  std::string_view layer;  // named in errors: "model.layers.0.mlp.experts"
  const float* x;          // [m, hidden] f32 (bf16-representable)
  int64_t m;
  int64_t hidden;             // H
  int64_t intermediate;       // I
  int64_t n_experts;          // E
  const int32_t* topk_ids;    // [m, top_k] i32 in [0, E), distinct within a token
  const float* topk_weights;  // [m, top_k] f32
  int64_t top_k;
  float* y;  // [m, hidden] f32, bf16-representable
};

struct MoeBf16Weights {
  const bf16_bits* w13;  // [E, 2I, H] bf16: gate rows [0, I), up rows [I, 2I)
  const bf16_bits* w2;   // [E, H, I] bf16
};

struct MoeNvfp4Weights {
  const uint8_t* w13_packed;  // [E, 2I, H/2] e2m1; logical gate rows [0, I), up rows [I, 2I), stored in w13_row_order
  const uint8_t* w13_scales;  // [E, Np * Kp] e4m3 swizzled per expert, (Np, Kp) = swizzled_scale_shape(2I, H/16)
  Nvfp4RowOrder w13_row_order;
  const uint8_t* w2_packed;  // [E, H, I/2] e2m1
  const uint8_t* w2_scales;  // [E, Np * Kp] e4m3, (Np, Kp) = swizzled_scale_shape(H, I/16)
  Nvfp4RowOrder w2_row_order;
  const float* g1_alphas;  // [E, 2] f32: exact alphas of gate and up
  const float* g2_alphas;  // [E] f32
  Nvfp4Activation activation;
  float w13_input_scale;  // Static: global scale of the GEMM1 operand (one per layer)
  float w2_input_scale;   // Static: global scale of the GEMM2 operand
};

// Scratch bytes for m tokens (OpenMP inside; call from outside any parallel region).
size_t moe_bf16_scratch_bytes(const MoeProblem& problem);
size_t moe_nvfp4_scratch_bytes(const MoeProblem& problem);
void moe_bf16_cpu(const MoeProblem& problem, const MoeBf16Weights& weights, uint8_t* scratch);
void moe_nvfp4_cpu(const MoeProblem& problem, const MoeNvfp4Weights& weights, uint8_t* scratch);

}  // namespace fp4serve
