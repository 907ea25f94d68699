// Next-token sampling on the GPU for a batch of logits rows: the CUDA twin of sample_token (engine/sampler.h is the
// spec): the same greedy rule, the same candidate order (filters: most probable first, lower id on ties), the same
// (seed, token_index) uniform draw, double probabilities, fp32 logprobs and ranks as position_logprobs computes them
// (either LogprobsMode; token_ids_logprob is not served here). Sums are reduced in a fixed parallel order, so a draw
// can differ from the CPU's only when it falls within rounding of a boundary. A row's results depend only on its own
// logits and parameters, never on the other rows of the call (--deterministic relies on it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/sampler.h"

namespace fp4serve::cuda {

// Rows sorted at once when filters or top logprobs need the descending order: bounds the sort workspace.
inline constexpr int64_t kSamplingSortRows = 16;
// Rows of one sample() call at most: the sort launch has a grid row per row (CUDA limits grid y to 65535).
inline constexpr int64_t kMaxSamplingRows = 65535;

// One row's result: the token and the logprobs (in the call's LogprobsMode) of it and of the top tokens.
struct GpuSampledToken {
  int32_t token = 0;
  float logprob = 0.0f;
  int64_t rank = 1;              // 1 + the number of strictly more probable tokens
  TokenLogprobs top_logprobs{};  // most probable first, lower id on ties
};

// One sample() call: rows r = 0 .. params.size() - 1, each read from row logit_rows[r] (r when empty) of `logits`.
struct SamplingBatch {
  const void* logits = nullptr;  // device [*, vocab] row-major: f32, or bf16 when bf16_logits
  bool bf16_logits = false;
  std::span<const int64_t> logit_rows{};
  std::span<const SamplingParams> params{};
  std::span<const int64_t> token_indices{};  // the index of the token being generated, as sample_token takes it
  LogprobsMode logprobs_mode = LogprobsMode::Raw;
  void* stream = nullptr;  // cudaStream_t
};

// Device workspace for batches of up to max_rows rows over a vocabulary of `vocab` tokens, allocated at
// construction (top-logprob buffers grow on demand). Not thread-safe: one per engine thread.
class CudaSampler {
 public:
  CudaSampler(int64_t max_rows, int64_t vocab);
  ~CudaSampler();
  CudaSampler(const CudaSampler&) = delete;
  CudaSampler& operator=(const CudaSampler&) = delete;

  // Runs on batch.stream and waits for it. Throws naming the row on bad parameters, a NaN logit or a largest logit
  // that is not finite, as sample_token does.
  std::vector<GpuSampledToken> sample(const SamplingBatch& batch);

  // The tokens of the last sample() call, on the device ([rows] int32): the next decode step's input ids.
  const int32_t* device_tokens() const;
  int64_t max_rows() const;
  int64_t vocab() const;
  size_t workspace_bytes() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace fp4serve::cuda
