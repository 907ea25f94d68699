// Activation quantization for W4A4 (spec §2): the CPU reference that GPU kernels are tested against. Both modes run
// nvfp4_quantize's block rule on x [rows, cols] and differ only in the global scale g of each row:
//   static:    g = input_scale (calibrated, one per linear)
//   per-token: g = s_t = amax(|x[t,:]|) / (6*448), 1.0 for an all-zero row (checkpoint input_scales are ignored)
// Value the W4A4 math sees: x_hat[t,k] = (e2m1[t,k] * e4m3[t,k/16]) * g, the same op order as nvfp4_dequantize.
//
// GEMM contract. x_q[t,k] = e2m1 * e4m3 and W_q[n,k] = e2m1 * e4m3 (both exact in fp32 and bf16); then
//   static:    y[t,n] = (x_q . W_q^T)[t,n] * alpha,       alpha = input_scale * weight_scale_2 (one scalar)
//   per-token: y[t,n] = (x_q . W_q^T)[t,n] * s_t * weight_scale_2                   (one factor per row t)
// Kernels may multiply by 1/input_scale where this divides; they then match up to rounding, not bit for bit.
#pragma once
#include <cstdint>

namespace fp4serve {

// packed [rows, cols/2] e2m1, block_scales [rows, cols/16] e4m3. Throws for input_scale <= 0, NaN/Inf or a bad shape.
void quantize_activations_static(const float* x, int64_t rows, int64_t cols, float input_scale, uint8_t* packed,
                                 uint8_t* block_scales);
// out [rows, cols] = x_hat in static mode; out may alias x.
void fake_quantize_activations_static(const float* x, int64_t rows, int64_t cols, float input_scale, float* out);

// As static, and row_scales [rows] receives each s_t.
void quantize_activations_per_token(const float* x, int64_t rows, int64_t cols, uint8_t* packed,
                                    uint8_t* block_scales, float* row_scales);
// out [rows, cols] = x_hat in per-token mode; out may alias x.
void fake_quantize_activations_per_token(const float* x, int64_t rows, int64_t cols, float* out);

}  // namespace fp4serve
