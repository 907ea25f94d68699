// Launcher of the activation-quantization kernel, for act_quant_cuda.cpp (which validates first). Plain C++ types.
#pragma once
#include "kernels/cuda/act_quant_cuda.h"

namespace fp4serve::cuda {

// Exactly one of static_scale (device f32, static mode) and row_scales (device [rows] f32, per-token) is non-null.
void launch_act_quant(const ActQuantArgs& args, const float* static_scale, float* row_scales);

}  // namespace fp4serve::cuda
