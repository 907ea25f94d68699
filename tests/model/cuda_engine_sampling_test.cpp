// Sampling on the GPU inside the engine (EngineOptions::gpu_sampling with --device cuda) against the host sampler
// reading the same GPU logits, on the bundled trained model. The forward is deterministic for a given batch, so both
// runs see the same logits: greedy tokens must be equal, seeded draws too unless one falls within rounding of a
// candidate boundary (counted, at most one request), logprobs within 2e-4 (the GPU sums the log-normalizer in a tree
// of fp32 partial sums, the host sequentially or takes the forward's; over 512 tokens either is within a few 1e-5),
// ranks and top-logprob ids equal. Host-only outputs (token_ids_logprob, prompt logprobs) are bitwise the same in
// both. One forward step mixes device- and host-sampled rows (with and without all logits, and a replayed decode
// graph). --deterministic stays batch-invariant with GPU sampling. The CLI's --gpu-sampling on and off agree.
// Skipped without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/engine.h"
#include "kernels/device.h"
#include "support/skip_without_gpu.h"
#include "test_support.h"

namespace fp4serve::testing_support {
namespace {

const std::filesystem::path kBundled = FP4SERVE_SOURCE_DIR "/models/qwen3-moe-arith-b-nvfp4";
constexpr float kLogprobTolerance = 2e-4f;

QuantOptions cuda_options(int64_t cuda_graph_max_batch, bool deterministic = false) {
  return {.act_quant = ActQuant::None,
          .device = Device::CUDA,
          .cuda_graph_max_batch = cuda_graph_max_batch,
          .deterministic = deterministic};
}

// Every sampler path, served together: greedy (with and without top logprobs), seeded temperature, top-k, top-p,
// min-p and all three; request 7 asks for token_ids_logprob (sampled on the host), request 8 for prompt logprobs
// (its prefill steps return every row's logits).
std::vector<GenerateRequest> mixed_requests(int64_t vocab) {
  const std::vector<SamplingParams> sampling{
      {.temperature = 0.0f},
      {.temperature = 0.0f, .n_top_logprobs = 4},
      {.temperature = 0.8f, .seed = 11},
      {.temperature = 1.0f, .top_k = 20, .seed = 12},
      {.temperature = 0.7f, .top_p = 0.9f, .seed = 13, .n_top_logprobs = 3},
      {.temperature = 1.2f, .min_p = 0.05f, .seed = 14},
      {.temperature = 0.9f, .top_k = 40, .top_p = 0.8f, .min_p = 0.02f, .seed = 15, .n_top_logprobs = 5},
      {.temperature = 0.8f, .seed = 16, .token_ids_logprob = {1, 2, 3}},
      {.temperature = 1.0f, .top_p = 0.95f, .seed = 17},
  };
  std::vector<GenerateRequest> requests;
  for (size_t r = 0; r < sampling.size(); ++r) {
    GenerateRequest request{.sampling = sampling[r], .max_new_tokens = 20, .ignore_eos = true};
    for (size_t i = 0; i < 12 + 5 * r; ++i)
      request.input_ids.push_back(static_cast<int32_t>((i * 29 + r * 7 + 3) % static_cast<size_t>(vocab)));
    requests.push_back(std::move(request));
  }
  requests[8].logprob_start_len = 2;
  return requests;
}

struct Generation {
  std::vector<GenerateResult> results;
  size_t workspace_bytes = 0;
};

// Chunked prefill of 32 tokens: later steps mix decodes with prompt chunks.
Generation generate(bool gpu_sampling, LogprobsMode mode) {
  Engine engine(load_model(kBundled, cuda_options(16)),
                {.kv_cache_tokens = 4096,
                 .scheduler = {.max_prefill_tokens = 32, .chunked_prefill_size = 32},
                 .logprobs_mode = mode,
                 .gpu_sampling = gpu_sampling});
  Generation generation;
  generation.results = engine.generate(mixed_requests(engine.model().config().vocab_size));
  generation.workspace_bytes = engine.model().device_workspace_bytes();
  return generation;
}

int64_t bundled_vocab() { return load_model_config(kBundled).vocab_size; }

bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }
bool near(float a, float b) { return a == b || std::fabs(a - b) <= kLogprobTolerance; }

TEST(CudaEngineSampling, GpuSampledGenerationsEqualHostSampledOnes) {
  FP4_SKIP_WITHOUT_GPU();
  for (const LogprobsMode mode : {LogprobsMode::Processed, LogprobsMode::Raw}) {
    const std::string label = mode == LogprobsMode::Processed ? "processed" : "raw";
    const Generation on = generate(true, mode), off = generate(false, mode);
    const std::vector<GenerateRequest> requests = mixed_requests(bundled_vocab());
    ASSERT_EQ(on.results.size(), off.results.size());
    int64_t diverged = 0, compared = 0;
    float worst = 0.0f;
    for (size_t r = 0; r < on.results.size(); ++r) {
      const GenerateResult &gpu = on.results[r], &host = off.results[r];
      const std::string where = label + ", request " + std::to_string(r);
      if (requests[r].sampling.is_greedy()) {
        EXPECT_EQ(gpu.output_ids, host.output_ids) << where;
      }
      if (gpu.output_ids != host.output_ids) ++diverged;
      for (size_t t = 0; t < gpu.output_ids.size() && t < host.output_ids.size(); ++t) {
        if (gpu.output_ids[t] != host.output_ids[t]) break;
        ++compared;
        worst = std::max(worst, std::fabs(gpu.output_logprobs[t] - host.output_logprobs[t]));
        EXPECT_TRUE(near(gpu.output_logprobs[t], host.output_logprobs[t]))
            << where << ", token " << t << ": " << gpu.output_logprobs[t] << " vs " << host.output_logprobs[t];
        if (t < host.output_top_logprobs.size()) {
          ASSERT_EQ(gpu.output_top_logprobs[t].size(), host.output_top_logprobs[t].size()) << where;
          for (size_t i = 0; i < host.output_top_logprobs[t].size(); ++i) {
            EXPECT_EQ(gpu.output_top_logprobs[t][i].first, host.output_top_logprobs[t][i].first) << where;
            EXPECT_TRUE(near(gpu.output_top_logprobs[t][i].second, host.output_top_logprobs[t][i].second)) << where;
          }
        }
      }
      // Host-sampled in both runs (token_ids_logprob) and prompt logprobs: the same arithmetic on the same logits.
      if (r == 7) {
        EXPECT_EQ(gpu.output_ids, host.output_ids) << where;
        EXPECT_EQ(gpu.output_logprobs, host.output_logprobs) << where;
        EXPECT_EQ(gpu.output_ids_logprobs, host.output_ids_logprobs) << where;
      }
      ASSERT_EQ(gpu.input_logprobs.size(), host.input_logprobs.size()) << where;
      for (size_t p = 0; p < host.input_logprobs.size(); ++p) {
        EXPECT_TRUE(same_bits(gpu.input_logprobs[p].logprob, host.input_logprobs[p].logprob)) << where;
        EXPECT_EQ(gpu.input_logprobs[p].rank, host.input_logprobs[p].rank) << where;
      }
    }
    EXPECT_FALSE(on.results[8].input_logprobs.empty());
    std::printf(
        "[ measured ] %s: %lld of %zu requests diverge (a draw at a boundary); %lld tokens compared, max "
        "|logprob gpu - host| %.3g\n",
        label.c_str(), static_cast<long long>(diverged), on.results.size(), static_cast<long long>(compared),
        static_cast<double>(worst));
    EXPECT_LE(diverged, 1) << label;
    EXPECT_GT(compared, 150) << label;
    // The sampler's buffers (sort keys and ids for 16 rows, 24 bytes per token) come on top of the forward's.
    EXPECT_GT(off.workspace_bytes, 0u);
    EXPECT_GE(on.workspace_bytes, off.workspace_bytes + 16 * static_cast<size_t>(bundled_vocab()) * 24) << label;
  }
}

// A KV cache of pages of 16 tokens on the GPU.
KvCacheTensors gpu_kv_cache(const ModelConfig& config, int64_t n_pages) {
  const Shape shape{config.num_hidden_layers, n_pages, 16, config.num_key_value_heads, config.head_dim};
  return {Tensor::empty(shape, DType::BF16, Device::CUDA), Tensor::empty(shape, DType::BF16, Device::CUDA)};
}

// Sequences 0 and 2 of four sampled on the device, 1 and 3 returned as logits, on every kind of step: a prefill with
// only the last rows' logits, one with every row's (prompt logprobs), then decodes that capture and replay a graph.
// A second model runs the same steps without device sampling: its logits rows must equal the returned ones bitwise,
// and the CPU sampler on its rows 0 and 2 gives the device's tokens.
TEST(CudaEngineSampling, OneStepMixesDeviceAndHostSampledRows) {
  FP4_SKIP_WITHOUT_GPU();
  auto mixed = load_model(kBundled, cuda_options(8)), host = load_model(kBundled, cuda_options(8));
  const ModelConfig& config = mixed->config();
  const int64_t V = config.vocab_size;
  const std::vector<SamplingParams> params{{.temperature = 0.0f, .n_top_logprobs = 3},
                                           {.temperature = 0.8f, .seed = 1},
                                           {.temperature = 0.9f, .top_k = 30, .top_p = 0.9f, .seed = 2},
                                           {.temperature = 0.0f}};
  for (const bool all_logits : {false, true}) {
    SCOPED_TRACE(all_logits ? "all logits" : "last logits");
    const KvCacheTensors mixed_kv = gpu_kv_cache(config, 8), host_kv = gpu_kv_cache(config, 8);
    std::vector<std::vector<int32_t>> tokens(4), pages(4);
    for (int s = 0; s < 4; ++s) {
      for (int i = 0; i < 6 + 4 * s; ++i) tokens[s].push_back(static_cast<int32_t>((i * 17 + s * 31 + 2) % V));
      pages[s] = {2 * s, 2 * s + 1};
    }
    for (int step = 0; step < 4; ++step) {  // a prefill, then three decodes (capture, replay, replay)
      ForwardBatch batch{.kv_cache = &mixed_kv, .all_logits = all_logits && step == 0};
      for (int s = 0; s < 4; ++s) {
        const std::span<const int32_t> all(tokens[s]);
        const int64_t start = step == 0 ? 0 : static_cast<int64_t>(tokens[s].size()) - 1;
        batch.sequences.push_back(
            {.token_ids = all.subspan(static_cast<size_t>(start)), .start_position = start, .page_table = pages[s]});
      }
      ForwardBatch plain = batch;
      plain.kv_cache = &host_kv;
      batch.device_sampling = {{.sequence = 0, .params = &params[0], .token_index = step},
                               {.sequence = 2, .params = &params[2], .token_index = step}};
      batch.logprobs_mode = LogprobsMode::Processed;
      const ForwardOutput got = mixed->forward(batch), want = host->forward(plain);
      ASSERT_EQ(got.last_logits.shape, (Shape{2, V}));
      ASSERT_EQ(got.device_sampled.size(), 2u);
      for (const auto& [returned, full] : {std::pair{0, 1}, std::pair{1, 3}})
        for (int64_t v = 0; v < V; ++v)
          ASSERT_TRUE(
              same_bits(got.last_logits.data<float>()[returned * V + v], want.last_logits.data<float>()[full * V + v]))
              << "step " << step << ", sequence " << full;
      if (batch.all_logits) {
        ASSERT_EQ(got.all_logits.shape, want.all_logits.shape);
        EXPECT_EQ(0, std::memcmp(got.all_logits.raw(), want.all_logits.raw(), want.all_logits.nbytes()));
      }
      for (const auto& [result, sequence] : {std::pair{0, 0}, std::pair{1, 2}}) {
        const std::span<const float> row(want.last_logits.data<float>() + sequence * V, static_cast<size_t>(V));
        const SamplingParams& p = params[static_cast<size_t>(sequence)];
        const int32_t token = sample_token(row, p, step);
        const PositionLogprobs expected = position_logprobs(row, token, p, LogprobsMode::Processed);
        const SampledToken& sampled = got.device_sampled[static_cast<size_t>(result)];
        EXPECT_EQ(sampled.token, token) << "step " << step << ", sequence " << sequence;
        EXPECT_EQ(sampled.logprobs.rank, expected.rank);
        EXPECT_TRUE(near(sampled.logprobs.logprob, expected.logprob));
        ASSERT_EQ(sampled.logprobs.top.size(), expected.top.size());
        for (size_t i = 0; i < expected.top.size(); ++i)
          EXPECT_EQ(sampled.logprobs.top[i].first, expected.top[i].first);
      }
      for (int s = 0; s < 4; ++s)  // both models feed the same next tokens
        tokens[s].push_back(static_cast<int32_t>((s * 5 + step) % V));
    }
  }
  EXPECT_GT(mixed->cuda_graph_stats().replays, 0) << "the decode steps should replay a captured graph";
}

TEST(CudaEngineSampling, RefusesRowsTheGpuSamplerDoesNotServe) {
  FP4_SKIP_WITHOUT_GPU();
  auto model = load_model(kBundled, cuda_options(0));
  const KvCacheTensors kv = gpu_kv_cache(model->config(), 2);
  const std::vector<int32_t> tokens{5, 6, 7}, pages{0};
  const SamplingParams with_ids{.token_ids_logprob = {1}}, plain{};
  ForwardBatch batch{.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = pages}}, .kv_cache = &kv};
  batch.device_sampling = {{.sequence = 0, .params = &with_ids, .token_index = 0}};
  auto expect_refused = [&](const std::string& needle) {
    try {
      model->forward(batch);
      ADD_FAILURE() << "accepted; expected an error mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_refused("token_ids_logprob");
  batch.device_sampling = {{.sequence = 1, .params = &plain, .token_index = 0}};
  expect_refused("below the batch's 1 sequences");
}

// --deterministic with GPU sampling: each request alone equals itself served in the mixed batch, bit for bit.
TEST(CudaEngineSampling, DeterministicRequestsAreBitwiseAloneAndInABatch) {
  FP4_SKIP_WITHOUT_GPU();
  auto engine_of = [] {
    return Engine(load_model(kBundled, cuda_options(16, /*deterministic=*/true)),
                  {.kv_cache_tokens = 4096, .scheduler = {.max_prefill_tokens = 32, .chunked_prefill_size = 32}});
  };
  Engine batched = engine_of();
  const std::vector<GenerateRequest> requests = mixed_requests(batched.model().config().vocab_size);
  const std::vector<GenerateResult> together = batched.generate(requests);
  Engine alone = engine_of();
  for (size_t r = 0; r < requests.size(); ++r) {
    const GenerateResult single = alone.generate({requests[r]})[0];
    EXPECT_EQ(together[r].output_ids, single.output_ids) << "request " << r;
    ASSERT_EQ(together[r].output_logprobs.size(), single.output_logprobs.size());
    for (size_t t = 0; t < single.output_logprobs.size(); ++t)
      EXPECT_TRUE(same_bits(together[r].output_logprobs[t], single.output_logprobs[t])) << "request " << r;
    ASSERT_EQ(together[r].output_top_logprobs.size(), single.output_top_logprobs.size());
    for (size_t t = 0; t < single.output_top_logprobs.size(); ++t)
      for (size_t i = 0; i < single.output_top_logprobs[t].size(); ++i)
        EXPECT_TRUE(same_bits(together[r].output_top_logprobs[t][i].second, single.output_top_logprobs[t][i].second))
            << "request " << r;
  }
}

// Through the CLI: `generate --device cuda` with seeded top-p sampling gives the same tokens with --gpu-sampling on and
// off, and logprobs within the tolerance.
TEST(CudaEngineSamplingCli, GenerateWithGpuSamplingOnEqualsOff) {
  FP4_SKIP_WITHOUT_GPU();
  const std::string common = fmt::format(
      "generate --model-path '{}' --device cuda --act-quant none --input-ids 3,14,15,92,65,35,89,79 "
      "--max-new-tokens 20 --temperature 0.8 --top-p 0.9 --seed 3 --json",
      kBundled.string());
  const CommandResult on = run_fp4serve(common + " --gpu-sampling on");
  const CommandResult off = run_fp4serve(common + " --gpu-sampling off");
  ASSERT_EQ(on.exit_code, 0) << on.output;
  ASSERT_EQ(off.exit_code, 0) << off.output;
  const nlohmann::json gpu = nlohmann::json::parse(on.output), host = nlohmann::json::parse(off.output);
  EXPECT_EQ(gpu.at("output_ids"), host.at("output_ids")) << on.output << "\nvs host sampling\n" << off.output;
  EXPECT_FALSE(gpu.at("output_ids").empty());
  const nlohmann::json &gpu_logprobs = gpu.at("output_token_logprobs"), &host_logprobs = host.at("output_token_logprobs");
  ASSERT_EQ(gpu_logprobs.size(), host_logprobs.size());
  for (size_t t = 0; t < host_logprobs.size(); ++t)
    EXPECT_TRUE(near(gpu_logprobs[t][0].get<float>(), host_logprobs[t][0].get<float>())) << "token " << t;
}

}  // namespace
}  // namespace fp4serve::testing_support
