// Device helpers shared by the NVFP4 kernels: row mapping, exact e2m1 -> bf16 dequantization, mma.sync, loads.
// Dequantized values are e2m1 * scale * 2^-8 (exact in bf16: <= 6 significant bits, magnitudes in [2^-18, 10.5]);
// kernels multiply their fp32 results by 256 * alpha. A 32-bit word of packed codes (nibble j = element j) becomes
// four bf16x2 registers pairing elements (j, j + 4), so the activations are paired the same way (permute_x_pairs).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "format/layout.h"
#include "kernels/cpu/nvfp4_gemm.h"
#include "kernels/cuda/nvfp4_kernels.h"

namespace fp4serve::cuda {

// Physical row of logical row `row` (nvfp4.md §3b/3c); the formulas are layout.h's, used on the device.
__device__ __forceinline__ int32_t nvfp4_physical_row_device(Nvfp4RowOrder order, int32_t row, int32_t n_rows) {
  switch (order) {
    case Nvfp4RowOrder::Shuffled:
      return static_cast<int32_t>(shuffled_row_index(row));
    case Nvfp4RowOrder::GatedShuffled:
      return static_cast<int32_t>(shuffled_row_index(gated_reordered_row_index(row, n_rows)));
    default:
      return row;
  }
}

// Offset of (physical row, block 0) in the swizzled scales; block b adds swizzled_block_offset(b).
__device__ __forceinline__ int64_t swizzled_row_base(int32_t physical_row, int32_t padded_cols) {
  return swizzled_scale_offset(physical_row, 0, padded_cols);
}
__device__ __forceinline__ int32_t swizzled_block_offset(int32_t block) { return (block / 4) * 512 + block % 4; }

// Constant indices only, so the table stays in the kernel's parameter space instead of a local-memory copy.
__device__ __forceinline__ float alpha_of_row(const AlphaTable& table, int32_t row) {
  int range = 0;
#pragma unroll
  for (int i = 1; i < kAlphaTableSize; ++i)
    if (i < table.count && row >= table.row_end[i - 1]) range = i;
  if (table.device_alpha != nullptr) return __ldg(table.device_alpha + range);
  float alpha = table.alpha[0];
#pragma unroll
  for (int i = 1; i < kAlphaTableSize; ++i)
    if (i == range) alpha = table.alpha[i];
  return alpha;
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// Two e4m3 codes (low byte first) -> bf16x2 splats of scale * 2^118. The hardware e4m3 -> f16 conversion is exact
// (subnormal scales included); scale * 2^118 <= 1.75 * 2^126 stays finite and keeps its 4 significant bits.
__device__ __forceinline__ void scale_splats(uint32_t two_codes, uint32_t& first, uint32_t& second) {
  uint32_t halves;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(static_cast<uint16_t>(two_codes)));
  float low, high;
  asm("{.reg .f16 lo, hi;\n mov.b32 {lo, hi}, %2;\n cvt.f32.f16 %0, lo;\n cvt.f32.f16 %1, hi;}"
      : "=f"(low), "=f"(high) : "r"(halves));
  low *= 0x1p118f;
  high *= 0x1p118f;
  asm("cvt.rn.bf16x2.f32 %0, %1, %1;" : "=r"(first) : "f"(low));
  asm("cvt.rn.bf16x2.f32 %0, %1, %1;" : "=r"(second) : "f"(high));
}

// Eight packed codes q (nibble j = element j) times a bf16x2 scale splat -> out[j] = (element j, element j + 4).
// Each code's bits go straight into a bf16: sign to bit 15, exponent and mantissa to bits 6..8, which reads as
// e2m1 * 2^-126 (codes 0/1 as subnormals); the scale splat's 2^118 brings the product to e2m1 * scale * 2^-8.
__device__ __forceinline__ void dequantize_word(uint32_t q, uint32_t scale_splat, uint32_t (&out)[4]) {
  constexpr uint32_t kSign = 0x80008000u, kMagnitude = 0x01C001C0u;
  out[0] = ((q << 12) & kSign) | ((q << 6) & kMagnitude);
  out[1] = ((q << 8) & kSign) | ((q << 2) & kMagnitude);
  out[2] = ((q << 4) & kSign) | ((q >> 2) & kMagnitude);
  out[3] = (q & kSign) | ((q >> 6) & kMagnitude);
#pragma unroll
  for (int j = 0; j < 4; ++j) out[j] = mul_bf16x2(out[j], scale_splat);
}

// The same eight codes in natural order: out = elements (0, 1), (2, 3), (4, 5), (6, 7) as bf16x2 words.
__device__ __forceinline__ uint4 dequantize_word_in_order(uint32_t q, uint32_t scale_splat) {
  uint32_t pairs[4];
  dequantize_word(q, scale_splat, pairs);
  return make_uint4(__byte_perm(pairs[0], pairs[1], 0x5410), __byte_perm(pairs[2], pairs[3], 0x5410),
                    __byte_perm(pairs[0], pairs[1], 0x7632), __byte_perm(pairs[2], pairs[3], 0x7632));
}

// Eight consecutive bf16 activations (four words of consecutive pairs) -> the pairs (j, j + 4) of dequantize_word.
__device__ __forceinline__ void permute_x_pairs(const uint4& x, uint32_t (&pairs)[4]) {
  pairs[0] = __byte_perm(x.x, x.z, 0x5410);
  pairs[1] = __byte_perm(x.x, x.z, 0x7632);
  pairs[2] = __byte_perm(x.y, x.w, 0x5410);
  pairs[3] = __byte_perm(x.y, x.w, 0x7632);
}

// d += a * b, m16n8k16, bf16 inputs, fp32 accumulators (PTX fragment layouts).
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Weights are read once: keep them out of L1 so the activations stay there.
__device__ __forceinline__ uint4 load_streamed_16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint2 load_streamed_8(const void* p) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t bf16x2_bits(float low, float high) {
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(high), "f"(low));
  return d;
}

}  // namespace fp4serve::cuda
