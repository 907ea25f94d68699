#include "format/nvfp4.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "format/e2m1.h"
#include "format/e4m3.h"

namespace fp4serve {

namespace {

// |v| as integer bits: their order is the order of the magnitudes, with Inf above every finite value and NaN above
// Inf, so an integer max is an exact amax that also reports non-finite input.
inline uint32_t magnitude_bits(float v) { return std::bit_cast<uint32_t>(v) & 0x7fffffffu; }
inline uint32_t magnitude_bits(bf16_bits v) { return static_cast<uint32_t>(v & 0x7fffu) << 16; }
inline float widen(float v) { return v; }
inline float widen(bf16_bits v) { return bf16_to_float(v); }
constexpr uint32_t kInfinityBits = 0x7f800000u;
// Below this many elements a parallel region costs more than it saves (per-token activations run one row at a time).
constexpr int64_t kMinParallelElements = int64_t{1} << 16;

template <typename Element>
float amax_abs_impl(const Element* values, int64_t n) {
  uint32_t max_bits = 0;
#pragma omp parallel for simd schedule(static) reduction(max : max_bits) if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) max_bits = std::max(max_bits, magnitude_bits(values[i]));
  return std::bit_cast<float>(max_bits);
}

// Quantizes one row (see nvfp4_quantize). Returns the column of its first non-finite value, or -1.
template <typename Element>
int64_t quantize_row(const Element* row, int64_t cols, float global_scale, uint8_t* packed_row,
                     uint8_t* scales_row) {
  const float six_times_global = 6.0f * global_scale;
  for (int64_t block = 0; block < cols / kNvfp4BlockSize; ++block) {
    const Element* x = row + block * kNvfp4BlockSize;
    uint32_t amax_bits = 0;
    for (int i = 0; i < kNvfp4BlockSize; ++i) amax_bits = std::max(amax_bits, magnitude_bits(x[i]));
    if (amax_bits >= kInfinityBits) {
      for (int i = 0;; ++i)
        if (magnitude_bits(x[i]) >= kInfinityBits) return block * kNvfp4BlockSize + i;
    }
    float s = std::bit_cast<float>(amax_bits) / six_times_global;
    if (s == 0.0f) s = 1.0f;
    const uint8_t scale_code = e4m3_encode(s);
    scales_row[block] = scale_code;
    const float denominator = e4m3_decode(scale_code) * global_scale;
    // Separate passes so that each one vectorizes.
    uint8_t codes[kNvfp4BlockSize];
    for (int i = 0; i < kNvfp4BlockSize; ++i) codes[i] = e2m1_encode(widen(x[i]) / denominator);
    uint8_t* out = packed_row + block * (kNvfp4BlockSize / 2);
    for (int i = 0; i < kNvfp4BlockSize; i += 2) out[i / 2] = pack_e2m1_pair(codes[i], codes[i + 1]);
  }
  return -1;
}

void check_shape_and_scale(const char* function, int64_t rows, int64_t cols, float global_scale) {
  FP4_CHECK(rows >= 0 && cols >= 0, "{}: negative shape [{}, {}]", function, rows, cols);
  FP4_CHECK(cols % kNvfp4BlockSize == 0,
            "{}: cols = {} is not a multiple of the NVFP4 block size {}; only such linears can be quantized",
            function, cols, kNvfp4BlockSize);
  FP4_CHECK(std::isfinite(global_scale) && global_scale > 0.0f,
            "{}: global scale must be finite and > 0, got {}", function, global_scale);
}

template <typename Element>
void quantize_impl(const Element* w, int64_t rows, int64_t cols, float global_scale, uint8_t* packed,
                   uint8_t* block_scales) {
  check_shape_and_scale("nvfp4_quantize", rows, cols, global_scale);
  // Exceptions cannot leave an OpenMP loop: remember the first bad element and throw after it.
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (rows * cols >= kMinParallelElements)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bad_col = quantize_row(w + r * cols, cols, global_scale, packed + r * (cols / 2),
                                         block_scales + r * (cols / kNvfp4BlockSize));
    if (bad_col >= 0) first_bad = std::min(first_bad, r * cols + bad_col);
  }
  if (first_bad != std::numeric_limits<int64_t>::max())
    fail("nvfp4_quantize: non-finite value {} at row {}, column {}; NVFP4 has no NaN/Inf, fix the source tensor",
         widen(w[first_bad]), first_bad / cols, first_bad % cols);
}

}  // namespace

float amax_abs(const float* values, int64_t n) { return amax_abs_impl(values, n); }
float amax_abs(const bf16_bits* values, int64_t n) { return amax_abs_impl(values, n); }

float nvfp4_global_scale(float amax) {
  FP4_CHECK(std::isfinite(amax) && amax >= 0.0f,
            "nvfp4_global_scale: amax must be finite and >= 0, got {} (the tensor holds NaN or Inf)", amax);
  return amax == 0.0f ? 1.0f : amax / (6.0f * kE4M3Max);
}

void nvfp4_quantize(const float* w, int64_t rows, int64_t cols, float global_scale, uint8_t* packed,
                    uint8_t* block_scales) {
  quantize_impl(w, rows, cols, global_scale, packed, block_scales);
}

void nvfp4_quantize(const bf16_bits* w, int64_t rows, int64_t cols, float global_scale, uint8_t* packed,
                    uint8_t* block_scales) {
  quantize_impl(w, rows, cols, global_scale, packed, block_scales);
}

void nvfp4_dequantize(const uint8_t* packed, const uint8_t* block_scales, float global_scale, int64_t rows,
                      int64_t cols, float* out) {
  check_shape_and_scale("nvfp4_dequantize", rows, cols, global_scale);
#pragma omp parallel for schedule(static) if (rows * cols >= kMinParallelElements)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* packed_row = packed + r * (cols / 2);
    const uint8_t* scales_row = block_scales + r * (cols / kNvfp4BlockSize);
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] =
          e2m1_decode(packed_e2m1_code(packed_row, c)) * e4m3_decode(scales_row[c / kNvfp4BlockSize]) * global_scale;
  }
}

}  // namespace fp4serve
