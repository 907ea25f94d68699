// Launchers of the MoE layer's kernels, for moe_layer.cpp (which validates and carves the workspace). Plain C++ types;
// arguments are trusted; every launch is asynchronous on `stream` and reads sizes that depend on the routing (expert
// counts, active experts) from device memory only.
#pragma once
#include <cstdint>

#include "kernels/cpu/nvfp4_gemm.h"

namespace fp4serve::cuda {

// The routing state in the workspace.
struct MoeRoutingBuffers {
  int32_t* topk_ids;        // [m, k]
  float* topk_weights;      // [m, k]
  int32_t* expert_offsets;  // [E + 1] start of each expert's rows in the sorted order
  int32_t* active_experts;  // [E] experts with tokens, increasing; entries past n_active unused
  int32_t* n_active;        // [1]
  int32_t* sorted_token;    // [m * k] token of each sorted row
  int32_t* slot_position;   // [m * k] sorted row of slot t * k + j
};

// logits [m, E] bf16 -> topk_ids / topk_weights (one warp per token).
void launch_moe_route(const uint16_t* logits, int32_t m, int32_t n_experts, int32_t top_k, bool norm_topk_prob,
                      const MoeRoutingBuffers& routing, void* stream);
// topk_ids -> expert_offsets, active_experts, n_active, sorted_token, slot_position (one CTA).
void launch_moe_group(int32_t m, int32_t n_experts, int32_t top_k, const MoeRoutingBuffers& routing, void* stream);

// Small batches in one launch: router logits [m, E] = bf16(fp32 sum of x [m, H] . router [E, H]^T) (a GEMV, each warp
// one expert for a group of up to 8 tokens); the last CTA of each token group routes its tokens as launch_moe_route
// does, and the last group groups the slots as launch_moe_group does (same permutation; token bitmasks per expert,
// hence the token limit). done_counters: kMoeFastRoutingCounters zero-initialized uint32 (one per token group, one for
// the groups), left zero; launches on them must not overlap.
inline constexpr int32_t kMoeFastRoutingMaxTokens = 64;
inline constexpr int32_t kMoeFastRoutingCounters = kMoeFastRoutingMaxTokens / 8 + 1;
void launch_moe_fast_route(const uint16_t* x, const uint16_t* router, int32_t m, int32_t n_experts, int32_t hidden,
                           int32_t top_k, bool norm_topk_prob, uint16_t* logits, const MoeRoutingBuffers& routing,
                           uint32_t* done_counters, void* stream);

// One grouped W4A16 GEMM over the active experts: for sorted rows p of expert e (expert_offsets),
//   plain: out[p, n] = bf16(256 * alphas[e] * sum_k a[row(p), k] * W_e[n, k])   n < n_rows
//   gated: out[p, i] = bf16(bf16(silu(g)) * u), g / u = the same with rows i / I + i and alphas[2e] / [2e + 1],
//          each rounded to bf16 first; i < I = n_rows / 2
// where row(p) = a_rows ? a_rows[p] : p and weights are e2m1 * scale * 2^-8 (nvfp4_device.cuh).
struct MoeGroupedGemm {
  const uint16_t* a;        // [*, k] bf16
  const int32_t* a_rows;    // nullable gather index
  const uint8_t* packed;    // [E, n_rows, k/2]
  const uint8_t* scales;    // [E, Np * Kp] swizzled
  Nvfp4RowOrder order;
  int32_t n_rows;           // per expert: 2I (gated) or H
  int32_t k;                // multiple of 16, <= kMoeMaxK
  const float* alphas;      // [E, 2] gated, [E] plain
  const int32_t* expert_offsets;
  const int32_t* active_experts;
  const int32_t* n_active;
  uint16_t* out;            // [m * k, I] gated, [m * k, n_rows] plain
  void* stream;
};
// max_active bounds n_active (min(E, m * k)): one grid row per possibly active expert.
void launch_moe_grouped_gemm(const MoeGroupedGemm& gemm, bool gated, int32_t max_active);

// Around the public grouped GEMM (nvfp4_grouped_gemm.h), which reads its rows already sorted by expert:
// gathered[p, :] = x[sorted_token[p], :] for p < rows (16-byte vectors; hidden % 8 == 0).
void launch_moe_gather_rows(const uint16_t* x, const int32_t* sorted_token, int32_t rows, int32_t hidden,
                            uint16_t* gathered, void* stream);
// activated[p, i] = bf16(bf16(silu(g)) * u) for g = gate_up[p, i], u = gate_up[p, I + i]: the gated epilogue of
// launch_moe_grouped_gemm applied to GEMM1's bf16 output (so both paths store the same values).
void launch_moe_swiglu(const uint16_t* gate_up, int32_t rows, int32_t intermediate, uint16_t* activated, void* stream);

// y[t, :] = bf16(sum over j < k in order of topk_weights[t, j] * expert_out[slot_position[t * k + j], :]).
void launch_moe_combine(const uint16_t* expert_out, const MoeRoutingBuffers& routing, int32_t m, int32_t top_k,
                        int32_t hidden, uint16_t* y, void* stream);

}  // namespace fp4serve::cuda
