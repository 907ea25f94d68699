#include "format/act_quant.h"

#include <cmath>
#include <vector>

#include "common/error.h"
#include "format/nvfp4.h"

namespace fp4serve {

namespace {
// Packed codes and block scales of an activation, for the fake-quant round trip.
struct QuantizedRows {
  std::vector<uint8_t> packed;        // [rows, cols/2] e2m1, low nibble first
  std::vector<uint8_t> block_scales;  // [rows, cols/16] e4m3
  QuantizedRows(int64_t rows, int64_t cols) {
    FP4_CHECK(rows >= 0 && cols >= 0, "fake-quantize activations: negative shape [{}, {}]", rows, cols);
    packed.resize(static_cast<size_t>(rows * (cols / 2)));
    block_scales.resize(static_cast<size_t>(rows * (cols / kNvfp4BlockSize)));
  }
};
}  // namespace

void quantize_activations_static(const float* x, int64_t rows, int64_t cols, float input_scale, uint8_t* packed,
                                 uint8_t* block_scales) {
  FP4_CHECK(std::isfinite(input_scale) && input_scale > 0.0f,
            "quantize_activations_static: input_scale must be finite and > 0, got {} (check the checkpoint's "
            "input_scale or use per-token activation quantization)",
            input_scale);
  nvfp4_quantize(x, rows, cols, input_scale, packed, block_scales);
}

void fake_quantize_activations_static(const float* x, int64_t rows, int64_t cols, float input_scale, float* out) {
  QuantizedRows quantized(rows, cols);
  quantize_activations_static(x, rows, cols, input_scale, quantized.packed.data(), quantized.block_scales.data());
  nvfp4_dequantize(quantized.packed.data(), quantized.block_scales.data(), input_scale, rows, cols, out);
}

void quantize_activations_per_token(const float* x, int64_t rows, int64_t cols, uint8_t* packed,
                                    uint8_t* block_scales, float* row_scales) {
  FP4_CHECK(rows >= 0 && cols >= 0 && cols % kNvfp4BlockSize == 0,
            "quantize_activations_per_token: shape [{}, {}] needs cols a multiple of {}", rows, cols,
            kNvfp4BlockSize);
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = x + t * cols;
    const float row_amax = amax_abs(row, cols);
    FP4_CHECK(std::isfinite(row_amax), "quantize_activations_per_token: row {} holds NaN or Inf", t);
    row_scales[t] = nvfp4_global_scale(row_amax);
    nvfp4_quantize(row, 1, cols, row_scales[t], packed + t * (cols / 2), block_scales + t * (cols / kNvfp4BlockSize));
  }
}

void fake_quantize_activations_per_token(const float* x, int64_t rows, int64_t cols, float* out) {
  QuantizedRows quantized(rows, cols);
  std::vector<float> row_scales(static_cast<size_t>(rows));
  quantize_activations_per_token(x, rows, cols, quantized.packed.data(), quantized.block_scales.data(),
                                 row_scales.data());
  for (int64_t t = 0; t < rows; ++t)
    nvfp4_dequantize(quantized.packed.data() + t * (cols / 2),
                     quantized.block_scales.data() + t * (cols / kNvfp4BlockSize), row_scales[t], 1, cols,
                     out + t * cols);
}

}  // namespace fp4serve
