// MoE routing: softmax over the router logits in fp32, then the k most probable experts. Ties (equal
// probabilities) go to the lower expert index first, so routing is deterministic whatever the sort does.
// With norm_topk_prob the k weights are renormalized to sum to 1 (fp32); weights are not rounded to bf16.
#pragma once
#include <cstdint>

namespace fp4serve {

void router_topk_cpu(const float* logits,  // [M, n_experts] f32
                     int64_t M, int64_t n_experts, int64_t k, bool norm_topk_prob,
                     int32_t* topk_ids,     // [M, k] i32, most probable first
                     float* topk_weights);  // [M, k] f32

}  // namespace fp4serve
