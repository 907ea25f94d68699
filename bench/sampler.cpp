// Host sampling cost per sequence per step on a 151,936-token row (Qwen3's vocabulary): greedy and top-p sampling,
// and the logprobs of the chosen token computed from the row or with a log-normalizer already known (the GPU
// forward's). This is the engine's host work per sequence on --device cuda. Google Benchmark table.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "engine/sampler.h"

namespace fp4serve {
namespace {

const std::vector<float>& qwen3_row() {
  static const std::vector<float> row = [] {
    std::vector<float> logits(151936);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 4.0f);
    for (float& l : logits) l = normal(rng);
    return logits;
  }();
  return row;
}

void BM_SampleGreedy(benchmark::State& state) {
  const SamplingParams params{.temperature = 0.0f};
  int64_t index = 0;
  for (auto _ : state) benchmark::DoNotOptimize(sample_token(qwen3_row(), params, index++));
}
BENCHMARK(BM_SampleGreedy);

void BM_SampleTopP(benchmark::State& state) {
  const SamplingParams params{.temperature = 0.7f, .top_p = 0.9f, .seed = 3};
  int64_t index = 0;
  for (auto _ : state) benchmark::DoNotOptimize(sample_token(qwen3_row(), params, index++));
}
BENCHMARK(BM_SampleTopP);

void BM_LogprobsFromTheRow(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(position_logprobs(qwen3_row(), 5, {.temperature = 1.0f}, LogprobsMode::Processed));
}
BENCHMARK(BM_LogprobsFromTheRow);

void BM_LogprobsWithAKnownNormalizer(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(
        position_logprobs(qwen3_row(), 5, {.temperature = 1.0f}, LogprobsMode::Processed, /*raw_log_normalizer=*/9.5f));
}
BENCHMARK(BM_LogprobsWithAKnownNormalizer);

}  // namespace
}  // namespace fp4serve

BENCHMARK_MAIN();
