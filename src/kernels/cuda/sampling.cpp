// Host side of GPU sampling: validates the parameters, plans each row (the CPU's uniform draw, which rows need the
// descending order and in which sort chunk), launches, reads the results back and reports errors as sample_token does.
#ifdef FP4SERVE_HAVE_CUDA
#include "kernels/cuda/sampling.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "common/error.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/sampling_kernels.h"

namespace fp4serve::cuda {
namespace {

template <typename T>
T* device_alloc(int64_t count) {
  void* p = nullptr;
  FP4_CUDA_CHECK(cudaMalloc(&p, static_cast<size_t>(count) * sizeof(T)));
  return static_cast<T*>(p);
}

bool is_filtered(const SamplingParams& p) { return !(p.top_k == -1 && p.top_p == 1.0f && p.min_p == 0.0f); }

}  // namespace

struct CudaSampler::State {
  int64_t max_rows, vocab;
  std::vector<void*> allocations;  // freed in the destructor
  SamplingRowPlan* plans = nullptr;
  int32_t* tokens = nullptr;
  float* logprobs = nullptr;
  int32_t* ranks = nullptr;
  int32_t* status = nullptr;
  SortBuffers sort{};
  int32_t* top_tokens = nullptr;  // [max_rows, top_capacity], grown on demand
  float* top_logprobs = nullptr;
  int64_t top_capacity = 0;
  size_t bytes = 0;

  template <typename T>
  T* allocate(int64_t count) {
    T* p = device_alloc<T>(count);
    allocations.push_back(p);
    bytes += static_cast<size_t>(count) * sizeof(T);
    return p;
  }

  ~State() {
    for (void* p : allocations) cudaFree(p);  // destructors must not throw; the driver may already be gone
    cudaFree(top_tokens);
    cudaFree(top_logprobs);
  }

  void reserve_top(int64_t n_top) {
    if (n_top <= top_capacity) return;
    cudaFree(top_tokens);
    cudaFree(top_logprobs);
    top_tokens = nullptr;
    top_logprobs = nullptr;
    top_capacity = 0;
    top_tokens = device_alloc<int32_t>(max_rows * n_top);
    top_logprobs = device_alloc<float>(max_rows * n_top);
    top_capacity = n_top;
  }
};

CudaSampler::CudaSampler(int64_t max_rows, int64_t vocab) : state_(std::make_unique<State>()) {
  FP4_CHECK(max_rows >= 1 && max_rows <= kMaxSamplingRows, "CudaSampler: max_rows = {} must be in [1, {}]", max_rows,
            kMaxSamplingRows);
  FP4_CHECK(vocab >= 1 && vocab <= (int64_t{1} << 31) / kSamplingSortRows, "CudaSampler: vocab = {} must be in [1, {}]",
            vocab, (int64_t{1} << 31) / kSamplingSortRows);
  State& s = *state_;
  s.max_rows = max_rows;
  s.vocab = vocab;
  s.plans = s.allocate<SamplingRowPlan>(max_rows);
  s.tokens = s.allocate<int32_t>(max_rows);
  s.logprobs = s.allocate<float>(max_rows);
  s.ranks = s.allocate<int32_t>(max_rows);
  s.status = s.allocate<int32_t>(max_rows);
  const int64_t sort_items = kSamplingSortRows * vocab;
  s.sort.keys_in = s.allocate<uint64_t>(sort_items);
  s.sort.keys_out = s.allocate<uint64_t>(sort_items);
  s.sort.ids_in = s.allocate<int32_t>(sort_items);
  s.sort.ids_out = s.allocate<int32_t>(sort_items);
  s.sort.temp_bytes = sampling_sort_temp_bytes(vocab);
  s.sort.temp = s.allocate<uint8_t>(static_cast<int64_t>(s.sort.temp_bytes));
}

CudaSampler::~CudaSampler() = default;

const int32_t* CudaSampler::device_tokens() const { return state_->tokens; }
int64_t CudaSampler::max_rows() const { return state_->max_rows; }
int64_t CudaSampler::vocab() const { return state_->vocab; }
size_t CudaSampler::workspace_bytes() const {
  return state_->bytes + static_cast<size_t>(state_->max_rows * state_->top_capacity) * 8;
}

std::vector<GpuSampledToken> CudaSampler::sample(const SamplingBatch& batch) {
  State& s = *state_;
  const std::span<const SamplingParams> params = batch.params;
  const std::span<const int64_t> token_indices = batch.token_indices, logit_rows = batch.logit_rows;
  const int64_t rows = static_cast<int64_t>(params.size());
  FP4_CHECK(token_indices.size() == params.size(), "CudaSampler::sample: {} token_indices for {} rows of params",
            token_indices.size(), rows);
  FP4_CHECK(logit_rows.empty() || logit_rows.size() == params.size(),
            "CudaSampler::sample: {} logit_rows for {} rows of params", logit_rows.size(), rows);
  FP4_CHECK(rows <= s.max_rows, "CudaSampler::sample: {} rows exceed max_rows = {}", rows, s.max_rows);
  if (rows == 0) return {};
  FP4_CHECK(batch.logits != nullptr, "CudaSampler::sample: logits must be a device pointer");

  std::vector<SamplingRowPlan> plans(static_cast<size_t>(rows));
  int32_t sorted_rows = 0, max_top = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const SamplingParams& p = params[r];
    p.validate(fmt::format("sampling row {}", r));
    const bool greedy = p.is_greedy(), filtered = is_filtered(p);
    const int32_t n_top = static_cast<int32_t>(std::min<int64_t>(p.n_top_logprobs, s.vocab));
    const bool needs_sort = (!greedy && filtered) || n_top > 0;
    const int32_t slot = needs_sort ? sorted_rows++ : -1;
    max_top = std::max(max_top, n_top);
    plans[r] = SamplingRowPlan{
        .logits_row = logit_rows.empty() ? r : logit_rows[r],
        .inv_temperature = greedy ? 0.0 : 1.0 / static_cast<double>(p.temperature),
        .uniform = sampling_uniform(p.seed, token_indices[r]),
        .top_p = p.top_p,
        .min_p = p.min_p,
        .logprob_scale = logprob_scale(p, batch.logprobs_mode),
        .greedy = greedy,
        .filtered = filtered,
        .limit = static_cast<int32_t>(filtered && p.top_k != -1 ? std::min<int64_t>(p.top_k, s.vocab) : s.vocab),
        .n_top = n_top,
        .sort_chunk = needs_sort ? slot / static_cast<int32_t>(kSamplingSortRows) : -1,
        .sort_slot = needs_sort ? slot % static_cast<int32_t>(kSamplingSortRows) : -1,
    };
  }
  s.reserve_top(max_top);

  void* stream = batch.stream;
  const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  const SamplingLogits logits{.data = batch.logits, .bf16 = batch.bf16_logits};
  FP4_CUDA_CHECK(cudaMemcpyAsync(s.plans, plans.data(), plans.size() * sizeof(SamplingRowPlan), cudaMemcpyHostToDevice,
                                 cuda_stream));
  const SamplingOutputs outputs{.tokens = s.tokens,
                                .logprobs = s.logprobs,
                                .ranks = s.ranks,
                                .status = s.status,
                                .top_tokens = s.top_tokens,
                                .top_logprobs = s.top_logprobs,
                                .top_stride = static_cast<int32_t>(s.top_capacity)};
  const int32_t vocab = static_cast<int32_t>(s.vocab), n_rows = static_cast<int32_t>(rows);
  launch_sampling_rows(logits, s.plans, n_rows, vocab, -1, nullptr, outputs, stream);
  for (int32_t chunk = 0; chunk * kSamplingSortRows < sorted_rows; ++chunk) {
    const int32_t chunk_rows =
        std::min<int32_t>(static_cast<int32_t>(kSamplingSortRows), sorted_rows - chunk * kSamplingSortRows);
    launch_sampling_sort(logits, s.plans, n_rows, vocab, chunk, chunk_rows, s.sort, stream);
    launch_sampling_rows(logits, s.plans, n_rows, vocab, chunk, s.sort.ids_out, outputs, stream);
  }

  std::vector<int32_t> tokens(static_cast<size_t>(rows)), status(static_cast<size_t>(rows)),
      ranks(static_cast<size_t>(rows));
  std::vector<float> logprobs(static_cast<size_t>(rows));
  std::vector<int32_t> top_tokens(static_cast<size_t>(rows * s.top_capacity));
  std::vector<float> top_logprobs(top_tokens.size());
  FP4_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), s.tokens, tokens.size() * 4, cudaMemcpyDeviceToHost, cuda_stream));
  FP4_CUDA_CHECK(cudaMemcpyAsync(ranks.data(), s.ranks, ranks.size() * 4, cudaMemcpyDeviceToHost, cuda_stream));
  FP4_CUDA_CHECK(cudaMemcpyAsync(status.data(), s.status, status.size() * 4, cudaMemcpyDeviceToHost, cuda_stream));
  FP4_CUDA_CHECK(
      cudaMemcpyAsync(logprobs.data(), s.logprobs, logprobs.size() * 4, cudaMemcpyDeviceToHost, cuda_stream));
  if (max_top > 0) {
    FP4_CUDA_CHECK(
        cudaMemcpyAsync(top_tokens.data(), s.top_tokens, top_tokens.size() * 4, cudaMemcpyDeviceToHost, cuda_stream));
    FP4_CUDA_CHECK(cudaMemcpyAsync(top_logprobs.data(), s.top_logprobs, top_logprobs.size() * 4, cudaMemcpyDeviceToHost,
                                   cuda_stream));
  }
  FP4_CUDA_CHECK(cudaStreamSynchronize(cuda_stream));

  std::vector<GpuSampledToken> results(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    FP4_CHECK(status[r] != 1, "sampling row {}: logit of token {} is NaN (the model produced non-finite values)", r,
              tokens[r]);
    FP4_CHECK(status[r] != 2, "sampling row {}: the largest logit is {}; logits must be finite or -inf", r,
              logprobs[r]);
    GpuSampledToken& result = results[r];
    result.token = tokens[r];
    result.logprob = logprobs[r];
    result.rank = ranks[r];
    for (int32_t i = 0; i < plans[r].n_top; ++i)
      result.top_logprobs.emplace_back(top_tokens[r * s.top_capacity + i], top_logprobs[r * s.top_capacity + i]);
  }
  return results;
}

}  // namespace fp4serve::cuda
#endif  // FP4SERVE_HAVE_CUDA
