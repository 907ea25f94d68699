// The gated activation of Qwen3's MLPs: silu(gate) * up, each product stored as bf16 like HF's bf16 module does
// (silu rounded to bf16, then the product rounded). Gate and up arrive fused: gate columns first, then up.
#pragma once
#include <cstdint>

namespace fp4serve {

// out[m, i] = bf16(bf16(silu(gate_up[m, i])) * gate_up[m, I + i]), silu(g) = g / (1 + exp(-g)) in fp32.
void silu_mul_cpu(const float* gate_up,  // [M, 2I] f32: gate in columns [0, I), up in [I, 2I)
                  int64_t M, int64_t I,
                  float* out);  // [M, I] f32, bf16-representable

}  // namespace fp4serve
