// MoE routing kernels: softmax + top-k + renormalization (one warp per token, expert e in lane e % 32), and the
// grouping of (token, slot) pairs by expert (one CTA; ballots give each pair its rank among the same expert's pairs,
// so tokens stay in increasing order and the permutation is the same on every run).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/moe_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kMaxExpertsPerLane = 8;  // kMoeMaxExperts / 32
constexpr int kRouteWarpsPerBlock = 4;
constexpr int kGroupWarps = 32;

__device__ __forceinline__ float bf16_to_f32(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

__global__ void moe_route_kernel(const uint16_t* logits, int32_t m, int32_t n_experts, int32_t top_k,
                                 bool norm_topk_prob, MoeRoutingBuffers r) {
  const int lane = threadIdx.x % 32;
  const int32_t token = blockIdx.x * kRouteWarpsPerBlock + threadIdx.x / 32;
  if (token >= m) return;
  const uint16_t* row = logits + static_cast<int64_t>(token) * n_experts;
  float p[kMaxExpertsPerLane];
  float max_logit = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    const int32_t e = lane + 32 * i;
    p[i] = e < n_experts ? bf16_to_f32(row[e]) : -INFINITY;
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
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i)  // absent experts become -1: below every probability
    p[i] = lane + 32 * i < n_experts ? __fdiv_rn(p[i], sum) : -1.0f;

  // Round j: the warp's best (probability, lower index on ties); lane j keeps it.
  float my_probability = 0.0f, topk_sum = 0.0f;
  int32_t my_expert = 0;
  for (int32_t j = 0; j < top_k; ++j) {
    float best = -2.0f;
    int32_t best_expert = 0;
#pragma unroll
    for (int i = 0; i < kMaxExpertsPerLane; ++i)
      if (p[i] > best) {  // strict: the lowest index among this lane's equal values
        best = p[i];
        best_expert = lane + 32 * i;
      }
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(kFullMask, best, offset);
      const int32_t other_expert = __shfl_xor_sync(kFullMask, best_expert, offset);
      if (other > best || (other == best && other_expert < best_expert)) {
        best = other;
        best_expert = other_expert;
      }
    }
    if (best_expert % 32 == lane) {
#pragma unroll
      for (int i = 0; i < kMaxExpertsPerLane; ++i)
        if (i == best_expert / 32) p[i] = -2.0f;  // taken
    }
    if (lane == j) {
      my_probability = best;
      my_expert = best_expert;
    }
    topk_sum += best;  // in top-k order, as the CPU reference sums
  }
  if (lane < top_k) {
    const int64_t slot = static_cast<int64_t>(token) * top_k + lane;
    r.topk_ids[slot] = my_expert;
    r.topk_weights[slot] = norm_topk_prob ? __fdiv_rn(my_probability, topk_sum) : my_probability;
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

}  // namespace fp4serve::cuda
