// The batch-invariance check of --deterministic (README "Deterministic inference"), shared by the CPU test
// (tests/engine/deterministic_test.cpp) and the GPU one (tests/model/cuda_deterministic_test.cpp): 200 small requests
// on the bundled trained model, each run alone (batch of one, no prefix cache, unchunked prefill) and then served
// together at random arrival times, batch sizes, chunk sizes and KV cache sizes (so prefix-cache hits and preemptions
// happen), and again after reloading the same checkpoint. Tokens, logprobs (output, top, prompt) and the recorded
// routing must be bitwise those of the single run. The sessions count what they provoked, so the check fails if a
// configuration stops exercising a case.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/weight_updater.h"
#include "io/model_config.h"
#include "io/quant_config.h"

namespace fp4serve::test::batch_invariance {

constexpr int kRequests = 200;
constexpr int32_t kVocab = 512;  // qwen3-moe-arith-b-nvfp4

inline std::filesystem::path model_dir() { return FP4SERVE_SOURCE_DIR "/models/qwen3-moe-arith-b-nvfp4"; }

struct ServedModel {
  std::unique_ptr<Qwen3Model> model;
  std::unique_ptr<WeightUpdater> updater;  // refers to *model, which the engine keeps alive
};

inline ServedModel load(const QuantOptions& options) {
  const ModelConfig config = load_model_config(model_dir());
  ServedModel served;
  served.model = std::make_unique<Qwen3Model>(config, load_quant_config(model_dir()), options);
  served.updater = std::make_unique<WeightUpdater>(*served.model, config);
  served.updater->load(model_dir());
  return served;
}

// Prompts start with one of a few shared prefixes (several whole pages of 4 tokens) or are random; every 50th is
// longer than one split of the GPU's decode attention (kDecodeSplitTokens, 256). Sampling, lengths, stop conditions
// and logprob requests (top, token ids, prompt) vary per request.
inline std::vector<GenerateRequest> make_requests(uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&rng](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto random_tokens = [&](int64_t n) {
    std::vector<int32_t> tokens;
    for (int64_t i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>(uniform(3, kVocab - 1)));
    return tokens;
  };
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 5; ++i) prefixes.push_back(random_tokens(uniform(8, 20)));

  std::vector<GenerateRequest> requests;
  for (int i = 0; i < kRequests; ++i) {
    GenerateRequest r;
    if (uniform(0, 9) < 7) r.input_ids = prefixes[static_cast<size_t>(uniform(0, 4))];
    const std::vector<int32_t> tail =
        random_tokens(i % 50 == 12 ? uniform(257, 270) : uniform(r.input_ids.empty() ? 2 : 1, 8));
    r.input_ids.insert(r.input_ids.end(), tail.begin(), tail.end());
    r.max_new_tokens = uniform(1, 5);
    r.ignore_eos = i % 2 == 0;
    if (i % 7 == 3) r.stop_token_ids = {static_cast<int32_t>(uniform(3, kVocab - 1))};
    if (i % 3 != 0) {  // a third greedy, the rest sampled with their own seed
      r.sampling.temperature = static_cast<float>(uniform(5, 13)) / 10.0f;
      r.sampling.top_p = i % 2 == 0 ? 1.0f : 0.9f;
      r.sampling.top_k = i % 5 == 1 ? 20 : -1;
      r.sampling.seed = static_cast<uint64_t>(1000 + i);
    } else {
      r.sampling.temperature = 0.0f;
    }
    if (i % 4 == 0) r.sampling.n_top_logprobs = 3;
    // With --device cuda these are sampled on the host, the others on the GPU: steps mix both.
    if (i % 6 == 1) r.sampling.token_ids_logprob = {3, static_cast<int32_t>(4 + i)};
    if (i % 5 == 0) r.logprob_start_len = uniform(0, static_cast<int64_t>(r.input_ids.size()) - 1);
    r.return_routed_experts = true;
    requests.push_back(std::move(r));
  }
  return requests;
}

inline bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

inline bool same_bits(const TokenLogprobs& a, const TokenLogprobs& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](const auto& x, const auto& y) {
           return x.first == y.first && same_bits(x.second, y.second);
         });
}

// Everything a result reports that the forward pass computes, compared bit for bit; the first difference named.
inline std::string first_difference(const GenerateResult& got, const GenerateResult& want) {
  if (got.output_ids != want.output_ids) return "output ids";
  if (got.finish_reason != want.finish_reason || got.matched_stop_token != want.matched_stop_token)
    return "finish reason";
  for (size_t i = 0; i < want.output_logprobs.size(); ++i)
    if (!same_bits(got.output_logprobs[i], want.output_logprobs[i])) return fmt::format("output logprob {}", i);
  if (got.output_top_logprobs.size() != want.output_top_logprobs.size()) return "number of top logprobs";
  for (size_t i = 0; i < want.output_top_logprobs.size(); ++i)
    if (!same_bits(got.output_top_logprobs[i], want.output_top_logprobs[i])) return fmt::format("top logprobs {}", i);
  if (got.output_ids_logprobs.size() != want.output_ids_logprobs.size()) return "number of token_ids logprobs";
  for (size_t i = 0; i < want.output_ids_logprobs.size(); ++i)
    if (!same_bits(got.output_ids_logprobs[i], want.output_ids_logprobs[i]))
      return fmt::format("token_ids logprobs {}", i);
  if (got.input_logprobs.size() != want.input_logprobs.size()) return "number of prompt logprobs";
  for (size_t i = 0; i < want.input_logprobs.size(); ++i) {
    const PositionLogprobs &g = got.input_logprobs[i], &w = want.input_logprobs[i];
    if (!same_bits(g.logprob, w.logprob) || g.rank != w.rank || !same_bits(g.top, w.top))
      return fmt::format("prompt logprob {}", i);
  }
  if (got.routed_experts != want.routed_experts) return "routed experts";
  return "";
}

// Sets the OpenMP thread count of this thread's parallel regions while it lives: 1 for the runs of many small steps
// (a region per kernel call is mostly wake-up cost, badly so when tests share the cores), the default count where
// batches are large, so that the thread count is among what varies.
class OmpThreads {
 public:
  explicit OmpThreads(int threads) : previous_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~OmpThreads() { omp_set_num_threads(previous_); }
  OmpThreads(const OmpThreads&) = delete;
  OmpThreads& operator=(const OmpThreads&) = delete;

 private:
  int previous_;
};

// One single-request run per request: the reference.
inline std::vector<GenerateResult> run_alone(const QuantOptions& options,
                                            const std::vector<GenerateRequest>& requests) {
  Engine engine(load(options).model, {.kv_cache_tokens = 512,
                                      .page_size = 4,
                                      .scheduler = {.max_running_sequences = 1, .chunked_prefill_size = -1},
                                      .enable_prefix_cache = false,
                                      .record_routed_experts = true});
  const OmpThreads one_thread(1);
  std::vector<GenerateResult> results;
  for (const GenerateRequest& request : requests) results.push_back(engine.generate({request})[0]);
  return results;
}

struct SessionConfig {
  int64_t kv_cache_tokens;
  int64_t max_running;
  int64_t max_prefill_tokens;
  int64_t chunked_prefill_size;  // -1: off
  int64_t max_arrivals;          // requests arriving before a step: uniform in [0, max_arrivals]
  bool all_threads = false;      // the default OpenMP thread count (else 1)
};

struct SessionCounts {
  int64_t max_batch = 0, cached_tokens = 0, preemptions = 0, steps = 0;
};

// Serves every request once in a random order, arrivals interleaved with steps; results by request index.
inline std::vector<GenerateResult> serve(Engine& engine, const std::vector<GenerateRequest>& requests,
                                         const SessionConfig& config, std::mt19937& rng, SessionCounts& counts) {
  std::vector<size_t> order(requests.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::deque<size_t> pending(order.begin(), order.end());
  std::map<int64_t, size_t> index_of;  // engine request id -> request index
  std::vector<GenerateResult> results(requests.size());
  const int64_t preemptions_before = engine.scheduler().n_preemptions();
  while (!pending.empty() || engine.has_unfinished()) {
    int64_t arrivals = std::uniform_int_distribution<int64_t>(0, config.max_arrivals)(rng);
    if (!engine.has_unfinished()) arrivals = std::max<int64_t>(arrivals, 1);
    for (; arrivals > 0 && !pending.empty(); --arrivals) {
      index_of[engine.add_request(requests[pending.front()])] = pending.front();
      pending.pop_front();
    }
    for (const StepOutput& out : engine.step())
      if (out.finished) {
        GenerateResult result = engine.take_result(out.request_id);
        counts.cached_tokens += result.cached_tokens;
        results[index_of.at(out.request_id)] = std::move(result);
      }
    counts.max_batch = std::max<int64_t>(counts.max_batch, static_cast<int64_t>(engine.scheduler().running().size()));
    ++counts.steps;
  }
  counts.preemptions += engine.scheduler().n_preemptions() - preemptions_before;
  return results;
}

// The number of requests whose result differs from their single run; the first few are reported as failures when
// `report` is set.
inline int count_differences(const std::vector<GenerateResult>& got, const std::vector<GenerateResult>& alone,
                             const std::vector<GenerateRequest>& requests, const std::string& session, bool report) {
  int differences = 0;
  for (size_t i = 0; i < alone.size(); ++i) {
    const std::string difference = first_difference(got[i], alone[i]);
    if (difference.empty()) continue;
    ++differences;
    if (report && differences <= 5)
      ADD_FAILURE() << session << ": request " << i << " (" << requests[i].input_ids.size() << " prompt tokens): "
                    << difference << " differ from its single run";
  }
  return differences;
}

// Session configurations. A chunked step feeds at most chunked_prefill_size prompt tokens in all (the budget), so
// only unchunked sessions with a large budget admit big bursts at once.
inline constexpr SessionConfig kLargeBatches{.kv_cache_tokens = 2048, .max_running = 64, .max_prefill_tokens = 1024,
                                             .chunked_prefill_size = -1, .max_arrivals = 64, .all_threads = true};
inline constexpr SessionConfig kTinyChunks{.kv_cache_tokens = 2048, .max_running = 16, .max_prefill_tokens = 40,
                                           .chunked_prefill_size = 3, .max_arrivals = 6};  // under a page, unaligned
inline constexpr SessionConfig kPageChunks{.kv_cache_tokens = 1024, .max_running = 48, .max_prefill_tokens = 64,
                                           .chunked_prefill_size = 16, .max_arrivals = 12};  // whole pages
// Too few pages for the sequences it admits: decodes preempt (and re-prefill) the latest admitted ones.
inline constexpr SessionConfig kPreempting{.kv_cache_tokens = 296, .max_running = 64, .max_prefill_tokens = 512,
                                           .chunked_prefill_size = -1, .max_arrivals = 64};

// Runs the requests alone (the reference), then in each session, then once more in the last session's engine after
// a same-checkpoint reload, the model built by `options`. Returns the number of served results that differ from
// their single run; with `expect_invariant` each is a test failure, and the sessions must have provoked batches of 32
// or more, prefix-cache hits and preemptions.
inline int check_sessions(const QuantOptions& options, const std::vector<SessionConfig>& sessions,
                          bool expect_invariant) {
  const std::vector<GenerateRequest> requests = make_requests(2026);
  const std::vector<GenerateResult> alone = run_alone(options, requests);
  std::mt19937 rng(77);
  SessionCounts counts;
  int differences = 0;
  for (size_t c = 0; c < sessions.size(); ++c) {
    const SessionConfig& config = sessions[c];
    const OmpThreads threads(config.all_threads ? omp_get_max_threads() : 1);
    ServedModel served = load(options);
    WeightUpdater& updater = *served.updater;
    Engine engine(std::move(served.model),
                  {.kv_cache_tokens = config.kv_cache_tokens,
                   .page_size = 4,
                   .scheduler = {.max_running_sequences = config.max_running,
                                 .max_prefill_tokens = config.max_prefill_tokens,
                                 .chunked_prefill_size = config.chunked_prefill_size},
                   .enable_prefix_cache = true,
                   .record_routed_experts = true});
    differences += count_differences(serve(engine, requests, config, rng, counts), alone, requests,
                                     fmt::format("session {}", c), expect_invariant);
    if (c + 1 < sessions.size()) continue;
    // The same checkpoint reloaded in place; its cached prefixes stay (they were computed with the same weights).
    updater.load(model_dir());
    differences += count_differences(serve(engine, requests, config, rng, counts), alone, requests,
                                     fmt::format("session {} after a reload", c), expect_invariant);
  }
  if (expect_invariant) {
    EXPECT_EQ(differences, 0);
    EXPECT_GE(counts.max_batch, 32) << "no session ran a large batch";
    EXPECT_GT(counts.cached_tokens, 1000) << "too few prefix-cache hits";
    EXPECT_GT(counts.preemptions, 0) << "no session preempted a request";
  }
  return differences;
}

}  // namespace fp4serve::test::batch_invariance
