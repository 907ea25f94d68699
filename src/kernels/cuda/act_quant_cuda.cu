// NVFP4 activation quantization: one warp per row, a lane per 16-element block (32-byte loads). Per-token mode first
// reduces the row's amax over the warp. Arithmetic mirrors format/nvfp4.cpp op for op with explicitly rounded
// intrinsics (__fmul_rn, __fdiv_rn), so fast-math or FMA contraction cannot change a bit.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/act_quant_kernels.h"
#include "kernels/cuda/cuda_check.cuh"

namespace fp4serve::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr float kE4M3Max = 448.0f;

// format/e4m3.cpp's e4m3_encode for the non-negative, non-NaN scales met here (saturating at 448).
__device__ __forceinline__ uint32_t e4m3_encode_positive(float x) {
  const uint32_t bits = __float_as_uint(x);
  if (x >= kE4M3Max) return 0x7E;
  if (x >= 0x1p-6f) return ((bits + 0x7FFFFu + ((bits >> 20) & 1u)) >> 20) - ((127 - 7) << 3);
  const float steps = x * 512.0f;  // exact: a power-of-two scaling of a value in the subnormal range
  uint32_t rounded = static_cast<uint32_t>(steps);
  const float fraction = steps - static_cast<float>(rounded);
  if (fraction > 0.5f || (fraction == 0.5f && (rounded & 1u))) ++rounded;
  return rounded;
}

__device__ __forceinline__ float e4m3_decode_positive(uint32_t code) {
  const uint32_t exponent = (code >> 3) & 0xFu, mantissa = code & 0x7u;
  if (exponent == 0) return static_cast<float>(mantissa) * 0x1p-9f;
  return __uint_as_float((exponent - 7 + 127) << 23 | mantissa << 20);
}

// format/e2m1.h's e2m1_encode: the bounds' ties go to the even code; NaN -> 7; sign bit = (q < 0).
__device__ __forceinline__ uint32_t e2m1_encode(float q) {
  const float m = fabsf(q);
  const uint32_t code = 7 - (m <= 0.25f) - (m < 0.75f) - (m <= 1.25f) - (m < 1.75f) - (m <= 2.5f) - (m < 3.5f) -
                        (m <= 5.0f);
  return code | (q < 0.0f ? 8u : 0u);
}

struct Block16 {
  uint4 low, high;  // 16 bf16, element order
};

__device__ __forceinline__ Block16 load_block(const uint16_t* row, int32_t block) {
  const uint4* p = reinterpret_cast<const uint4*>(row + block * 16);
  return {__ldg(p), __ldg(p + 1)};
}

// Largest |element| of a block as float bits (bf16 magnitudes widen exactly).
__device__ __forceinline__ uint32_t block_amax_bits(const Block16& b) {
  const uint32_t words[8] = {b.low.x, b.low.y, b.low.z, b.low.w, b.high.x, b.high.y, b.high.z, b.high.w};
  uint32_t amax = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = max(amax, max((words[i] & 0x7FFFu) << 16, words[i] & 0x7FFF0000u));
  return amax;
}

__global__ void act_quant_kernel(const ActQuantArgs args, const float* static_scale, float* row_scales) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= args.rows) return;
  const auto* x = reinterpret_cast<const uint16_t*>(args.x) + row * args.cols;
  const auto n_blocks = static_cast<int32_t>(args.cols / 16);

  float global_scale;
  if (row_scales != nullptr) {
    uint32_t amax = 0;
    for (int32_t b = lane; b < n_blocks; b += 32) amax = max(amax, block_amax_bits(load_block(x, b)));
    amax = __reduce_max_sync(0xFFFFFFFFu, amax);
    // nvfp4_global_scale: amax / (6 * 448) as one division, 1.0 for an all-zero row.
    global_scale = amax == 0 ? 1.0f : __fdiv_rn(__uint_as_float(amax), 6.0f * kE4M3Max);
    if (lane == 0) row_scales[row] = global_scale;
  } else {
    global_scale = *static_scale;
  }
  const float six_times_global = __fmul_rn(6.0f, global_scale);

  for (int32_t b = lane; b < n_blocks; b += 32) {
    const Block16 block = load_block(x, b);
    float s = __fdiv_rn(__uint_as_float(block_amax_bits(block)), six_times_global);
    if (s == 0.0f) s = 1.0f;
    const uint32_t scale_code = e4m3_encode_positive(s);
    const float denominator = __fmul_rn(e4m3_decode_positive(scale_code), global_scale);
    const uint32_t words[8] = {block.low.x,  block.low.y,  block.low.z,  block.low.w,
                               block.high.x, block.high.y, block.high.z, block.high.w};
    uint32_t packed[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // word i holds elements 2i (low half) and 2i + 1: one packed byte
      const uint32_t even = e2m1_encode(__fdiv_rn(__uint_as_float(words[i] << 16), denominator));
      const uint32_t odd = e2m1_encode(__fdiv_rn(__uint_as_float(words[i] & 0xFFFF0000u), denominator));
      packed[i / 4] |= (even | odd << 4) << (8 * (i % 4));
    }
    *reinterpret_cast<uint2*>(args.packed + row * (args.cols / 2) + b * 8) = make_uint2(packed[0], packed[1]);
    args.block_scales[row * n_blocks + b] = static_cast<uint8_t>(scale_code);
  }
}

}  // namespace

void launch_act_quant(const ActQuantArgs& args, const float* static_scale, float* row_scales) {
  const auto blocks = static_cast<unsigned>((args.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  act_quant_kernel<<<blocks, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(args.stream)>>>(args, static_scale,
                                                                                               row_scales);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
