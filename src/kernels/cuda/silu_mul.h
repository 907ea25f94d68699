// SwiGLU of a dense MLP on the GPU, the CUDA twin of silu_mul_cpu: out = bf16(bf16(silu(gate)) * up) with the fp32
// silu of the CPU (gate / (1 + exp(-gate)); expf may differ from std::exp in the last bit). Device pointers;
// asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve::cuda {

void silu_mul_cuda(const bf16_bits* gate_up,  // [rows, 2 * width] bf16: gate columns [0, width), up [width, 2 width)
                   int64_t rows, int64_t width,
                   bf16_bits* out,  // [rows, width] bf16
                   void* stream);

}  // namespace fp4serve::cuda
