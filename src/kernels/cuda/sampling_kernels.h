// Launchers of the sampling kernels, for sampling.cpp (which validates, plans the sort chunks and reads the results
// back). Plain C++ types; arguments are trusted; launches are asynchronous on `stream`.
#pragma once
#include <cstddef>
#include <cstdint>

namespace fp4serve::cuda {

// The logits rows sampled: device [*, vocab], row-major, fp32 or bf16 (the GPU forward's logits).
struct SamplingLogits {
  const void* data;
  bool bf16;
};

// One row's sampling plan, computed on the host from its SamplingParams.
struct SamplingRowPlan {
  int64_t logits_row;      // the row of SamplingLogits this row samples from
  double inv_temperature;  // 1 / temperature (unused when greedy)
  double uniform;          // sampling_uniform(seed, token_index)
  float top_p;
  float min_p;
  float logprob_scale;  // reported logprobs are of log_softmax(logits * logprob_scale) (logprob_scale in sampler.h)
  int32_t greedy;      // 1: the largest logit, lowest id on ties
  int32_t filtered;    // 1: candidates in descending order cut by limit / top_p / min_p; 0: every token, id order
  int32_t limit;       // candidates considered: min(top_k, vocab), or vocab
  int32_t n_top;       // top logprobs to report
  int32_t sort_chunk;  // chunk whose sort holds this row, -1 when the row needs no sort
  int32_t sort_slot;   // row index within that chunk
};

// Per-row results; status: 0 ok, 1 a NaN logit (token holds its id), 2 the largest logit is not finite (logprob
// holds it).
struct SamplingOutputs {
  int32_t* tokens;      // [rows]
  float* logprobs;      // [rows]
  int32_t* ranks;       // [rows]: 1 + the number of logits above the chosen token's
  int32_t* status;      // [rows]
  int32_t* top_tokens;  // [rows, top_stride]
  float* top_logprobs;  // [rows, top_stride]
  int32_t top_stride;
};

struct SortBuffers {
  uint64_t* keys_in;  // [kSamplingSortRows * vocab]: (slot << 32) | descending-orderable logit bits
  uint64_t* keys_out;
  int32_t* ids_in;   // [kSamplingSortRows * vocab] token ids
  int32_t* ids_out;  // token ids, each slot's row most probable first, lower id on ties
  void* temp;
  size_t temp_bytes;
};

size_t sampling_sort_temp_bytes(int64_t vocab);

// Sorts the rows whose plan has sort_chunk == chunk (n_chunk_rows of them) into buffers.ids_out.
void launch_sampling_sort(const SamplingLogits& logits, const SamplingRowPlan* plans, int32_t rows, int32_t vocab,
                          int32_t chunk, int32_t n_chunk_rows, const SortBuffers& buffers, void* stream);

// Samples the rows whose plan has sort_chunk == chunk (-1: the rows that need no sort), reading the order of sorted
// rows from sorted_ids ([kSamplingSortRows, vocab], the chunk's sort).
void launch_sampling_rows(const SamplingLogits& logits, const SamplingRowPlan* plans, int32_t rows, int32_t vocab,
                          int32_t chunk, const int32_t* sorted_ids, const SamplingOutputs& outputs, void* stream);

}  // namespace fp4serve::cuda
