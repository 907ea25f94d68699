// Sampling kernels: one CTA per logits row. Every reduction and scan is a fixed tree (warp butterflies, then warps in
// order), so results are deterministic; the candidates' cumulative masses come from one inclusive scan whose value at
// candidate i depends only on candidates <= i, so the cut (top_p / min_p) and the draw see the same sums.
// Descending order for filters and top logprobs: a stable radix sort of (slot, descending logit) keys over token ids.
// Nothing a row computes depends on the other rows of the call (their number, their plans or their sort chunk: a
// slot's keys carry the slot, so the sort never mixes rows), which is what --deterministic relies on.
// Logits are read as fp32 or bf16 (widened exactly), so the GPU forward's bf16 logits are sampled in place.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/sampling_kernels.h"

namespace fp4serve::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kSlotBits = 4;  // slots 0 .. kSamplingSortRows - 1 in the sort key's high word
static_assert(kSamplingSortRows <= (1 << kSlotBits));

// Float bits whose unsigned order is the float order (-0 counted as +0, as the CPU's comparisons do).
__device__ uint32_t ascending_bits(float f) {
  const uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ float from_ascending_bits(uint32_t u) { return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u); }

__device__ float logit_at(const float* row, int64_t i) { return row[i]; }
__device__ float logit_at(const uint16_t* row, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(row[i]) << 16);
}

template <typename T, typename Op>
__device__ T block_reduce(T x, Op op) {
  __shared__ T partial[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, offset));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = x;
  __syncthreads();
  T result = partial[0];
  for (int w = 1; w < kWarps; ++w) result = op(result, partial[w]);
  __syncthreads();
  return result;
}

// Inclusive prefix sum over the CTA in thread order.
__device__ double block_inclusive_scan(double x) {
  __shared__ double warp_totals[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 1; offset < 32; offset *= 2) {
    const double other = __shfl_up_sync(0xffffffffu, x, offset);
    if (lane >= offset) x = other + x;
  }
  if (lane == 31) warp_totals[warp] = x;
  __syncthreads();
  double before = 0.0;
  for (int w = 0; w < warp; ++w) before += warp_totals[w];
  __syncthreads();
  return warp == 0 ? x : before + x;
}

struct Max {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a < b ? a : b;
  }
};
struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

// The candidates of a row in draw order and their probabilities.
template <typename Logit>
struct Candidates {
  const Logit* logits;
  const int32_t* order;  // nullptr: id order
  float max_logit;
  double inv_temperature, total;

  __device__ int32_t token(int64_t i) const { return order != nullptr ? order[i] : static_cast<int32_t>(i); }
  __device__ double probability(int64_t i) const {
    const double logit = logit_at(logits, token(i));
    return exp((logit - static_cast<double>(max_logit)) * inv_temperature) / total;
  }
};

// Index of the first candidate cut by top_p / min_p (limit when none) and the mass kept before it.
template <typename Logit>
__device__ void count_kept(const Candidates<Logit>& c, const SamplingRowPlan& plan, int32_t& n_kept,
                           double& kept_mass) {
  __shared__ double cumulative[kThreads];
  const double first_probability = c.probability(0);
  double carry = 0.0;  // cumulative mass of the candidates before this chunk
  for (int64_t chunk = 0; chunk < plan.limit; chunk += kThreads) {
    const int64_t i = chunk + threadIdx.x;
    const double p = i < plan.limit ? c.probability(i) : 0.0;
    cumulative[threadIdx.x] = carry + block_inclusive_scan(p);
    __syncthreads();
    const double mass_before = threadIdx.x == 0 ? carry : cumulative[threadIdx.x - 1];
    const bool cut =
        plan.filtered && i < plan.limit && ((i > 0 && mass_before >= plan.top_p) || p < plan.min_p * first_probability);
    const int32_t first_cut = block_reduce(cut ? static_cast<int32_t>(i) : INT_MAX, Min{});
    const bool last_chunk = chunk + kThreads >= plan.limit;
    if (first_cut != INT_MAX || last_chunk) {
      n_kept = first_cut != INT_MAX ? first_cut : plan.limit;
      kept_mass = n_kept - 1 < chunk ? carry : cumulative[n_kept - 1 - chunk];
      return;
    }
    carry = cumulative[kThreads - 1];
  }
}

// The first kept candidate whose cumulative mass exceeds target (the last kept one when rounding leaves none).
template <typename Logit>
__device__ int32_t draw(const Candidates<Logit>& c, int32_t n_kept, double target) {
  __shared__ double last_cumulative;
  double carry = 0.0;
  for (int64_t chunk = 0; chunk < n_kept; chunk += kThreads) {
    const int64_t i = chunk + threadIdx.x;
    const double cumulative = carry + block_inclusive_scan(i < n_kept ? c.probability(i) : 0.0);
    if (threadIdx.x == kThreads - 1) last_cumulative = cumulative;
    const bool hit = i < n_kept && target < cumulative;
    const int32_t first_hit = block_reduce(hit ? static_cast<int32_t>(i) : INT_MAX, Min{});
    if (first_hit != INT_MAX) return c.token(first_hit);
    carry = last_cumulative;
    __syncthreads();  // everyone has read last_cumulative before the next chunk writes it
  }
  return c.token(n_kept - 1);
}

template <typename Logit>
__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const Logit* logits, const SamplingRowPlan* plans, int32_t vocab, int32_t chunk,
                       const int32_t* sorted_ids, SamplingOutputs out) {
  const int row = blockIdx.x;
  const SamplingRowPlan plan = plans[row];
  if (plan.sort_chunk != chunk) return;
  const Logit* row_logits = logits + plan.logits_row * vocab;

  // Largest logit with the lowest id (packed so one max finds both), and the first NaN.
  uint64_t best = 0;
  int32_t first_nan = INT_MAX;
  for (int32_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float l = logit_at(row_logits, i);
    if (isnan(l))
      first_nan = min(first_nan, i);
    else
      best = Max{}(best, (static_cast<uint64_t>(ascending_bits(l)) << 32) | (0xffffffffu - static_cast<uint32_t>(i)));
  }
  first_nan = block_reduce(first_nan, Min{});
  best = block_reduce(best, Max{});
  const float max_logit = from_ascending_bits(static_cast<uint32_t>(best >> 32));
  const int32_t argmax = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(best & 0xffffffffu));
  if (first_nan != INT_MAX || !isfinite(max_logit)) {
    if (threadIdx.x == 0) {
      out.status[row] = first_nan != INT_MAX ? 1 : 2;
      out.tokens[row] = first_nan;
      out.logprobs[row] = max_logit;
    }
    return;
  }

  // The logprobs' normalizer in fp32 as position_logprobs computes it (a scale of 1 leaves the values bit for bit).
  const float scale = plan.logprob_scale;
  float sum_exp = 0.0f;
  double total = 0.0;
  for (int32_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float l = logit_at(row_logits, i);
    sum_exp += expf(l * scale - max_logit * scale);
    if (!plan.greedy) total += exp((static_cast<double>(l) - max_logit) * plan.inv_temperature);
  }
  sum_exp = block_reduce(sum_exp, Sum{});
  total = block_reduce(total, Sum{});
  const float log_normalizer = max_logit * scale + logf(sum_exp);

  const int32_t* order = plan.sort_chunk >= 0 ? sorted_ids + static_cast<int64_t>(plan.sort_slot) * vocab : nullptr;
  int32_t token = argmax;
  if (!plan.greedy) {
    const Candidates<Logit> candidates{row_logits, plan.filtered ? order : nullptr, max_logit, plan.inv_temperature,
                                       total};
    int32_t n_kept = 0;
    double kept_mass = 0.0;
    count_kept(candidates, plan, n_kept, kept_mass);
    token = draw(candidates, n_kept, plan.uniform * kept_mass);
  }
  const float token_logit = logit_at(row_logits, token);
  int32_t n_above = 0;
  for (int32_t i = threadIdx.x; i < vocab; i += kThreads) n_above += logit_at(row_logits, i) > token_logit ? 1 : 0;
  n_above = block_reduce(n_above, Sum{});
  if (threadIdx.x == 0) {
    out.status[row] = 0;
    out.tokens[row] = token;
    out.logprobs[row] = token_logit * scale - log_normalizer;
    out.ranks[row] = 1 + n_above;
  }
  for (int i = threadIdx.x; i < plan.n_top; i += kThreads) {
    out.top_tokens[static_cast<int64_t>(row) * out.top_stride + i] = order[i];
    out.top_logprobs[static_cast<int64_t>(row) * out.top_stride + i] =
        logit_at(row_logits, order[i]) * scale - log_normalizer;
  }
}

template <typename Logit>
__global__ void sort_prepare_kernel(const Logit* logits, const SamplingRowPlan* plans, int32_t vocab, int32_t chunk,
                                    SortBuffers buffers) {
  const SamplingRowPlan plan = plans[blockIdx.y];
  if (plan.sort_chunk != chunk) return;
  const Logit* row_logits = logits + plan.logits_row * vocab;
  const int64_t base = static_cast<int64_t>(plan.sort_slot) * vocab;
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < vocab; i += gridDim.x * blockDim.x) {
    // Descending logits: the complement of the ascending bits; the stable sort keeps ties in id order.
    buffers.keys_in[base + i] =
        (static_cast<uint64_t>(plan.sort_slot) << 32) | ~ascending_bits(logit_at(row_logits, i));
    buffers.ids_in[base + i] = i;
  }
}

}  // namespace

size_t sampling_sort_temp_bytes(int64_t vocab) {
  size_t bytes = 0;
  FP4_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                                 static_cast<uint64_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                 static_cast<int32_t*>(nullptr), kSamplingSortRows * vocab, 0,
                                                 32 + kSlotBits));
  return bytes;
}

void launch_sampling_sort(const SamplingLogits& logits, const SamplingRowPlan* plans, int32_t rows, int32_t vocab,
                          int32_t chunk, int32_t n_chunk_rows, const SortBuffers& buffers, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(std::min<int32_t>((vocab + 255) / 256, 64)), static_cast<unsigned>(rows));
  if (logits.bf16)
    sort_prepare_kernel<<<grid, 256, 0, s>>>(static_cast<const uint16_t*>(logits.data), plans, vocab, chunk, buffers);
  else
    sort_prepare_kernel<<<grid, 256, 0, s>>>(static_cast<const float*>(logits.data), plans, vocab, chunk, buffers);
  FP4_CUDA_CHECK(cudaGetLastError());
  size_t temp_bytes = buffers.temp_bytes;
  FP4_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(buffers.temp, temp_bytes, buffers.keys_in, buffers.keys_out,
                                                 buffers.ids_in, buffers.ids_out,
                                                 static_cast<int64_t>(n_chunk_rows) * vocab, 0, 32 + kSlotBits, s));
}

void launch_sampling_rows(const SamplingLogits& logits, const SamplingRowPlan* plans, int32_t rows, int32_t vocab,
                          int32_t chunk, const int32_t* sorted_ids, const SamplingOutputs& outputs, void* stream) {
  const dim3 grid(static_cast<unsigned>(rows));
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (logits.bf16)
    sample_rows_kernel<<<grid, kThreads, 0, s>>>(static_cast<const uint16_t*>(logits.data), plans, vocab, chunk,
                                                 sorted_ids, outputs);
  else
    sample_rows_kernel<<<grid, kThreads, 0, s>>>(static_cast<const float*>(logits.data), plans, vocab, chunk,
                                                 sorted_ids, outputs);
  FP4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fp4serve::cuda
