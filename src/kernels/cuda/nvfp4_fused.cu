// Fused NVFP4 W4A16 GEMM (dense and grouped): packed codes, their swizzled scales and the token tile go global ->
// shared through a kStages-deep cp.async pipeline; each warp dequantizes 16 * kRowTiles weight rows in registers
// straight into mma.sync A fragments (weights are the m16 operand, tokens the n8 one), loading and permuting each token
// fragment once for its kRowTiles row tiles. A lane owns 32 consecutive k of its rows (one 16-byte shared load), and
// the activation pairs are permuted the same way (permute_x_pairs), so the dot product is unchanged. All reductions
// (warps of a CTA, K splits over CTAs) add in a fixed order: deterministic.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/nvfp4_device.cuh"
#include "kernels/cuda/nvfp4_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32;
constexpr int kGroupK = 128;  // k per warp per stage: 4 lanes (t) x 32
constexpr int kMaxProblemTokenTiles = 8;

// Everything the kernel reads; the dense GEMM is one expert with expert_offsets == nullptr and rows [0, m).
struct FusedProblem {
  const uint16_t* x;
  const uint8_t* packed;
  const uint8_t* scales;
  int64_t packed_expert_stride, scales_expert_stride;  // bytes between experts
  int32_t n, k, padded_scale_cols;
  Nvfp4RowOrder order;
  bool aligned16;  // k % 32 == 0 and packed 16-byte aligned: one 16-byte copy per 32 codes (else two of 8 bytes)
  const int32_t* expert_offsets;
  int32_t n_experts, m;
  AlphaTable alphas;           // dense
  const float* expert_alphas;  // grouped: [E, alphas_per_expert]
  int32_t alphas_per_expert;
  uint16_t* y;
  int32_t k_splits;
  float* partials;
  int32_t* counters;
};

template <int kTokenTiles, int kWarpsN, int kRowTiles>
struct Tile {
  static constexpr int kWarpsK = kWarps / kWarpsN;
  static constexpr int kRows = 16 * kRowTiles * kWarpsN, kTokens = 8 * kTokenTiles;
  static constexpr int kStageK = kGroupK * kWarpsK;
  static constexpr int kCodeBytes = kRows * kStageK / 2;         // [group][row][64 bytes]
  static constexpr int kScaleBytes = kRows * (kStageK / 16);     // [row][blocks of the stage]
  static constexpr int kTokenBytes = kTokens * kStageK * 2;      // [token][16-byte chunks, XOR-swizzled]
  static constexpr int kStageBytes = kCodeBytes + kScaleBytes + kTokenBytes;
  static constexpr int kStages = std::min(4, std::max(2, (100 * 1024) / kStageBytes));
  static constexpr int kSharedBytes = kStages * kStageBytes;
  static constexpr int kCodeChunks = kCodeBytes / 16 / kThreads;          // per thread: 2 * kRowTiles
  static constexpr int kScaleWords = kScaleBytes / 4 / kThreads;          // per thread: kRowTiles
  static constexpr int kTokenChunks = (kTokens * kStageK / 8 + kThreads - 1) / kThreads;
  static constexpr int kSumBytes = (kWarpsK - 1) * kWarpsN * kRowTiles * kTokenTiles * 4 * 32 * 4;
  static_assert(kRows * kWarpsK == 128 * kRowTiles && kCodeChunks * kThreads * 16 == kCodeBytes &&
                kScaleWords * kThreads * 4 == kScaleBytes && kSumBytes <= kSharedBytes);
};

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Copies src_bytes (0 = none: zero fill) of `bytes`; .cg keeps streamed data out of L1.
__device__ __forceinline__ void copy_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void copy_async_8(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(shared_address(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void copy_async_4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(shared_address(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;"); }
template <int kPending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending));
}

// 16-byte chunk `part` of a token row in shared memory: the XOR spreads the 8 lanes of a quarter warp (tokens g,
// g + 1; t = 0..3; same word) over all 8 bank groups of 16 bytes.
__device__ __forceinline__ int swizzled_token_chunk(int part, int token) {
  return part ^ (((part >> 3) & 1) | ((token & 1) << 1));
}

struct WorkItem {
  int32_t expert, first_row, end_row;  // rows of x / y; expert < 0: no work
};

// Grouped: the item-th (expert, token tile) over the non-empty experts in expert order, found by one warp. A lane
// owns kExpertsPerLane consecutive experts and loads all their offsets at once, so 128 experts cost one round trip
// to L2 (profiled: one dependent round trip per 32 experts kept the CTA's other warps waiting at the barrier).
template <int kTokens>
__device__ WorkItem find_work_item(const FusedProblem& p, int item) {
  constexpr int kExpertsPerLane = 4;
  __shared__ WorkItem found;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x < 32) {
    if (lane == 0) found.expert = -1;
    __syncwarp();
    int before = 0;
    for (int first = 0; first < p.n_experts && before <= item; first += 32 * kExpertsPerLane) {
      const int lane_first = first + lane * kExpertsPerLane;
      int32_t bound[kExpertsPerLane + 1];  // offsets of experts lane_first .. + kExpertsPerLane (clamped)
#pragma unroll
      for (int j = 0; j <= kExpertsPerLane; ++j) bound[j] = p.expert_offsets[min(lane_first + j, p.n_experts)];
      int tiles[kExpertsPerLane], lane_tiles = 0;
#pragma unroll
      for (int j = 0; j < kExpertsPerLane; ++j) {
        const int rows = bound[j + 1] - bound[j];
        tiles[j] = rows > 0 ? (rows + kTokens - 1) / kTokens : 0;
        lane_tiles += tiles[j];
      }
      int inclusive = lane_tiles;
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const int v = __shfl_up_sync(0xFFFFFFFFu, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      int exclusive = before + inclusive - lane_tiles;
#pragma unroll
      for (int j = 0; j < kExpertsPerLane; ++j) {
        if (item >= exclusive && item < exclusive + tiles[j])
          found = {lane_first + j, bound[j] + (item - exclusive) * kTokens, bound[j + 1]};
        exclusive += tiles[j];
      }
      before += __shfl_sync(0xFFFFFFFFu, inclusive, 31);
    }
  }
  __syncthreads();
  return found;
}

// Two CTAs per multiprocessor (<= 128 registers), except 8 token tiles x 2 row tiles, whose 64 accumulators would
// spill there: that tile covers 64 tokens x 16 * 2 * warps_n rows, so its grids are small anyway.
template <int kTokenTiles, int kWarpsN, int kRowTiles>
__global__ void __launch_bounds__(kThreads, kTokenTiles * kRowTiles >= 16 ? 1 : 2)
    nvfp4_fused_kernel(const FusedProblem p) {
  using T = Tile<kTokenTiles, kWarpsN, kRowTiles>;
  extern __shared__ __align__(16) uint8_t shared[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warp_n = warp % kWarpsN, warp_k = warp / kWarpsN;

  const WorkItem work = p.expert_offsets == nullptr
                            ? WorkItem{0, static_cast<int32_t>(blockIdx.x) * T::kTokens,
                                       min(p.m, static_cast<int32_t>(blockIdx.x + 1) * T::kTokens)}
                            : find_work_item<T::kTokens>(p, blockIdx.x);
  if (work.expert < 0) return;
  const int32_t tokens = min(T::kTokens, work.end_row - work.first_row);
  const int32_t first_n = blockIdx.y * T::kRows;
  const uint8_t* packed = p.packed + work.expert * p.packed_expert_stride;
  const uint8_t* scales = p.scales + work.expert * p.scales_expert_stride;

  // This CTA's stages of T::kStageK.
  const int32_t total_stages = (p.k + T::kStageK - 1) / T::kStageK;
  const int32_t first_stage = static_cast<int32_t>(static_cast<int64_t>(blockIdx.z) * total_stages / p.k_splits);
  const int32_t n_stages =
      static_cast<int32_t>(static_cast<int64_t>(blockIdx.z + 1) * total_stages / p.k_splits) - first_stage;

  // Per-thread copy assignments, fixed over the stages: code chunks (row, 16-byte part), one scale word.
  const uint8_t* code_src[T::kCodeChunks];
  int code_dst[T::kCodeChunks], code_first_k[T::kCodeChunks];
  bool code_row_valid[T::kCodeChunks];
#pragma unroll
  for (int i = 0; i < T::kCodeChunks; ++i) {
    const int c = threadIdx.x + i * kThreads, parts_per_row = T::kStageK / 32;
    const int row = c / parts_per_row, part = c % parts_per_row;
    const int32_t logical = first_n + row;
    code_row_valid[i] = logical < p.n;
    const int32_t physical = code_row_valid[i] ? nvfp4_physical_row_device(p.order, logical, p.n) : 0;
    code_first_k[i] = part * 32;
    code_src[i] = packed + static_cast<int64_t>(physical) * (p.k / 2) + part * 16;
    code_dst[i] = ((part / 4) * T::kRows + row) * 64 + (part % 4) * 16;
  }
  const int scale_words_per_row = T::kStageK / 64, scale_word = threadIdx.x % scale_words_per_row;
  const uint8_t* scale_src[T::kScaleWords];
  int scale_dst[T::kScaleWords];
  bool scale_row_valid[T::kScaleWords];
#pragma unroll
  for (int i = 0; i < T::kScaleWords; ++i) {
    const int row = (threadIdx.x + i * kThreads) / scale_words_per_row;
    scale_row_valid[i] = first_n + row < p.n;
    scale_src[i] = scales + (scale_row_valid[i] ? swizzled_row_base(nvfp4_physical_row_device(p.order, first_n + row,
                                                                                              p.n),
                                                                    p.padded_scale_cols)
                                                : 0);
    scale_dst[i] = row * (T::kStageK / 16) + scale_word * 4;
  }

  auto load_stage = [&](int32_t stage, int slot) {
    uint8_t* base = shared + slot * T::kStageBytes;
    const int32_t k0 = stage * T::kStageK;
#pragma unroll
    for (int i = 0; i < T::kCodeChunks; ++i) {
      const int32_t first_k = k0 + code_first_k[i];
      const uint8_t* src = code_src[i] + k0 / 2;
      uint8_t* dst = base + code_dst[i];
      const bool valid = code_row_valid[i] && first_k < p.k;
      if (p.aligned16) {
        copy_async_16(dst, valid ? src : p.packed, valid ? 16 : 0);
      } else {  // k % 32 == 16: the last chunk of a row holds 16 codes
        const bool high_valid = valid && first_k + 16 < p.k;
        copy_async_8(dst, valid ? src : p.packed, valid ? 8 : 0);
        copy_async_8(dst + 8, high_valid ? src + 8 : p.packed, high_valid ? 8 : 0);
      }
    }
#pragma unroll
    for (int i = 0; i < T::kScaleWords; ++i) {
      // Word q of the swizzled row holds blocks 4q..4q+3; words past the padded columns do not exist.
      const int32_t q = k0 / 64 + scale_word;
      const bool valid = scale_row_valid[i] && q < p.padded_scale_cols / 4;
      copy_async_4(base + T::kCodeBytes + scale_dst[i],
                   valid ? scale_src[i] + swizzled_block_offset(4 * q) : p.scales, valid ? 4 : 0);
    }
    uint8_t* token_base = base + T::kCodeBytes + T::kScaleBytes;
    constexpr int kChunksPerToken = T::kStageK / 8;
#pragma unroll
    for (int i = 0; i < T::kTokenChunks; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c >= T::kTokens * kChunksPerToken) break;
      const int token = c / kChunksPerToken, part = c % kChunksPerToken;
      const int32_t first_k = k0 + part * 8;
      const bool valid = token < tokens && first_k < p.k;
      const uint16_t* src = p.x + static_cast<int64_t>(work.first_row + token) * p.k + first_k;
      copy_async_16(token_base + token * (T::kStageK * 2) + swizzled_token_chunk(part, token) * 16,
                    valid ? static_cast<const void*>(src) : p.x, valid ? 16 : 0);
    }
  };

  // Few token tiles: several accumulator chains per (row tile, token tile), added at the end.
  constexpr int kChains = kTokenTiles * kRowTiles >= 4 ? 1 : 4 / (kTokenTiles * kRowTiles);
  float acc[kChains][kRowTiles][kTokenTiles][4] = {};
  auto compute_stage = [&](int32_t stage, int slot) {
    const uint8_t* base = shared + slot * T::kStageBytes;
    uint4 codes[kRowTiles][2];
    uint32_t two_scales[kRowTiles][2];
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = (warp_n * kRowTiles + r) * 16 + g + 8 * h;
        codes[r][h] = *reinterpret_cast<const uint4*>(base + (warp_k * T::kRows + row) * 64 + t * 16);
        two_scales[r][h] = *reinterpret_cast<const uint16_t*>(base + T::kCodeBytes + row * (T::kStageK / 16) +
                                                              warp_k * 8 + 2 * t);
      }
    // Scales past k are padding (any byte, NaN included): zero them, as the codes and tokens there are zero.
    const int32_t first_k = stage * T::kStageK + warp_k * kGroupK + t * 32;
    if (first_k + 32 > p.k) {
      const uint32_t keep = first_k >= p.k ? 0u : 0xFFu;
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        two_scales[r][0] &= keep;
        two_scales[r][1] &= keep;
      }
    }
    uint32_t splats[kRowTiles][2][2];  // [row tile][row g, g + 8][block]
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) scale_splats(two_scales[r][h], splats[r][h][0], splats[r][h][1]);
    // Straight-line code (no early exit for padding token tiles): consecutive mma go to independent accumulators.
    const uint8_t* token_base = base + T::kCodeBytes + T::kScaleBytes;
#pragma unroll
    for (int word = 0; word < 4; ++word) {
      uint32_t a[kRowTiles][2][4];  // [row tile][row g, g + 8][pairs]
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint4& c = codes[r][h];
          dequantize_word(word == 0 ? c.x : word == 1 ? c.y : word == 2 ? c.z : c.w, splats[r][h][word / 2], a[r][h]);
        }
#pragma unroll
      for (int tt = 0; tt < kTokenTiles; ++tt) {
        const int token = tt * 8 + g, part = warp_k * 16 + t * 4 + word;
        uint32_t pairs[4];
        permute_x_pairs(*reinterpret_cast<const uint4*>(token_base + token * (T::kStageK * 2) +
                                                        swizzled_token_chunk(part, token) * 16),
                        pairs);
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
          for (int r = 0; r < kRowTiles; ++r) {
            const uint32_t frag[4] = {a[r][0][2 * half], a[r][1][2 * half], a[r][0][2 * half + 1],
                                      a[r][1][2 * half + 1]};
            mma_bf16_m16n8k16(acc[(word * 2 + half) % kChains][r][tt], frag, pairs[2 * half], pairs[2 * half + 1]);
          }
      }
    }
  };

#pragma unroll
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (s < n_stages) load_stage(first_stage + s, s);
    commit_copies();
  }
  for (int32_t i = 0; i < n_stages; ++i) {
    wait_copies<T::kStages - 2>();
    __syncthreads();
    const int32_t next = i + T::kStages - 1;
    if (next < n_stages) load_stage(first_stage + next, next % T::kStages);
    commit_copies();
    compute_stage(first_stage + i, i % T::kStages);
  }
  wait_copies<0>();
  __syncthreads();
  // The warp's fragments, flattened: v = (row tile * kTokenTiles + token tile) * 4 + element (constant indices only).
  constexpr int kFragments = kRowTiles * kTokenTiles * 4;
  float(&out)[kFragments] = reinterpret_cast<float(&)[kFragments]>(acc[0]);
#pragma unroll
  for (int c = 1; c < kChains; ++c)
#pragma unroll
    for (int v = 0; v < kFragments; ++v) out[v] += reinterpret_cast<const float(&)[kFragments]>(acc[c])[v];

  // Warps that split a stage's K add into warp_k == 0, in warp_k order.
  if constexpr (T::kWarpsK > 1) {
    float* sums = reinterpret_cast<float*>(shared);  // [warp_k - 1][warp_n][v][32]
    if (warp_k > 0)
#pragma unroll
      for (int v = 0; v < kFragments; ++v)
        sums[(((warp_k - 1) * kWarpsN + warp_n) * kFragments + v) * 32 + lane] = out[v];
    __syncthreads();
    if (warp_k == 0)
      for (int w = 1; w < T::kWarpsK; ++w)
#pragma unroll
        for (int v = 0; v < kFragments; ++v)
          out[v] += sums[(((w - 1) * kWarpsN + warp_n) * kFragments + v) * 32 + lane];
  }

  if (p.k_splits > 1) {
    // Every split stores its partial tile; the last CTA to arrive adds all of them in split order.
    __shared__ bool is_last;
    const int64_t tile = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    constexpr int kTileFloats = kWarpsN * 32 * kFragments;
    float* tile_partials = p.partials + tile * p.k_splits * kTileFloats;
    if (warp_k == 0)
#pragma unroll
      for (int v = 0; v < kFragments; ++v)
        tile_partials[blockIdx.z * kTileFloats + v * kWarpsN * 32 + threadIdx.x] = out[v];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      is_last = atomicAdd(&p.counters[tile], 1) == p.k_splits - 1;
      if (is_last) p.counters[tile] = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // Splits outermost, so a split's kFragments loads are in flight together (profiled: the inner split loop left
    // the FADD chain waiting on one load at a time); each value still adds 0 + split 0 + split 1 + ... in order.
    if (warp_k == 0) {
#pragma unroll
      for (int v = 0; v < kFragments; ++v) out[v] = 0.0f;
      for (int s = 0; s < p.k_splits; ++s)
#pragma unroll
        for (int v = 0; v < kFragments; ++v) out[v] += __ldcg(&tile_partials[s * kTileFloats + v * kWarpsN * 32 +
                                                                             threadIdx.x]);
    }
  }
  if (warp_k != 0) return;

  // Fragment element e of (row tile r, token tile tt) is (row r * 16 + g + 8 * (e / 2), token tt * 8 + 2 * t + e % 2).
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r) {
    const int32_t tile_row = first_n + (warp_n * kRowTiles + r) * 16 + g;
    float row_alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t row = tile_row + 8 * h;
      if (p.expert_alphas != nullptr) {
        const int shard = p.alphas_per_expert == 2 && row >= p.n / 2 ? 1 : 0;
        row_alpha[h] = p.expert_alphas[work.expert * p.alphas_per_expert + shard] * kDequantizedAlphaFactor;
      } else {
        row_alpha[h] = alpha_of_row(p.alphas, row) * kDequantizedAlphaFactor;
      }
    }
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int32_t row = tile_row + 8 * (e / 2), token = tt * 8 + 2 * t + e % 2;
        if (row < p.n && token < tokens)
          p.y[static_cast<int64_t>(work.first_row + token) * p.n + row] = static_cast<uint16_t>(
              bf16x2_bits(out[(r * kTokenTiles + tt) * 4 + e] * row_alpha[e / 2], 0.0f) & 0xFFFFu);
      }
  }
}

template <int kTokenTiles, int kWarpsN, int kRowTiles>
void launch_tile(const FusedProblem& problem, dim3 grid, cudaStream_t stream) {
  using T = Tile<kTokenTiles, kWarpsN, kRowTiles>;
  auto kernel = nvfp4_fused_kernel<kTokenTiles, kWarpsN, kRowTiles>;
  // Once per process (the attribute belongs to the device current then; one device per process here).
  static const bool shared_limit_raised = [&] {
    FP4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSharedBytes));
    return true;
  }();
  (void)shared_limit_raised;
  kernel<<<grid, kThreads, T::kSharedBytes, stream>>>(problem);
  FP4_CUDA_CHECK(cudaGetLastError());
}

template <int kTokenTiles, int kRowTiles>
void launch_row_tiles(const FusedProblem& problem, int warps_n, dim3 grid, cudaStream_t stream) {
  switch (warps_n) {
    case 8: launch_tile<kTokenTiles, 8, kRowTiles>(problem, grid, stream); break;
    case 4: launch_tile<kTokenTiles, 4, kRowTiles>(problem, grid, stream); break;
    default: launch_tile<kTokenTiles, 2, kRowTiles>(problem, grid, stream); break;
  }
}

template <int kTokenTiles>
void launch_token_tiles(const FusedProblem& problem, const Nvfp4FusedConfig& config, dim3 grid, cudaStream_t stream) {
  if (config.row_tiles == 2)
    launch_row_tiles<kTokenTiles, 2>(problem, config.warps_n, grid, stream);
  else
    launch_row_tiles<kTokenTiles, 1>(problem, config.warps_n, grid, stream);
}

void launch(const FusedProblem& problem, const Nvfp4FusedConfig& config, dim3 grid, cudaStream_t stream) {
  switch (config.token_tiles) {
    case 1: launch_token_tiles<1>(problem, config, grid, stream); break;
    case 2: launch_token_tiles<2>(problem, config, grid, stream); break;
    case 4: launch_token_tiles<4>(problem, config, grid, stream); break;
    default: launch_token_tiles<kMaxProblemTokenTiles>(problem, config, grid, stream); break;
  }
}

int token_tiles_for(int64_t tokens_per_tile) {
  return tokens_per_tile <= 8 ? 1 : tokens_per_tile <= 16 ? 2 : tokens_per_tile <= 32 ? 4 : kMaxProblemTokenTiles;
}
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t rows_per_cta(const Nvfp4FusedConfig& config) { return 16 * config.warps_n * config.row_tiles; }

}  // namespace

int nvfp4_fused_max_splits(int64_t k, int warps_n) {
  return static_cast<int>(ceil_div(k, kGroupK * (kWarps / warps_n)));  // one stage per split at least
}

int nvfp4_fused_splits_for(int64_t m, int64_t n, int64_t k, const Nvfp4FusedConfig& tile) {
  // Split K only while the tiles leave multiprocessors of an H100 (132) idle: the partials' round trip and the last
  // CTA's serial pass cost more than the extra CTAs bring once every SM has one (measured, bench/RESULTS.md).
  const int64_t tiles = ceil_div(m, 8 * tile.token_tiles) * ceil_div(n, rows_per_cta(tile));
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(132 / tiles, nvfp4_fused_max_splits(k, tile.warps_n))));
}

Nvfp4FusedConfig nvfp4_fused_config_for(int64_t m, int64_t n, int64_t k) {
  Nvfp4FusedConfig config{token_tiles_for(m), m <= 16 ? 4 : 8, 1, 1};
  config.k_splits = nvfp4_fused_splits_for(m, n, k, config);
  return config;
}

Nvfp4FusedWorkspaceSize nvfp4_fused_workspace_size(int64_t m, int64_t n, const Nvfp4FusedConfig& config) {
  if (config.k_splits <= 1) return {0, 0};
  const int64_t tiles = ceil_div(m, 8 * config.token_tiles) * ceil_div(n, rows_per_cta(config));
  return {tiles * config.k_splits * rows_per_cta(config) * 8 * config.token_tiles, tiles};
}

void launch_nvfp4_fused(const Nvfp4LaunchArgs& args, const Nvfp4FusedConfig& config, float* partials,
                        int32_t* counters) {
  FusedProblem problem{};
  problem.x = args.x;
  problem.packed = args.packed;
  problem.scales = args.block_scales;
  problem.n = args.n;
  problem.k = args.k;
  problem.padded_scale_cols = (args.k / 16 + 3) / 4 * 4;
  problem.order = args.order;
  problem.aligned16 = args.k % 32 == 0 && reinterpret_cast<uintptr_t>(args.packed) % 16 == 0;
  problem.n_experts = 1;
  problem.m = args.m;
  problem.alphas = args.alphas;
  problem.y = args.y;
  problem.k_splits = config.k_splits;
  problem.partials = partials;
  problem.counters = counters;
  const dim3 grid(static_cast<unsigned>(ceil_div(args.m, 8 * config.token_tiles)),
                  static_cast<unsigned>(ceil_div(args.n, rows_per_cta(config))),
                  static_cast<unsigned>(config.k_splits));
  launch(problem, config, grid, static_cast<cudaStream_t>(args.stream));
}

Nvfp4FusedConfig nvfp4_grouped_config_for(int64_t max_rows, int64_t n_experts, int64_t /*n*/, int64_t /*k*/) {
  // Tokens per busy expert if the rows spread evenly (top-k routing of a batch). Row warps: H100, Qwen3-30B-A3B
  // experts (bench/RESULTS.md, joint CUDA run, forced grouped tiles; w13 + w2 µs): 8 row warps beat 2 by 1.5-1.75x
  // from 16 to 256 tokens (128 / 193 / 279 vs 196 / 302 / 485) and tie at 4096; one token's 8 rows: 4 row warps best
  // (21.1 vs 23.9 with 8, 27.0 with 2).
  const int64_t rows_per_expert = ceil_div(max_rows, std::max<int64_t>(1, std::min(n_experts, max_rows)));
  const int token_tiles = token_tiles_for(rows_per_expert);
  return {token_tiles, max_rows <= 8 ? 4 : 8, 1, 1};
}

void launch_nvfp4_grouped(const Nvfp4GroupedLaunchArgs& args, const Nvfp4FusedConfig& config) {
  FusedProblem problem{};
  problem.x = args.x;
  problem.packed = args.packed;
  problem.scales = args.block_scales;
  const int64_t padded_rows = (args.n + 127) / 128 * 128;
  problem.padded_scale_cols = (args.k / 16 + 3) / 4 * 4;
  problem.packed_expert_stride = static_cast<int64_t>(args.n) * args.k / 2;
  problem.scales_expert_stride = padded_rows * problem.padded_scale_cols;
  problem.n = args.n;
  problem.k = args.k;
  problem.order = args.order;
  problem.aligned16 = args.k % 32 == 0 && reinterpret_cast<uintptr_t>(args.packed) % 16 == 0;
  problem.expert_offsets = args.expert_offsets;
  problem.n_experts = args.n_experts;
  problem.expert_alphas = args.alphas;
  problem.alphas_per_expert = args.alphas_per_expert;
  problem.y = args.y;
  problem.k_splits = 1;
  // Work items: each non-empty expert's token tiles; at most max_rows / tokens + one partial tile per expert.
  const int64_t tokens = 8 * config.token_tiles;
  const int64_t items = ceil_div(args.max_rows, tokens) + std::min<int64_t>(args.n_experts, args.max_rows);
  const dim3 grid(static_cast<unsigned>(items), static_cast<unsigned>(ceil_div(args.n, rows_per_cta(config))), 1);
  launch(problem, config, grid, static_cast<cudaStream_t>(args.stream));
}

}  // namespace fp4serve::cuda
