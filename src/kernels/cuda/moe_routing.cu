// MoE routing kernels: softmax + top-k + renormalization (one warp per token, expert e in lane e % 32), the grouping of
// (token, slot) pairs by expert (tokens stay in increasing order within an expert, so the permutation is the same on
// every run), and for small batches both fused with the router logits in one launch (the last CTA of each token
// group routes the group, the last group groups).
// No float atomics: every sum has a fixed order; the only atomics count finished CTAs and set token bits.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/cuda/nvfp4_device.cuh"

namespace fp4serve::cuda {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kMaxExpertsPerLane = 8;  // kMoeMaxExperts / 32
constexpr int kRouteWarpsPerBlock = 4;
constexpr int kGroupWarps = 32;
constexpr int kFastWarps = 8;  // experts per CTA in the fused kernel's logits, one warp each
constexpr int kFastTokensPerCta = 8;
constexpr int kMaxTopK = 16;  // kMoeMaxTopK (moe_layer.h)
constexpr int kFastMaxSlots = kMoeFastRoutingMaxTokens * kMaxTopK;
constexpr int kFastTokenGroups = kMoeFastRoutingMaxTokens / kFastTokensPerCta;
static_assert(kFastTokenGroups + 1 == kMoeFastRoutingCounters && kFastTokensPerCta <= kFastWarps);
static_assert(kFastWarps * 32 == kMaxExpertsPerLane * 32, "the fused kernel's tail gives each expert a thread");
static_assert(kMoeFastRoutingMaxTokens <= 64, "token bitmasks are 64-bit");

__device__ __forceinline__ float bf16_to_f32(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

struct TopkPick {
  int32_t expert;
  float weight;
};

// Softmax, top-k and renormalization of one token's logits [n_experts] bf16 by one warp: lane j < top_k returns the
// j-th pick (most probable first, ties to the lower expert index). Loads bypass L1: in the fused kernel other CTAs
// wrote the logits.
__device__ __forceinline__ TopkPick route_token(const uint16_t* row, int32_t n_experts, int32_t top_k, bool norm_topk_prob) {
  const int lane = threadIdx.x % 32;
  float p[kMaxExpertsPerLane];
  float max_logit = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    const int32_t e = lane + 32 * i;
    p[i] = e < n_experts ? bf16_to_f32(__ldcg(row + e)) : -INFINITY;
    max_logit = fmaxf(max_logit, p[i]);
  }
  // Butterfly reductions leave the same bits in every lane (each step adds the same two values).
  for (int offset = 16; offset > 0; offset /= 2) max_logit = fmaxf(max_logit, __shfl_xor_sync(kFullMask, max_logit, offset));
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    p[i] = lane + 32 * i < n_experts ? expf(p[i] - max_logit) : 0.0f;
    sum += p[i];
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
  // Keys order the probabilities (non-negative floats order as their bits); + 1 so that 0 marks absent or taken.
  uint32_t key[kMaxExpertsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i)
    key[i] = lane + 32 * i < n_experts ? __float_as_uint(__fdiv_rn(p[i], sum)) + 1u : 0u;

  // Round j: the warp's best key, then the lowest expert holding it (two warp reductions); lane j keeps it.
  float my_probability = 0.0f, topk_sum = 0.0f;
  int32_t my_expert = 0;
  for (int32_t j = 0; j < top_k; ++j) {
    uint32_t lane_best = 0;
    int lane_index = 0;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i)
      if (key[i] > lane_best) {  // strict: the lowest index among this lane's equal keys
        lane_best = key[i];
        lane_index = i;
      }
    const uint32_t best = __reduce_max_sync(kFullMask, lane_best);
    const auto best_expert = static_cast<int32_t>(
        __reduce_min_sync(kFullMask, lane_best == best ? static_cast<uint32_t>(lane + 32 * lane_index) : ~0u));
    if (best_expert % 32 == lane) {
#pragma unroll
      for (int i = 0; i < kMaxExpertsPerLane; ++i)
        if (i == best_expert / 32) key[i] = 0;  // taken
    }
    const float probability = __uint_as_float(best - 1u);
    if (lane == j) {
      my_probability = probability;
      my_expert = best_expert;
    }
    topk_sum += probability;  // in top-k order, as the CPU reference sums
  }
  return {my_expert, norm_topk_prob ? __fdiv_rn(my_probability, topk_sum) : my_probability};
}

__global__ void moe_route_kernel(const uint16_t* logits, int32_t m, int32_t n_experts, int32_t top_k,
                                 bool norm_topk_prob, MoeRoutingBuffers r) {
  const int32_t token = blockIdx.x * kRouteWarpsPerBlock + threadIdx.x / 32;
  if (token >= m) return;  // warp-uniform
  const TopkPick pick = route_token(logits + static_cast<int64_t>(token) * n_experts, n_experts, top_k, norm_topk_prob);
  const int lane = threadIdx.x % 32;
  if (lane < top_k) {
    const int64_t slot = static_cast<int64_t>(token) * top_k + lane;
    r.topk_ids[slot] = pick.expert;
    r.topk_weights[slot] = pick.weight;
  }
}

__global__ void __launch_bounds__(kGroupWarps * 32) moe_group_kernel(int32_t m, int32_t n_experts, int32_t top_k,
                                                                     MoeRoutingBuffers r) {
  __shared__ int32_t counts[kMaxExpertsPerLane * 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t n_slots = m * top_k;
  const uint32_t lanes_below = (1u << lane) - 1u;
  // Warp w owns experts w, w + 32, ...
  int32_t count[kMaxExpertsPerLane] = {};
  for (int32_t base = 0; base < n_slots; base += 32) {
    const int32_t id = base + lane < n_slots ? r.topk_ids[base + lane] : -1;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i)
      count[i] += __popc(__ballot_sync(kFullMask, id == warp + 32 * i));
  }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i)
      if (warp + 32 * i < n_experts) counts[warp + 32 * i] = count[i];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t offset = 0, active = 0;
    for (int32_t e = 0; e < n_experts; ++e) {
      r.expert_offsets[e] = offset;
      if (counts[e] > 0) r.active_experts[active++] = e;
      const int32_t c = counts[e];
      counts[e] = offset;
      offset += c;
    }
    r.expert_offsets[n_experts] = offset;
    *r.n_active = active;
  }
  __syncthreads();
  int32_t next[kMaxExpertsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) next[i] = warp + 32 * i < n_experts ? counts[warp + 32 * i] : 0;
  for (int32_t base = 0; base < n_slots; base += 32) {
    const int32_t slot = base + lane;
    const int32_t id = slot < n_slots ? r.topk_ids[slot] : -1;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i) {
      const uint32_t mask = __ballot_sync(kFullMask, id == warp + 32 * i);
      if (id == warp + 32 * i) {
        const int32_t position = next[i] + __popc(mask & lanes_below);
        r.sorted_token[position] = slot / top_k;
        r.slot_position[slot] = position;
      }
      next[i] += __popc(mask);
    }
  }
}

// acc + sum of the 8 products of two bf16 vectors, in element order.
__device__ __forceinline__ float dot8_bf16(const uint4& a, const uint4& b, float acc) {
  const uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc = fmaf(__uint_as_float(wa[i] << 16), __uint_as_float(wb[i] << 16), acc);
    acc = fmaf(__uint_as_float(wa[i] & 0xFFFF0000u), __uint_as_float(wb[i] & 0xFFFF0000u), acc);
  }
  return acc;
}

// Grid (experts / kFastWarps, token groups of kFastTokensPerCta). Phase 1 (every CTA): warp w's expert against the
// group's tokens; lane l owns the 8-element chunks l, l + 32, ... of H; fp32 sums in a fixed order, rounded to bf16
// once. Phase 2 (the last CTA of a token group to finish phase 1): route the group's tokens, a warp each. Phase 3 (the
// last group to finish phase 2): mark each token's bit in its experts' masks, scan (count, active) over the experts
// (thread e = expert e), and place slot (t, j) of expert e at offset[e] + the number of earlier tokens in e's mask:
// exactly moe_group_kernel's order. Counters are reset by the CTA that finds itself last.
__global__ void __launch_bounds__(kFastWarps * 32, 1) moe_fast_route_kernel(
    const uint16_t* x, const uint16_t* router, int32_t m, int32_t n_experts, int32_t hidden, int32_t top_k,
    bool norm_topk_prob, uint16_t* logits, MoeRoutingBuffers r, uint32_t* done_counters) {
  __shared__ unsigned long long token_mask[kMaxExpertsPerLane * 32];
  __shared__ int32_t expert_offset[kMaxExpertsPerLane * 32];
  __shared__ int32_t slot_expert[kFastMaxSlots];
  __shared__ int32_t warp_totals[kFastWarps];
  __shared__ bool is_last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const int32_t expert = blockIdx.x * kFastWarps + warp, first_token = blockIdx.y * kFastTokensPerCta;
  const int32_t tokens = min(kFastTokensPerCta, m - first_token);
  if (expert < n_experts) {  // warp-uniform
    const uint16_t* weight_row = router + static_cast<int64_t>(expert) * hidden;
    const uint16_t* x_rows = x + static_cast<int64_t>(first_token) * hidden;
    float acc[kFastTokensPerCta] = {};
#pragma unroll 2
    for (int32_t column = lane * 8; column < hidden; column += 32 * 8) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(weight_row + column));
#pragma unroll
      for (int tt = 0; tt < kFastTokensPerCta; ++tt)
        if (tt < tokens)
          acc[tt] = dot8_bf16(w, __ldg(reinterpret_cast<const uint4*>(x_rows + static_cast<int64_t>(tt) * hidden + column)),
                              acc[tt]);
    }
#pragma unroll
    for (int tt = 0; tt < kFastTokensPerCta; ++tt) {
      float sum = acc[tt];
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
      if (lane == tt && tt < tokens)
        logits[static_cast<int64_t>(first_token + tt) * n_experts + expert] =
            static_cast<uint16_t>(bf16x2_bits(sum, 0.0f) & 0xFFFFu);
    }
  }

  __threadfence();  // this CTA's logits reach L2 before it counts itself done
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&done_counters[blockIdx.y], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // then read what the group's other CTAs wrote (through L2: __ldcg)
  if (threadIdx.x == 0) done_counters[blockIdx.y] = 0;  // the whole group has counted: ready for the next launch
  if (warp < tokens) {  // warp-uniform
    const int32_t t = first_token + warp;
    const TopkPick pick = route_token(logits + static_cast<int64_t>(t) * n_experts, n_experts, top_k, norm_topk_prob);
    if (lane < top_k) {
      r.topk_ids[t * top_k + lane] = pick.expert;
      r.topk_weights[t * top_k + lane] = pick.weight;
    }
  }

  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&done_counters[kFastTokenGroups], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  if (threadIdx.x == 0) done_counters[kFastTokenGroups] = 0;
  token_mask[threadIdx.x] = 0;
  __syncthreads();
  for (int32_t slot = threadIdx.x; slot < m * top_k; slot += blockDim.x) {
    const int32_t slot_owner = __ldcg(r.topk_ids + slot);
    slot_expert[slot] = slot_owner;
    atomicOr(&token_mask[slot_owner], 1ull << (slot / top_k));  // bitwise or: the same mask in any order
  }
  __syncthreads();

  // Exclusive scan of (active << 16 | count) over experts: counts sum to m * k <= 1024, so no carry between halves.
  const int32_t e = threadIdx.x;
  const int32_t count = e < n_experts ? __popcll(token_mask[e]) : 0;
  const int32_t packed = (count > 0 ? 1 << 16 : 0) | count;
  int32_t inclusive = packed;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int32_t v = __shfl_up_sync(kFullMask, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  for (int w = 0; w < warp; ++w) inclusive += warp_totals[w];
  const int32_t exclusive = inclusive - packed, offset = exclusive & 0xFFFF, active_rank = exclusive >> 16;
  if (e < n_experts) {
    r.expert_offsets[e] = offset;
    expert_offset[e] = offset;
    if (count > 0) r.active_experts[active_rank] = e;
    if (e == n_experts - 1) {
      r.expert_offsets[n_experts] = offset + count;
      *r.n_active = active_rank + (count > 0 ? 1 : 0);
    }
  }
  __syncthreads();
  for (int32_t slot = threadIdx.x; slot < m * top_k; slot += blockDim.x) {
    const int32_t t = slot / top_k, slot_owner = slot_expert[slot];
    const int32_t position = expert_offset[slot_owner] + __popcll(token_mask[slot_owner] & ((1ull << t) - 1ull));
    r.sorted_token[position] = t;
    r.slot_position[slot] = position;
  }
}

}  // namespace

void launch_moe_route(const uint16_t* logits, int32_t m, int32_t n_experts, int32_t top_k, bool norm_topk_prob,
                      const MoeRoutingBuffers& routing, void* stream) {
  const auto blocks = static_cast<unsigned>((m + kRouteWarpsPerBlock - 1) / kRouteWarpsPerBlock);
  moe_route_kernel<<<blocks, kRouteWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, m, n_experts, top_k, norm_topk_prob, routing);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_group(int32_t m, int32_t n_experts, int32_t top_k, const MoeRoutingBuffers& routing, void* stream) {
  moe_group_kernel<<<1, kGroupWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(m, n_experts, top_k, routing);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_fast_route(const uint16_t* x, const uint16_t* router, int32_t m, int32_t n_experts, int32_t hidden,
                           int32_t top_k, bool norm_topk_prob, uint16_t* logits, const MoeRoutingBuffers& routing,
                           uint32_t* done_counters, void* stream) {
  const dim3 grid((n_experts + kFastWarps - 1) / kFastWarps, (m + kFastTokensPerCta - 1) / kFastTokensPerCta);
  moe_fast_route_kernel<<<grid, kFastWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      x, router, m, n_experts, hidden, top_k, norm_topk_prob, logits, routing, done_counters);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
