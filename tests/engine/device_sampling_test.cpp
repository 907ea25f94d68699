// The host side of GPU sampling: which rows of a step the engine hands to the device sampler (device_sampling_rows),
// what the GPU sampler serves (can_sample_on_device), the logprob scale both samplers share, and that the CPU path
// ignores the option (the CPU forward refuses device rows). The GPU side: tests/model/cuda_engine_sampling_test.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>

#include "common/error.h"
#include "engine/engine.h"
#include "tests/model/test_util.h"

namespace fp4serve::testing_support {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

Sequence sequence_with(std::vector<int32_t> tokens, int64_t n_prompt_tokens, SamplingParams sampling,
                       int64_t max_new_tokens) {
  Sequence seq;
  seq.tokens = std::move(tokens);
  seq.n_prompt_tokens = n_prompt_tokens;
  seq.request.sampling = std::move(sampling);
  seq.request.max_new_tokens = max_new_tokens;
  return seq;
}

TEST(DeviceSampling, RowsAreTheSamplingChunksTheGpuServes) {
  const SamplingParams plain{.temperature = 0.7f, .top_p = 0.9f, .seed = 3, .n_top_logprobs = 2};
  const SamplingParams with_ids{.temperature = 0.0f, .token_ids_logprob = {4}};
  // 0: a prefill chunk that completes (samples its first token); 1: one that does not; 2: a decode of a request
  // with token_ids_logprob (host); 3: a decode at its 3rd output token; 4: a prefill completing a request with
  // max_new_tokens 0 (prompt logprobs only: samples nothing).
  std::vector<Sequence> seqs;
  seqs.push_back(sequence_with({1, 2, 3, 4}, 4, plain, 8));
  seqs.push_back(sequence_with({1, 2, 3, 4, 5, 6}, 6, plain, 8));
  seqs.push_back(sequence_with({1, 2, 3, 9}, 3, with_ids, 8));
  seqs.push_back(sequence_with({1, 2, 9, 9, 9}, 2, {.temperature = 0.0f}, 8));
  seqs.push_back(sequence_with({1, 2, 3}, 3, plain, 0));
  const std::vector<ScheduledChunk> chunks{
      {.sequence = &seqs[0], .start = 0, .n_tokens = 4, .decode = false},
      {.sequence = &seqs[1], .start = 0, .n_tokens = 4, .decode = false},
      {.sequence = &seqs[2], .start = 3, .n_tokens = 1, .decode = true},
      {.sequence = &seqs[3], .start = 4, .n_tokens = 1, .decode = true},
      {.sequence = &seqs[4], .start = 0, .n_tokens = 3, .decode = false},
  };
  EXPECT_TRUE(samples_next_token(chunks[0]));
  EXPECT_FALSE(samples_next_token(chunks[1]));
  EXPECT_TRUE(samples_next_token(chunks[2]));
  EXPECT_FALSE(samples_next_token(chunks[4]));
  const std::vector<DeviceSamplingRow> rows = device_sampling_rows(chunks);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].sequence, 0);
  EXPECT_EQ(rows[0].params, &seqs[0].request.sampling);
  EXPECT_EQ(rows[0].token_index, 0);
  EXPECT_EQ(rows[1].sequence, 3);
  EXPECT_EQ(rows[1].token_index, 3);
  EXPECT_TRUE(device_sampling_rows({}).empty());
}

TEST(DeviceSampling, TheGpuServesAllButTokenIdsLogprob) {
  EXPECT_TRUE(can_sample_on_device({}));
  EXPECT_TRUE(
      can_sample_on_device({.temperature = 0.5f, .top_k = 3, .top_p = 0.5f, .min_p = 0.1f, .n_top_logprobs = 20}));
  EXPECT_FALSE(can_sample_on_device({.token_ids_logprob = {0}}));
}

TEST(DeviceSampling, LogprobScaleIsOneExceptProcessedWithATemperature) {
  EXPECT_EQ(logprob_scale({.temperature = 0.5f}, LogprobsMode::Processed), 2.0f);
  EXPECT_EQ(logprob_scale({.temperature = 0.0f}, LogprobsMode::Processed), 1.0f);
  EXPECT_EQ(logprob_scale({.temperature = 0.5f}, LogprobsMode::Raw), 1.0f);
}

TEST(DeviceSampling, TheCpuForwardRefusesDeviceRowsAndTheCpuEngineIgnoresTheOption) {
  TempDir dir("device_sampling_test");
  const std::filesystem::path model_dir = synth_tiny(dir);
  auto model = load_model(model_dir);
  const ModelConfig& config = model->config();
  const Shape shape{config.num_hidden_layers, 1, 16, config.num_key_value_heads, config.head_dim};
  const KvCacheTensors kv{Tensor::empty(shape, DType::BF16, Device::CPU),
                          Tensor::empty(shape, DType::BF16, Device::CPU)};
  const std::vector<int32_t> tokens{5, 6, 7}, pages{0};
  const SamplingParams params{};
  const ForwardBatch batch{.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = pages}},
                           .kv_cache = &kv,
                           .device_sampling = {{.sequence = 0, .params = &params, .token_index = 0}}};
  EXPECT_THAT([&] { model->forward(batch); }, ThrowsMessage<Error>(HasSubstr("device sampling was asked of the CPU")));

  auto generate = [&](bool gpu_sampling) {
    Engine engine(load_model(model_dir), {.kv_cache_tokens = 256, .gpu_sampling = gpu_sampling});
    GenerateRequest sampled{.input_ids = {72, 101, 108}, .max_new_tokens = 6, .ignore_eos = true};
    sampled.sampling = {.temperature = 0.8f, .top_p = 0.9f, .seed = 5, .n_top_logprobs = 2};
    GenerateRequest greedy{.input_ids = {108, 111}, .max_new_tokens = 6, .ignore_eos = true};
    greedy.sampling.temperature = 0.0f;
    return engine.generate({sampled, greedy});
  };
  const std::vector<GenerateResult> on = generate(true), off = generate(false);
  for (size_t r = 0; r < on.size(); ++r) {
    EXPECT_EQ(on[r].output_ids, off[r].output_ids);
    ASSERT_EQ(on[r].output_logprobs.size(), off[r].output_logprobs.size());
    for (size_t t = 0; t < on[r].output_logprobs.size(); ++t)
      EXPECT_EQ(std::bit_cast<uint32_t>(on[r].output_logprobs[t]), std::bit_cast<uint32_t>(off[r].output_logprobs[t]));
  }
}

}  // namespace
}  // namespace fp4serve::testing_support
