// NVFP4 quantization (spec §2), ModelOpt's algorithm reproduced bit for bit: a row of K values becomes K/2 packed
// E2M1 bytes plus K/16 E4M3 block scales, under one fp32 global scale per tensor. Activations use the same routine
// with another global scale (act_quant.h). Outputs are row-major: packed [rows, cols/2], block scales [rows, cols/16].
#pragma once
#include <cstdint>

#include "format/bf16.h"

namespace fp4serve {

inline constexpr int64_t kNvfp4BlockSize = 16;  // elements per E4M3 block scale, along the last dimension

// max |v| over n values, exact. Any NaN gives NaN, else any Inf gives Inf; 0 when n == 0.
float amax_abs(const float* values, int64_t n);
float amax_abs(const bf16_bits* values, int64_t n);

// weight_scale_2 = amax / (6 * 448) as one fp32 division; 1.0 when amax == 0. Throws if amax is NaN, Inf or < 0.
float nvfp4_global_scale(float amax);

// Quantizes w [rows, cols] (cols % 16 == 0) with the given global scale g > 0. In fp32, exactly as ModelOpt:
//   s     = block_amax / (6.0f * g)          (6*g rounded to fp32 first, then one division); s == 0 -> 1.0
//   scale = e4m3_encode(s)                   -> block_scales [rows, cols/16] (saturates at 448)
//   q     = w / (e4m3_decode(scale) * g)     (product rounded to fp32, then one division; bf16 w widened exactly)
//   code  = e2m1_encode(q)                   -> packed [rows, cols/2], element 2i in the low nibble
// Throws for a NaN/Inf in w (naming row and column; outputs then hold partial results) or a bad shape/scale.
// A block whose scale rounds to E4M3 zero (s <= 2^-10) keeps ModelOpt's bytes; it dequantizes to zeros.
// Parallel over rows (OpenMP); no allocation.
void nvfp4_quantize(const float* w, int64_t rows, int64_t cols, float global_scale, uint8_t* packed,
                    uint8_t* block_scales);
void nvfp4_quantize(const bf16_bits* w, int64_t rows, int64_t cols, float global_scale, uint8_t* packed,
                    uint8_t* block_scales);

// out [rows, cols] = (e2m1 * e4m3_scale) * global_scale: the first product is exact in fp32, the second rounds once.
void nvfp4_dequantize(const uint8_t* packed, const uint8_t* block_scales, float global_scale, int64_t rows,
                      int64_t cols, float* out);

}  // namespace fp4serve
