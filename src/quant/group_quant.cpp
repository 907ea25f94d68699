#include "quant/group_quant.h"

#include <cmath>

#include "common/error.h"
#include "format/nvfp4.h"

namespace fp4serve {

float quantize_group(std::span<const GroupMember> members, int64_t in_features, uint8_t* packed,
                     uint8_t* block_scales, std::string_view group_name) {
  FP4_CHECK(in_features > 0 && in_features % kNvfp4BlockSize == 0,
            "{}: in_features {} is not a positive multiple of {}", group_name, in_features, kNvfp4BlockSize);
  float amax = 0.0f;
  for (const auto& m : members) {
    FP4_CHECK(static_cast<int64_t>(m.weight.size()) == m.n_rows * in_features,
              "{}: member has {} values, expected {} x {}", group_name, m.weight.size(), m.n_rows, in_features);
    float member_amax = amax_abs(m.weight.data(), static_cast<int64_t>(m.weight.size()));
    FP4_CHECK(std::isfinite(member_amax), "{}: weights contain NaN or Inf; refusing to quantize", group_name);
    amax = std::max(amax, member_amax);
  }
  float global_scale = nvfp4_global_scale(amax);
  for (const auto& m : members) {
    nvfp4_quantize(m.weight.data(), m.n_rows, in_features, global_scale, packed, block_scales);
    packed += m.n_rows * in_features / 2;
    block_scales += m.n_rows * in_features / kNvfp4BlockSize;
  }
  return global_scale;
}

}  // namespace fp4serve
