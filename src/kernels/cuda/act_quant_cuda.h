// Activation quantization to NVFP4 on the GPU (W4A4 operands), bit-exact to the CPU spec format/act_quant.h: the
// same fp32 operations in the same order (6*g, one division per block scale, RNE to e4m3, one division per element,
// e2m1 ties to even). Inputs are bf16 activations in device memory; calls are asynchronous on `stream`.
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve::cuda {

struct ActQuantArgs {
  const bf16_bits* x = nullptr;     // [rows, cols] bf16, row-major, 16-byte aligned
  int64_t rows = 0;
  int64_t cols = 0;                 // a multiple of 16 (the NVFP4 block)
  uint8_t* packed = nullptr;        // [rows, cols/2] e2m1, element 2i in the low nibble
  uint8_t* block_scales = nullptr;  // [rows, cols/16] e4m3, linear (row-major) layout
  void* stream = nullptr;           // cudaStream_t; nullptr is the legacy default stream
};

// Static mode: every row uses the global scale *input_scale (device pointer to one f32, so a reload can change it
// without re-capturing graphs). It must be finite and > 0, which the weight loader checks; x must be finite (the
// CPU spec throws on NaN/Inf, the kernel cannot: such blocks get unspecified codes).
void quantize_activations_static_cuda(const ActQuantArgs& args, const float* input_scale);

// Per-token mode: row t uses s_t = amax(|x[t,:]|) / (6 * 448) (1.0 for an all-zero row), written to
// row_scales [rows] f32 (device).
void quantize_activations_per_token_cuda(const ActQuantArgs& args, float* row_scales);

}  // namespace fp4serve::cuda
