// Streaming W4A16 kernel for few tokens (m <= 32): one CTA per 16 weight rows, its warps splitting K in 128-element
// steps. Per step a lane loads 16 bytes (32 codes) of two rows, dequantizes them in registers and multiplies them by
// the tokens with mma.sync (weights as the 16-row A operand, tokens as 8-column B tiles). A warp issues the loads of
// kStepsInFlight steps before multiplying and keeps one accumulator per step, so the mma chains run side by side.
// Partial sums of the warps are added in shared memory in a fixed order: results do not depend on timing.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/nvfp4_device.cuh"
#include "kernels/cuda/nvfp4_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int kStepElements = 128;  // 4 lanes (t) x 32 elements
constexpr int kStepsInFlight = 2;
constexpr int kMaxWarps = 16;

// One lane's packed codes and scales of one k-step, rows g and g + 8 of the CTA's 16.
struct StepWeights {
  uint4 codes[2];
  uint32_t scales[2];  // two e4m3 codes, low byte = first block of the lane's 32 elements
};

// One token tile fits 64 registers, so two 512-thread CTAs share a multiprocessor.
template <int kTokenTiles, bool kAligned16>
__global__ void __launch_bounds__(kMaxWarps * 32, kTokenTiles == 1 ? 2 : 1)
    nvfp4_streaming_kernel(const Nvfp4LaunchArgs args, int32_t padded_scale_cols) {
  extern __shared__ float partial_sums[];  // [warps][kTokenTiles][4][32]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n_warps = blockDim.x / 32;
  const int32_t n_steps = (args.k + kStepElements - 1) / kStepElements;
  const int32_t first_row = blockIdx.x * 16;

  const uint8_t* row_codes[2];
  int64_t row_scales[2];
  bool row_valid[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int32_t row = first_row + h * 8 + g;
    row_valid[h] = row < args.n;
    const int32_t physical = row_valid[h] ? nvfp4_physical_row_device(args.order, row, args.n) : 0;
    row_codes[h] = args.packed + static_cast<int64_t>(physical) * (args.k / 2);
    row_scales[h] = swizzled_row_base(physical, padded_scale_cols);
  }

  auto load_step = [&](int32_t step) {
    StepWeights w;
    const int32_t chunk = step * 4 + t, first = chunk * 32, valid = args.k - first;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      w.codes[h] = make_uint4(0, 0, 0, 0);
      w.scales[h] = 0;
      if (!row_valid[h] || valid <= 0) continue;
      const uint8_t* p = row_codes[h] + first / 2;
      if (valid >= 32) {
        if constexpr (kAligned16) {
          w.codes[h] = load_streamed_16(p);
        } else {
          const uint2 low = load_streamed_8(p), high = load_streamed_8(p + 8);
          w.codes[h] = make_uint4(low.x, low.y, high.x, high.y);
        }
      } else {
        const uint2 low = load_streamed_8(p);
        w.codes[h] = make_uint4(low.x, low.y, 0, 0);
      }
      // Blocks 2 * chunk and 2 * chunk + 1 share one 4-byte swizzle word; a half chunk's second scale is padding.
      const uint32_t two = __ldg(reinterpret_cast<const uint16_t*>(args.block_scales + row_scales[h] +
                                                                    swizzled_block_offset(2 * chunk)));
      w.scales[h] = valid >= 32 ? two : (two & 0xFFu);
    }
    return w;
  };

  float acc[kStepsInFlight][kTokenTiles][4] = {};
  auto compute_step = [&](int32_t step, const StepWeights& w, float (&sums)[kTokenTiles][4]) {
    const int32_t first = (step * 4 + t) * 32;
    uint32_t splats[2][2];  // [row g, g + 8][block]
#pragma unroll
    for (int h = 0; h < 2; ++h) scale_splats(w.scales[h], splats[h][0], splats[h][1]);
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      uint32_t a[2][4];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4& c = w.codes[h];
        dequantize_word(word == 0 ? c.x : word == 1 ? c.y : word == 2 ? c.z : c.w, splats[h][word / 2], a[h]);
      }
      const int32_t k_word = first + word * 8;
#pragma unroll
      for (int tt = 0; tt < kTokenTiles; ++tt) {
        const int32_t token = tt * 8 + g;
        uint4 xv = make_uint4(0, 0, 0, 0);
        if (token < args.m && k_word < args.k)
          xv = __ldg(reinterpret_cast<const uint4*>(args.x + static_cast<int64_t>(token) * args.k + k_word));
        uint32_t pairs[4];
        permute_x_pairs(xv, pairs);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const uint32_t frag[4] = {a[0][2 * half], a[1][2 * half], a[0][2 * half + 1], a[1][2 * half + 1]};
          mma_bf16_m16n8k16(sums[tt], frag, pairs[2 * half], pairs[2 * half + 1]);
        }
      }
    }
  };

  // Warp w owns steps w, w + n_warps, ...: the loads of kStepsInFlight steps first, then their multiplies.
  for (int32_t batch = warp; batch < n_steps; batch += kStepsInFlight * n_warps) {
    StepWeights in_flight[kStepsInFlight];
#pragma unroll
    for (int i = 0; i < kStepsInFlight; ++i)
      if (batch + i * n_warps < n_steps) in_flight[i] = load_step(batch + i * n_warps);
#pragma unroll
    for (int i = 0; i < kStepsInFlight; ++i)
      if (batch + i * n_warps < n_steps) compute_step(batch + i * n_warps, in_flight[i], acc[i]);
  }

#pragma unroll
  for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float sum = acc[0][tt][e];
#pragma unroll
      for (int i = 1; i < kStepsInFlight; ++i) sum += acc[i][tt][e];
      partial_sums[((warp * kTokenTiles + tt) * 4 + e) * 32 + lane] = sum;
    }
  __syncthreads();

  // Output (token, row) of this CTA sits in lane (row % 8) * 4 + (token % 8) / 2, element (row / 8) * 2 + token % 2.
  constexpr int kOutputs = 16 * 8 * kTokenTiles;
  for (int o = threadIdx.x; o < kOutputs; o += blockDim.x) {
    const int local_row = o % 16, token = o / 16;
    const int32_t row = first_row + local_row;
    if (row >= args.n || token >= args.m) continue;
    const int tt = token / 8, col = token % 8;
    const int source_lane = (local_row % 8) * 4 + col / 2, e = (local_row / 8) * 2 + col % 2;
    float sum = 0.0f;
    for (int w = 0; w < n_warps; ++w) sum += partial_sums[((w * kTokenTiles + tt) * 4 + e) * 32 + source_lane];
    const float scaled = sum * (alpha_of_row(args.alphas, row) * kDequantizedAlphaFactor);
    args.y[static_cast<int64_t>(token) * args.n + row] = static_cast<uint16_t>(bf16x2_bits(scaled, 0.0f) & 0xFFFFu);
  }
}

template <int kTokenTiles>
void launch_streaming_tokens(const Nvfp4LaunchArgs& args, int n_warps) {
  const int32_t padded_scale_cols = (args.k / 16 + 3) / 4 * 4;
  const size_t shared_bytes = static_cast<size_t>(n_warps) * kTokenTiles * 4 * 32 * sizeof(float);  // <= 32 KB
  const bool aligned16 = args.k % 32 == 0 && reinterpret_cast<uintptr_t>(args.packed) % 16 == 0;
  auto kernel = aligned16 ? nvfp4_streaming_kernel<kTokenTiles, true> : nvfp4_streaming_kernel<kTokenTiles, false>;
  kernel<<<(args.n + 15) / 16, n_warps * 32, shared_bytes, static_cast<cudaStream_t>(args.stream)>>>(
      args, padded_scale_cols);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

int nvfp4_streaming_warps_for(int64_t m, int64_t n, int64_t k) {
  // As many warps as steps (at most 16), halved while the CTAs would not all be resident at once on an H100
  // (132 multiprocessors; 32 resident warps each for one token tile, 16 for more).
  const int64_t n_steps = (k + kStepElements - 1) / kStepElements, ctas = (n + 15) / 16;
  const int64_t resident_warps = 132 * (m <= 8 ? 32 : 16);
  int64_t warps = std::min<int64_t>(n_steps, kMaxWarps);
  while (warps > 1 && ctas * warps > resident_warps) warps = (warps + 1) / 2;
  return static_cast<int>(warps);
}

void launch_nvfp4_streaming(const Nvfp4LaunchArgs& args, int warps_per_cta) {
  const int token_tiles = (args.m + 7) / 8;
  if (token_tiles <= 1)
    launch_streaming_tokens<1>(args, warps_per_cta);
  else if (token_tiles == 2)
    launch_streaming_tokens<2>(args, warps_per_cta);
  else
    launch_streaming_tokens<4>(args, warps_per_cta);
}

}  // namespace fp4serve::cuda
