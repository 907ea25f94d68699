// Rotary position embedding, "neox" halves: dims (i, i + d/2) of each head rotate together by the angle
// position * theta^(-2i/d). Angles and rotations are fp32 (cos/sin from a double angle); results rounded to bf16.
#pragma once
#include <cstdint>

namespace fp4serve {

// In place on x [n_tokens, n_heads, head_dim] (head_dim even); token t sits at positions[t].
// (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) with c, s = cos, sin(positions[t] * inv_freq[i]).
void rope_neox_cpu(float* x, const int32_t* positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                   double theta);

// inv_freq[i] = float(theta^(-2i/head_dim)) for i < head_dim/2: the frequencies the rotation uses.
float rope_inv_freq(int64_t i, int64_t head_dim, double theta);

}  // namespace fp4serve
