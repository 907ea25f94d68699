// NVFP4 weights -> bf16 [N, K] in logical row order, for the cuBLAS path: one thread per 32 codes (16-byte load,
// four 16-byte stores). Values are e2m1 * scale * 2^-8, exact; the GEMM multiplies by kDequantizedAlphaFactor.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/nvfp4_device.cuh"
#include "kernels/cuda/nvfp4_kernels.h"

namespace fp4serve::cuda {
namespace {

__global__ void nvfp4_dequantize_kernel(const Nvfp4LaunchArgs args, int32_t padded_scale_cols, uint16_t* w) {
  const int32_t chunks_per_row = (args.k + 31) / 32;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= static_cast<int64_t>(args.n) * chunks_per_row) return;
  const auto row = static_cast<int32_t>(index / chunks_per_row), chunk = static_cast<int32_t>(index % chunks_per_row);
  const int32_t physical = nvfp4_physical_row_device(args.order, row, args.n);
  const int32_t first = chunk * 32;
  const bool full = args.k - first >= 32;
  const uint8_t* codes = args.packed + static_cast<int64_t>(physical) * (args.k / 2) + first / 2;
  const uint2 low = load_streamed_8(codes);
  const uint2 high = full ? load_streamed_8(codes + 8) : make_uint2(0, 0);
  const uint32_t two = __ldg(reinterpret_cast<const uint16_t*>(
      args.block_scales + swizzled_row_base(physical, padded_scale_cols) + swizzled_block_offset(2 * chunk)));
  uint32_t splats[2];
  scale_splats(two, splats[0], splats[1]);
  const uint32_t words[4] = {low.x, low.y, high.x, high.y};
  uint4* out = reinterpret_cast<uint4*>(w + static_cast<int64_t>(row) * args.k + first);
  for (int word = 0; word < (full ? 4 : 2); ++word) out[word] = dequantize_word_in_order(words[word], splats[word / 2]);
}

__global__ void scaled_device_alphas_kernel(const AlphaTable table, float* scaled) {
  const int i = static_cast<int>(threadIdx.x);
  if (i < table.count) scaled[i] = table.device_alpha[i] * kDequantizedAlphaFactor;
  if (i == table.count) scaled[i] = 0.0f;
}

}  // namespace

void launch_scaled_device_alphas(const AlphaTable& table, float* scaled, void* stream) {
  scaled_device_alphas_kernel<<<1, kAlphaTableSize + 1, 0, static_cast<cudaStream_t>(stream)>>>(table, scaled);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_nvfp4_dequantize(const Nvfp4LaunchArgs& args, uint16_t* w) {
  const int32_t padded_scale_cols = (args.k / 16 + 3) / 4 * 4;
  const int64_t threads = static_cast<int64_t>(args.n) * ((args.k + 31) / 32);
  constexpr int kBlock = 256;
  nvfp4_dequantize_kernel<<<static_cast<unsigned>((threads + kBlock - 1) / kBlock), kBlock, 0,
                            static_cast<cudaStream_t>(args.stream)>>>(args, padded_scale_cols, w);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
