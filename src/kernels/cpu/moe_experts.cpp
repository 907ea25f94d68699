#include "kernels/cpu/moe_experts.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "format/layout.h"
#include "format/nvfp4.h"
#include "kernels/cpu/bf16_gemm.h"
#include "kernels/cpu/gemm_rows.h"  // first: sets the summation rules for this file
#include "kernels/cpu/silu_mul.h"

namespace fp4serve {

namespace {

// No expert sees more than m tokens, since a token selects distinct experts.
struct MoeScratch {
  int32_t* expert_offsets;   // [E + 1] start of each expert's slots in sorted_slots
  int32_t* expert_cursor;    // [E]
  int32_t* sorted_slots;     // [m * top_k] slot ids t * top_k + j, grouped by expert, tokens increasing
  int32_t* slot_position;    // [m * top_k] index of each slot in sorted_slots
  int32_t* tokens;           // [m] tokens of the current expert
  float* expert_out;         // [m * top_k, H] d of each slot, in sorted order
  float* operand1;           // [m, H] GEMM1 operand of every token (NVFP4)
  float* row_scales1;        // [m] per-token scales of operand1
  uint8_t* activation1;      // activation quantization scratch (m, H)
  float* tiles1;             // token tiles of the current expert's GEMM1 operand
  float* expert_row_scales;  // [m] row_scales1 gathered for the current expert
  float* gate_up;            // [m, 2I]
  float* act;                // [m, I]
  float* operand2;           // [m, I] GEMM2 operand (NVFP4)
  float* row_scales2;        // [m]
  uint8_t* activation2;      // activation quantization scratch (m, I)
  float* tiles2;             // token tiles of the GEMM2 operand
  float* row_buffers;        // [threads, max(H, I)]
};

MoeScratch carve(ScratchCarver& c, const MoeProblem& p, bool nvfp4) {
  const int64_t m = p.m, slots = p.m * p.top_k, H = p.hidden, I = p.intermediate;
  const auto n = [](int64_t v) { return static_cast<size_t>(v); };
  MoeScratch s{};
  s.expert_offsets = c.take<int32_t>(n(p.n_experts + 1));
  s.expert_cursor = c.take<int32_t>(n(p.n_experts));
  s.sorted_slots = c.take<int32_t>(n(slots));
  s.slot_position = c.take<int32_t>(n(slots));
  s.tokens = c.take<int32_t>(n(m));
  s.expert_out = c.take<float>(n(slots * H));
  s.tiles1 = c.take<float>(token_tiles_floats(m, H));
  s.gate_up = c.take<float>(n(m * 2 * I));
  s.act = c.take<float>(n(m * I));
  s.tiles2 = c.take<float>(token_tiles_floats(m, I));
  s.row_buffers = c.take<float>(n(gemm_max_threads() * std::max(H, I)));
  if (nvfp4) {
    s.operand1 = c.take<float>(n(m * H));
    s.row_scales1 = c.take<float>(n(m));
    s.activation1 = c.take<uint8_t>(nvfp4_activation_scratch_bytes(m, H));
    s.expert_row_scales = c.take<float>(n(m));
    s.operand2 = c.take<float>(n(m * I));
    s.row_scales2 = c.take<float>(n(m));
    s.activation2 = c.take<uint8_t>(nvfp4_activation_scratch_bytes(m, I));
  }
  return s;
}

void check_problem(const MoeProblem& p) {
  FP4_CHECK(p.m >= 0 && p.top_k > 0 && p.n_experts > 0 && p.hidden > 0 && p.intermediate > 0,
            "{}: bad MoE problem (m = {}, top_k = {}, experts = {}, hidden = {}, intermediate = {})", p.layer, p.m,
            p.top_k, p.n_experts, p.hidden, p.intermediate);
}

// Counting sort of the (token, slot) pairs by expert; tokens stay in increasing order within an expert.
void group_slots_by_expert(const MoeProblem& p, const MoeScratch& s) {
  const int64_t k = p.top_k;
  std::fill(s.expert_offsets, s.expert_offsets + p.n_experts + 1, 0);
  for (int64_t t = 0; t < p.m; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = p.topk_ids[t * k + j];
      FP4_CHECK(e >= 0 && e < p.n_experts, "{}: topk_ids[{}, {}] = {} is not an expert index in [0, {})", p.layer, t, j,
                e, p.n_experts);
      for (int64_t earlier = 0; earlier < j; ++earlier)
        FP4_CHECK(p.topk_ids[t * k + earlier] != e, "{}: token {} selects expert {} twice (top-k slots {} and {})",
                  p.layer, t, e, earlier, j);
      ++s.expert_offsets[e + 1];
    }
  for (int64_t e = 0; e < p.n_experts; ++e) {
    s.expert_offsets[e + 1] += s.expert_offsets[e];
    s.expert_cursor[e] = s.expert_offsets[e];
  }
  for (int64_t t = 0; t < p.m; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t slot = static_cast<int32_t>(t * k + j);
      const int32_t position = s.expert_cursor[p.topk_ids[slot]]++;
      s.sorted_slots[position] = slot;
      s.slot_position[slot] = position;
    }
}

// Groups the slots, runs run_expert(e, tokens, n, out [n, H]) for every expert with tokens, then combines.
template <typename RunExpert>
void run_moe(const MoeProblem& p, const MoeScratch& s, RunExpert&& run_expert) {
  const int64_t H = p.hidden, k = p.top_k;
  group_slots_by_expert(p, s);
  for (int64_t e = 0; e < p.n_experts; ++e) {
    const int32_t begin = s.expert_offsets[e], count = s.expert_offsets[e + 1] - begin;
    if (count == 0) continue;
    for (int32_t i = 0; i < count; ++i) s.tokens[i] = static_cast<int32_t>(s.sorted_slots[begin + i] / k);
    run_expert(e, s.tokens, count, s.expert_out + static_cast<int64_t>(begin) * H);
  }
#pragma omp parallel for schedule(static) if (p.m * k * H >= kMinParallelWork)
  for (int64_t t = 0; t < p.m; ++t) {
    float* out = p.y + t * H;
    for (int64_t h = 0; h < H; ++h) out[h] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const float weight = p.topk_weights[t * k + j];
      const float* d = s.expert_out + static_cast<int64_t>(s.slot_position[t * k + j]) * H;
      for (int64_t h = 0; h < H; ++h) out[h] += weight * d[h];
    }
    for (int64_t h = 0; h < H; ++h) out[h] = round_to_bf16(out[h]);
  }
}

}  // namespace

size_t moe_bf16_scratch_bytes(const MoeProblem& problem) {
  ScratchCarver carver(nullptr);
  carve(carver, problem, false);
  return carver.used();
}

size_t moe_nvfp4_scratch_bytes(const MoeProblem& problem) {
  ScratchCarver carver(nullptr);
  carve(carver, problem, true);
  return carver.used();
}

void moe_bf16_cpu(const MoeProblem& p, const MoeBf16Weights& weights, uint8_t* scratch) {
  check_problem(p);
  ScratchCarver carver(scratch);
  const MoeScratch s = carve(carver, p, false);
  const int64_t H = p.hidden, I = p.intermediate;
  run_moe(p, s, [&](int64_t e, const int32_t* tokens, int64_t n, float* out) {
    pack_token_tiles(p.x, H, tokens, n, s.tiles1);
    bf16_gemm_tiles_cpu(s.tiles1, n, H, weights.w13 + e * 2 * I * H, 2 * I, s.gate_up, 2 * I, s.row_buffers);
    silu_mul_cpu(s.gate_up, n, I, s.act);
    pack_token_tiles(s.act, I, nullptr, n, s.tiles2);
    bf16_gemm_tiles_cpu(s.tiles2, n, I, weights.w2 + e * H * I, H, out, H, s.row_buffers);
  });
}

void moe_nvfp4_cpu(const MoeProblem& p, const MoeNvfp4Weights& w, uint8_t* scratch) {
  check_problem(p);
  const int64_t H = p.hidden, I = p.intermediate;
  FP4_CHECK(H % kNvfp4BlockSize == 0 && I % kNvfp4BlockSize == 0,
            "{}: hidden ({}) and intermediate ({}) sizes must be multiples of 16 for NVFP4 experts", p.layer, H, I);
  ScratchCarver carver(scratch);
  const MoeScratch s = carve(carver, p, true);
  const bool per_token = w.activation == Nvfp4Activation::PerToken;
  const float* operand1 =
      nvfp4_activation_operand(w.activation, p.x, p.m, H, w.w13_input_scale, s.operand1, s.row_scales1, s.activation1);
  const SwizzledScaleShape scales13 = swizzled_scale_shape(2 * I, H / kNvfp4BlockSize);
  const SwizzledScaleShape scales2 = swizzled_scale_shape(H, I / kNvfp4BlockSize);
  run_moe(p, s, [&](int64_t e, const int32_t* tokens, int64_t n, float* out) {
    pack_token_tiles(operand1, H, tokens, n, s.tiles1);
    const float* row_scales = nullptr;
    if (per_token) {
      for (int64_t i = 0; i < n; ++i) s.expert_row_scales[i] = s.row_scales1[tokens[i]];
      row_scales = s.expert_row_scales;
    }
    const Nvfp4WeightView w13{.packed = w.w13_packed + e * 2 * I * (H / 2),
                              .block_scales = w.w13_scales + e * scales13.padded_rows * scales13.padded_cols,
                              .n_rows = 2 * I,
                              .k = H,
                              .row_order = w.w13_row_order};
    nvfp4_gemm_tiles_cpu(s.tiles1, row_scales, n, w13, 0, I, w.g1_alphas[2 * e], s.gate_up, 2 * I, s.row_buffers);
    nvfp4_gemm_tiles_cpu(s.tiles1, row_scales, n, w13, I, I, w.g1_alphas[2 * e + 1], s.gate_up + I, 2 * I,
                         s.row_buffers);
    silu_mul_cpu(s.gate_up, n, I, s.act);
    const float* operand2 =
        nvfp4_activation_operand(w.activation, s.act, n, I, w.w2_input_scale, s.operand2, s.row_scales2, s.activation2);
    pack_token_tiles(operand2, I, nullptr, n, s.tiles2);
    const Nvfp4WeightView w2{.packed = w.w2_packed + e * H * (I / 2),
                             .block_scales = w.w2_scales + e * scales2.padded_rows * scales2.padded_cols,
                             .n_rows = H,
                             .k = I,
                             .row_order = w.w2_row_order};
    nvfp4_gemm_tiles_cpu(s.tiles2, per_token ? s.row_scales2 : nullptr, n, w2, 0, H, w.g2_alphas[e], out, H,
                         s.row_buffers);
  });
}

}  // namespace fp4serve
