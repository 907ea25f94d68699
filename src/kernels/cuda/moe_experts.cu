// Grouped W4A16 expert GEMMs and the weighted combine of the MoE layer. A CTA owns 16 output rows (gated: 16 gate and
// the matching 16 up rows) of one active expert, loads its share of the packed weights once (warps split K in
// 128-element steps, up to kSteps each, as in nvfp4_streaming.cu) and then walks the expert's tokens 32 at a time:
// dequantize in registers, mma.sync against the gathered activations, partial sums added across warps in shared memory
// in a fixed order. CTAs of grid rows past the number of active experts exit at once, so unrouted experts cost no
// weight traffic. Also the row gather and SwiGLU that surround the public grouped GEMM on the layer's other path; both
// paths store SwiGLU through swiglu_bf16, so their bf16 intermediates differ only by fp32 summation order.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/moe_kernels.h"
#include "kernels/cuda/nvfp4_device.cuh"

namespace fp4serve::cuda {
namespace {

constexpr int kStepElements = 128;  // 4 lanes (t) x 32 elements
constexpr int kMaxWarps = 16;
constexpr int kTokenTiles = 4;      // tokens per pass: 4 mma column tiles of 8
constexpr int kTokensPerPass = kTokenTiles * 8;

struct StepWeights {
  uint4 codes[2];      // rows g and g + 8 of the tile
  uint32_t scales[2];  // two e4m3 codes each, low byte = first block of the lane's 32 elements
};

__device__ __forceinline__ float round_bf16(float v) { return __uint_as_float(bf16x2_bits(v, 0.0f) << 16); }

// bf16(bf16(silu(gate)) * up) for bf16-valued gate and up, as kernels/cpu/moe_experts.h stores it.
__device__ __forceinline__ uint32_t swiglu_bf16(float gate, float up) {
  const float silu = round_bf16(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))));
  return bf16x2_bits(__fmul_rn(silu, up), 0.0f) & 0xFFFFu;
}

template <bool kGated, int kSteps>
__global__ void __launch_bounds__(kMaxWarps * 32) moe_grouped_kernel(const MoeGroupedGemm g, int32_t padded_rows,
                                                                     int32_t padded_scale_cols) {
  constexpr int kTiles = kGated ? 2 : 1;  // gated: tile 0 = gate rows, tile 1 = up rows
  extern __shared__ float partial_sums[];  // [warps][kTiles][kTokenTiles][4][32]
  if (static_cast<int32_t>(blockIdx.y) >= *g.n_active) return;
  const int32_t expert = g.active_experts[blockIdx.y];
  const int32_t begin = g.expert_offsets[expert], count = g.expert_offsets[expert + 1] - begin;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, t = lane % 4;
  const int n_warps = blockDim.x / 32;
  const int32_t n_steps = (g.k + kStepElements - 1) / kStepElements;
  const int32_t first_row = blockIdx.x * 16;  // within the output rows: i (gated) or n (plain)
  const uint8_t* packed = g.packed + static_cast<int64_t>(expert) * g.n_rows * (g.k / 2);
  const uint8_t* scales = g.scales + static_cast<int64_t>(expert) * padded_rows * padded_scale_cols;

  const uint8_t* row_codes[kTiles][2];
  int64_t row_scales[kTiles][2];
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t logical = tile * (g.n_rows / 2) + first_row + h * 8 + gq;  // n_rows, I multiples of 16
      const int32_t physical = nvfp4_physical_row_device(g.order, logical, g.n_rows);
      row_codes[tile][h] = packed + static_cast<int64_t>(physical) * (g.k / 2);
      row_scales[tile][h] = swizzled_row_base(physical, padded_scale_cols);
    }

  // The warp's steps (warp, warp + n_warps, ...) stay in registers for every pass over the tokens.
  StepWeights weights[kSteps][kTiles];
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int32_t chunk = (warp + s * n_warps) * 4 + t, first = chunk * 32, valid = g.k - first;
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        StepWeights& w = weights[s][tile];
        w.codes[h] = make_uint4(0, 0, 0, 0);
        w.scales[h] = 0;
        if (valid <= 0) continue;
        const uint8_t* p = row_codes[tile][h] + first / 2;
        const uint2 low = load_streamed_8(p);
        const uint2 high = valid >= 32 ? load_streamed_8(p + 8) : make_uint2(0, 0);
        w.codes[h] = make_uint4(low.x, low.y, high.x, high.y);
        const uint32_t two = __ldg(reinterpret_cast<const uint16_t*>(scales + row_scales[tile][h] +
                                                                     swizzled_block_offset(2 * chunk)));
        w.scales[h] = valid >= 32 ? two : (two & 0xFFu);  // a half chunk's second scale is padding
      }
  }

  for (int32_t pass = 0; pass < count; pass += kTokensPerPass) {
    const int32_t tokens = min(kTokensPerPass, count - pass);
    int64_t a_offset[kTokenTiles];  // this lane's token (column gq) of each tile; -1 past the expert's rows
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {
      const int32_t local = tt * 8 + gq;
      const int32_t position = begin + pass + local;
      a_offset[tt] = local < tokens ? static_cast<int64_t>(g.a_rows ? g.a_rows[position] : position) * g.k : -1;
    }
    float acc[kTiles][kTokenTiles][4] = {};
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int32_t step = warp + s * n_warps;
      if (step >= n_steps) continue;
      const int32_t first = (step * 4 + t) * 32;
      uint32_t splats[kTiles][2][2];
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
        for (int h = 0; h < 2; ++h) scale_splats(weights[s][tile].scales[h], splats[tile][h][0], splats[tile][h][1]);
#pragma unroll
      for (int word = 0; word < 4; ++word) {
        const int32_t k_word = first + word * 8;
        uint32_t a[kTiles][2][4];
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint4& c = weights[s][tile].codes[h];
            dequantize_word(word == 0 ? c.x : word == 1 ? c.y : word == 2 ? c.z : c.w, splats[tile][h][word / 2],
                            a[tile][h]);
          }
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt) {
          if (tt * 8 >= tokens) break;  // warp-uniform
          uint4 xv = make_uint4(0, 0, 0, 0);
          if (a_offset[tt] >= 0 && k_word < g.k) xv = __ldg(reinterpret_cast<const uint4*>(g.a + a_offset[tt] + k_word));
          uint32_t pairs[4];
          permute_x_pairs(xv, pairs);
#pragma unroll
          for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const uint32_t frag[4] = {a[tile][0][2 * half], a[tile][1][2 * half], a[tile][0][2 * half + 1],
                                        a[tile][1][2 * half + 1]};
              mma_bf16_m16n8k16(acc[tile][tt], frag, pairs[2 * half], pairs[2 * half + 1]);
            }
        }
      }
    }
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
      for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          partial_sums[(((warp * kTiles + tile) * kTokenTiles + tt) * 4 + e) * 32 + lane] = acc[tile][tt][e];
    __syncthreads();

    // Output (token, row) sits in lane (row % 8) * 4 + (token % 8) / 2, element (row / 8) * 2 + token % 2.
    for (int o = threadIdx.x; o < 16 * tokens; o += blockDim.x) {
      const int local_row = o % 16, token = o / 16, tt = token / 8, col = token % 8;
      const int source_lane = (local_row % 8) * 4 + col / 2, e = (local_row / 8) * 2 + col % 2;
      float sums[kTiles];
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile) {
        float sum = 0.0f;
        for (int w = 0; w < n_warps; ++w)
          sum += partial_sums[(((w * kTiles + tile) * kTokenTiles + tt) * 4 + e) * 32 + source_lane];
        sums[tile] = sum;
      }
      const int64_t position = begin + pass + token;
      if constexpr (kGated) {
        const int32_t intermediate = g.n_rows / 2;
        const float gate = round_bf16(sums[0] * (g.alphas[2 * expert] * kDequantizedAlphaFactor));
        const float up = round_bf16(sums[1] * (g.alphas[2 * expert + 1] * kDequantizedAlphaFactor));
        g.out[position * intermediate + first_row + local_row] = static_cast<uint16_t>(swiglu_bf16(gate, up));
      } else {
        g.out[position * g.n_rows + first_row + local_row] = static_cast<uint16_t>(
            bf16x2_bits(sums[0] * (g.alphas[expert] * kDequantizedAlphaFactor), 0.0f) & 0xFFFFu);
      }
    }
    __syncthreads();  // partial_sums is rewritten by the next pass
  }
}

__global__ void moe_combine_kernel(const uint16_t* expert_out, const MoeRoutingBuffers r, int32_t m, int32_t top_k,
                                   int32_t hidden, uint16_t* y) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int32_t vectors = hidden / 8;
  if (index >= static_cast<int64_t>(m) * vectors) return;
  const int64_t token = index / vectors;
  const int32_t column = static_cast<int32_t>(index % vectors) * 8;
  float sum[8] = {};
  for (int32_t j = 0; j < top_k; ++j) {  // top-k order, one rounding per product and per sum, as on the CPU
    const float weight = r.topk_weights[token * top_k + j];
    const int64_t position = r.slot_position[token * top_k + j];
    const uint4 d = __ldg(reinterpret_cast<const uint4*>(expert_out + position * hidden + column));
    const uint32_t words[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      sum[2 * i] = __fadd_rn(sum[2 * i], __fmul_rn(weight, __uint_as_float(words[i] << 16)));
      sum[2 * i + 1] = __fadd_rn(sum[2 * i + 1], __fmul_rn(weight, __uint_as_float(words[i] & 0xFFFF0000u)));
    }
  }
  *reinterpret_cast<uint4*>(y + token * hidden + column) =
      make_uint4(bf16x2_bits(sum[0], sum[1]), bf16x2_bits(sum[2], sum[3]), bf16x2_bits(sum[4], sum[5]),
                 bf16x2_bits(sum[6], sum[7]));
}

__global__ void moe_gather_rows_kernel(const uint16_t* x, const int32_t* sorted_token, int32_t rows, int32_t hidden,
                                       uint16_t* gathered) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int32_t vectors = hidden / 8;
  if (index >= static_cast<int64_t>(rows) * vectors) return;
  const int64_t row = index / vectors;
  const int32_t column = static_cast<int32_t>(index % vectors) * 8;
  *reinterpret_cast<uint4*>(gathered + row * hidden + column) =
      __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(sorted_token[row]) * hidden + column));
}

__global__ void moe_swiglu_kernel(const uint16_t* gate_up, int32_t rows, int32_t intermediate, uint16_t* activated) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int32_t vectors = intermediate / 8;
  if (index >= static_cast<int64_t>(rows) * vectors) return;
  const int64_t row = index / vectors;
  const int32_t column = static_cast<int32_t>(index % vectors) * 8;
  const uint16_t* gate = gate_up + row * 2 * intermediate + column;
  const uint4 g = __ldg(reinterpret_cast<const uint4*>(gate)), u = __ldg(reinterpret_cast<const uint4*>(gate + intermediate));
  const uint32_t gates[4] = {g.x, g.y, g.z, g.w}, ups[4] = {u.x, u.y, u.z, u.w};
  uint32_t out[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    out[i] = swiglu_bf16(__uint_as_float(gates[i] << 16), __uint_as_float(ups[i] << 16)) |
             swiglu_bf16(__uint_as_float(gates[i] & 0xFFFF0000u), __uint_as_float(ups[i] & 0xFFFF0000u)) << 16;
  *reinterpret_cast<uint4*>(activated + row * intermediate + column) = make_uint4(out[0], out[1], out[2], out[3]);
}

// Blocks for one thread per 8-element vector of a [rows, width] bf16 matrix.
unsigned vector_blocks(int64_t rows, int32_t width, int threads) {
  return static_cast<unsigned>((rows * (width / 8) + threads - 1) / threads);
}

template <bool kGated, int kSteps>
void launch_grouped(const MoeGroupedGemm& g, int n_warps, int32_t max_active) {
  constexpr int kTiles = kGated ? 2 : 1;
  const SwizzledScaleShape padded = swizzled_scale_shape(g.n_rows, g.k / 16);
  const size_t shared_bytes = static_cast<size_t>(n_warps) * kTiles * kTokenTiles * 4 * 32 * sizeof(float);
  auto kernel = moe_grouped_kernel<kGated, kSteps>;
  FP4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared_bytes)));
  const int32_t row_tiles = (kGated ? g.n_rows / 2 : g.n_rows) / 16;
  kernel<<<dim3(row_tiles, max_active), n_warps * 32, shared_bytes, static_cast<cudaStream_t>(g.stream)>>>(
      g, static_cast<int32_t>(padded.padded_rows), static_cast<int32_t>(padded.padded_cols));
  FP4_CUDA_CHECK(cudaGetLastError());
}

template <bool kGated>
void launch_grouped_steps(const MoeGroupedGemm& g, int32_t max_active) {
  const int32_t n_steps = (g.k + kStepElements - 1) / kStepElements;
  const int n_warps = n_steps < kMaxWarps ? n_steps : kMaxWarps;
  // Up to 16 steps (k <= 2048) one per warp; up to kMoeMaxK = 4096 two (the gated kernel then spills a little).
  if (n_steps <= kMaxWarps)
    launch_grouped<kGated, 1>(g, n_warps, max_active);
  else
    launch_grouped<kGated, 2>(g, n_warps, max_active);
}

}  // namespace

void launch_moe_grouped_gemm(const MoeGroupedGemm& gemm, bool gated, int32_t max_active) {
  if (gated)
    launch_grouped_steps<true>(gemm, max_active);
  else
    launch_grouped_steps<false>(gemm, max_active);
}

void launch_moe_combine(const uint16_t* expert_out, const MoeRoutingBuffers& routing, int32_t m, int32_t top_k,
                        int32_t hidden, uint16_t* y, void* stream) {
  constexpr int kThreads = 256;
  moe_combine_kernel<<<vector_blocks(m, hidden, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      expert_out, routing, m, top_k, hidden, y);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_gather_rows(const uint16_t* x, const int32_t* sorted_token, int32_t rows, int32_t hidden,
                            uint16_t* gathered, void* stream) {
  constexpr int kThreads = 256;
  moe_gather_rows_kernel<<<vector_blocks(rows, hidden, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      x, sorted_token, rows, hidden, gathered);
  FP4_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_swiglu(const uint16_t* gate_up, int32_t rows, int32_t intermediate, uint16_t* activated, void* stream) {
  constexpr int kThreads = 256;
  moe_swiglu_kernel<<<vector_blocks(rows, intermediate, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      gate_up, rows, intermediate, activated);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
