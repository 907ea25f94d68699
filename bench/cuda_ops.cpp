// GPU attention and sampling on Qwen3-30B-A3B shapes (32 query heads, 4 KV heads, head_dim 128, page size 16):
// split decode attention (the fast path's splits and --deterministic's) in us and GB/s of KV read at batch {1, 64, 256}
// x context {512, 4096, 32768} against the
// device-to-device copy bandwidth measured in the same run (page tables shuffled; KV rotated over > 256 MB of copies
// so that small cases read HBM, not L2); causal prefill of one 4096-token prompt; sampling over the 151936-token
// vocabulary (host wall time of CudaSampler::sample, read-back included). Prints markdown tables last.
#include <cstdio>

#ifndef FP4SERVE_HAVE_CUDA
int main() {
  std::puts("bench_cuda_ops: built without the CUDA backend (FP4SERVE_CUDA=OFF); nothing to measure");
  return 0;
}
#else
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "engine/sampler.h"
#include "format/bf16.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/sampling.h"

namespace {

using namespace fp4serve;
using bench::check;
using bench::device_alloc;

constexpr int64_t kHeads = 32, kKvHeads = 4, kHeadDim = 128, kPageSize = 16;
constexpr size_t kRotationBytes = size_t{256} << 20;  // > 5x the 50 MB L2 of an H100
constexpr int64_t kVocab = 151936;

// `copies` disjoint sets of `batch` sequences of `context` tokens over one shuffled paged cache.
struct PagedCache {
  int64_t batch, context, pages_per_sequence, copies;
  bf16_bits* k = nullptr;
  bf16_bits* v = nullptr;
  int32_t* tables = nullptr;  // [copies, batch, pages_per_sequence]
  int32_t* first_position = nullptr;
  int32_t* row_start = nullptr;

  PagedCache(int64_t batch_size, int64_t context_length, int64_t new_tokens, int n_copies, std::mt19937& rng)
      : batch(batch_size),
        context(context_length),
        pages_per_sequence((context_length + kPageSize - 1) / kPageSize),
        copies(n_copies) {
    const int64_t n_pages = copies * batch * pages_per_sequence;
    const size_t elements = static_cast<size_t>(n_pages * kPageSize * kKvHeads * kHeadDim);
    k = device_alloc<bf16_bits>(elements);
    v = device_alloc<bf16_bits>(elements);
    check(cudaMemset(k, 0x3c, elements * 2), "memset");  // bf16 0x3c3c ~ 0.011: finite, values do not matter
    check(cudaMemset(v, 0x3c, elements * 2), "memset");
    std::vector<int32_t> page_ids(static_cast<size_t>(n_pages));
    std::iota(page_ids.begin(), page_ids.end(), 0);
    std::shuffle(page_ids.begin(), page_ids.end(), rng);
    std::vector<int32_t> positions(static_cast<size_t>(batch), static_cast<int32_t>(context - new_tokens)), starts;
    for (int64_t s = 0; s <= batch; ++s) starts.push_back(static_cast<int32_t>(s * new_tokens));
    tables = upload(page_ids);
    first_position = upload(positions);
    row_start = upload(starts);
  }
  ~PagedCache() {
    for (void* p : {static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(tables),
                    static_cast<void*>(first_position), static_cast<void*>(row_start)})
      cudaFree(p);
  }
  static int32_t* upload(const std::vector<int32_t>& host) {
    int32_t* p = device_alloc<int32_t>(host.size());
    check(cudaMemcpy(p, host.data(), host.size() * 4, cudaMemcpyHostToDevice), "upload");
    return p;
  }
  PagedKvLayer layer() const { return {k, v, copies * batch * pages_per_sequence, kPageSize, kKvHeads, kHeadDim}; }
  cuda::AttentionBatch view(int copy, int64_t new_tokens) const {
    return {.page_tables = tables + copy * batch * pages_per_sequence,
            .page_table_stride = pages_per_sequence,
            .first_position = first_position,
            .row_start = row_start,
            .n_sequences = batch,
            .n_rows = batch * new_tokens,
            .max_context = context,
            .max_query_tokens = new_tokens};
  }
};

struct DecodeRow {
  cuda::AttentionSplits splits;
  int64_t batch, context;
  double us, kv_gbs;
};

DecodeRow bench_decode(cuda::AttentionSplits splits, int64_t batch, int64_t context, cudaStream_t stream,
                       std::mt19937& rng) {
  const double kv_bytes = static_cast<double>(batch * context * kKvHeads * kHeadDim * 2 * 2);  // K and V, bf16
  const int copies = static_cast<int>(std::clamp<double>(kRotationBytes / kv_bytes, 1, 64));
  PagedCache cache(batch, context, 1, copies, rng);
  const size_t activations = static_cast<size_t>(batch * kHeads * kHeadDim);
  bf16_bits* q = device_alloc<bf16_bits>(activations);
  bf16_bits* out = device_alloc<bf16_bits>(activations);
  check(cudaMemset(q, 0x3c, activations * 2), "memset");
  cuda::DecodeWorkspace workspace(batch, kHeads, kKvHeads, kHeadDim, context, splits);
  const double us = bench::median_graph_us(stream, std::max(copies, 4), [&](int i) {
    cuda::paged_decode_attention_cuda(cache.layer(), cache.view(i % copies, 1), {q, kHeads * kHeadDim}, kHeads,
                                      workspace, {out, kHeads * kHeadDim}, stream);
  });
  cudaFree(q);
  cudaFree(out);
  return {splits, batch, context, us, kv_bytes / us / 1e3};
}

// One prompt of `tokens` new tokens (no prefix): us per call and effective TFLOP/s of QK^T and PV over the causal half.
std::pair<double, double> bench_prefill(int64_t tokens, cudaStream_t stream, std::mt19937& rng) {
  PagedCache cache(1, tokens, tokens, 1, rng);
  const int64_t stride = (kHeads + 2 * kKvHeads) * kHeadDim;
  const size_t elements = static_cast<size_t>(tokens * stride);
  bf16_bits* qkv = device_alloc<bf16_bits>(elements);
  bf16_bits* out = device_alloc<bf16_bits>(static_cast<size_t>(tokens * kHeads * kHeadDim));
  check(cudaMemset(qkv, 0x3c, elements * 2), "memset");
  const double us = bench::median_graph_us(stream, 2, [&](int) {
    cuda::paged_prefill_attention_cuda(cache.layer(), cache.view(0, tokens), {qkv, stride}, kHeads,
                                       cuda::AttentionSplits::ByBatch, {out, kHeads * kHeadDim}, stream);
  });
  cudaFree(qkv);
  cudaFree(out);
  const double flops = 4.0 * kHeads * kHeadDim * static_cast<double>(tokens) * static_cast<double>(tokens + 1) / 2;
  return {us, flops / us / 1e6};
}

struct SamplingRow {
  const char* name;
  int64_t batch;
  double us;
};

std::vector<SamplingRow> bench_sampling(cudaStream_t stream, std::mt19937& rng) {
  const std::vector<int64_t> batches = {1, 64, 256};
  std::vector<float> host(static_cast<size_t>(batches.back() * kVocab));
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (auto& l : host) l = normal(rng);
  float* logits = device_alloc<float>(host.size());
  check(cudaMemcpy(logits, host.data(), host.size() * 4, cudaMemcpyHostToDevice), "upload");
  cuda::CudaSampler sampler(batches.back(), kVocab);
  const std::pair<const char*, SamplingParams> configs[] = {
      {"greedy", {.temperature = 0.0f}},
      {"temperature 1", {.temperature = 1.0f, .seed = 1}},
      {"top_k 50 + top_p 0.9", {.temperature = 0.7f, .top_k = 50, .top_p = 0.9f, .seed = 2}},
      {"top_p 0.95 + 5 logprobs", {.temperature = 1.0f, .top_p = 0.95f, .seed = 3, .n_top_logprobs = 5}},
  };
  std::vector<SamplingRow> rows;
  for (const auto& [name, params] : configs)
    for (int64_t batch : batches) {
      const std::vector<SamplingParams> all(static_cast<size_t>(batch), params);
      std::vector<int64_t> indices(static_cast<size_t>(batch));
      std::iota(indices.begin(), indices.end(), 0);
      const cuda::SamplingBatch sampling{.logits = logits, .params = all, .token_indices = indices, .stream = stream};
      sampler.sample(sampling);  // warm-up
      std::vector<double> times;
      for (int r = 0; r < bench::kTimedReplays; ++r) {
        const auto start = std::chrono::steady_clock::now();
        sampler.sample(sampling);
        times.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
      }
      std::sort(times.begin(), times.end());
      rows.push_back({name, batch, times[times.size() / 2]});
      std::fprintf(stderr, "sampling %s batch %ld done\n", name, static_cast<long>(batch));
    }
  cudaFree(logits);
  return rows;
}

}  // namespace

int main() {
  try {
    cudaStream_t stream;
    check(cudaStreamCreate(&stream), "stream");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "properties");
    std::mt19937 rng(1);
    const double copy_gbs = bench::copy_bandwidth_gbs(stream);
    std::vector<DecodeRow> decode;
    for (auto splits : {cuda::AttentionSplits::ByBatch, cuda::AttentionSplits::BatchInvariant})
      for (int64_t batch : {1, 64, 256})
        for (int64_t context : {512, 4096, 32768}) {
          decode.push_back(bench_decode(splits, batch, context, stream, rng));
          std::fprintf(stderr, "decode batch %ld context %ld done\n", static_cast<long>(batch),
                       static_cast<long>(context));
        }
    const auto [prefill_us, prefill_tflops] = bench_prefill(4096, stream, rng);
    const std::vector<SamplingRow> sampling = bench_sampling(stream, rng);

    std::printf("\n%s, %d SMs; device-to-device copy %.0f GB/s (read + write)\n", prop.name, prop.multiProcessorCount,
                copy_gbs);
    std::printf(
        "\nDecode attention, Qwen3-30B-A3B layer (32 q / 4 KV heads, head_dim 128, page 16): us per call (median of "
        "graph replays, KV rotated over > 256 MB); GB/s = K + V bytes read / time. Splits: by batch = the fast "
        "path's decode_split_tokens; batch-invariant = --deterministic's %ld keys.\n",
        static_cast<long>(cuda::kBatchInvariantSplitTokens));
    std::printf("| splits | split keys | batch | context | us | KV GB/s | %% of copy |\n|---|---|---|---|---|---|---|\n");
    for (const DecodeRow& row : decode) {
      const bool invariant = row.splits == cuda::AttentionSplits::BatchInvariant;
      const int64_t split =
          invariant ? cuda::kBatchInvariantSplitTokens : cuda::decode_split_tokens(row.batch, kKvHeads);
      std::printf("| %s | %ld | %ld | %ld | %.1f | %.0f | %.0f%% |\n", invariant ? "batch-invariant" : "by batch",
                  static_cast<long>(split), static_cast<long>(row.batch), static_cast<long>(row.context), row.us,
                  row.kv_gbs, 100.0 * row.kv_gbs / copy_gbs);
    }
    std::printf("\nPrefill attention, one 4096-token prompt: %.0f us, %.1f TFLOP/s (causal QK^T + PV)\n", prefill_us,
                prefill_tflops);
    std::printf("\nSampling over %ld tokens (host wall time of CudaSampler::sample, median of %d)\n",
                static_cast<long>(kVocab), bench::kTimedReplays);
    std::printf("| parameters | batch | us |\n|---|---|---|\n");
    for (const SamplingRow& row : sampling)
      std::printf("| %s | %ld | %.0f |\n", row.name, static_cast<long>(row.batch), row.us);
    check(cudaStreamDestroy(stream), "stream");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_ops: %s\n", e.what());
    return 1;
  }
}
#endif  // FP4SERVE_HAVE_CUDA
