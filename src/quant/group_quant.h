// Quantizing a fused group of bf16 weights (q/k/v of a layer, gate/up of an expert or dense MLP, or a single
// projection) to NVFP4 with ONE shared weight_scale_2 = amax over the whole group / (6*448), as ModelOpt exports
// fused shards. The one routine used by `fp4serve quantize` and by online (bf16 -> NVFP4) weight reload, so both
// produce identical bytes.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

#include "format/bf16.h"

namespace fp4serve {

struct GroupMember {
  std::span<const bf16_bits> weight;  // [n_rows, in_features] bf16, row-major
  int64_t n_rows;
};

// Writes the members' rows one after the other: packed [sum n_rows, K/2] u8 and block_scales [sum n_rows, K/16]
// e4m3. Returns the shared weight_scale_2. Throws (naming `group_name`) on non-finite weights or bad shapes.
float quantize_group(std::span<const GroupMember> members, int64_t in_features, uint8_t* packed,
                     uint8_t* block_scales, std::string_view group_name);

}  // namespace fp4serve
