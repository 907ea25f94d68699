// The residual connection with bf16 storage: x = bf16(x + y), the sum taken in fp32.
#pragma once
#include <cstdint>

namespace fp4serve {

void residual_add_cpu(float* x,        // [n] f32 (bf16-representable), updated in place
                      const float* y,  // [n] f32
                      int64_t n);

}  // namespace fp4serve
