// The generation engine: owns the model and its KV cache and runs requests as one continuously batched loop
// (scheduler.h decides each step: prefill, else decode). With the prefix cache on, every computed whole page of a
// prompt (after its prefill) and of a finished sequence is offered to the cache for later requests. Requests leave the
// batch when they reach max_new_tokens (checked first, as SGLang does), an EOS token (unless ignore_eos) or one of
// their stop tokens; the token that stopped them is part of the output. Not thread-safe: one thread (the server's
// engine thread) drives it.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/prefix_cache.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "model/qwen3_model.h"

namespace fp4serve {

struct EngineOptions {
  int64_t kv_cache_tokens = 32768;  // KV cache size in tokens (rounded up to whole pages)
  int64_t page_size = 16;
  SchedulerOptions scheduler{};
  std::vector<int32_t> eos_token_ids{};  // e.g. from config.json; empty = none
  std::string weight_version = "default";
  bool enable_prefix_cache = true;  // reuse the KV pages of earlier prompts' common prefixes
};

struct GenerateResult {
  int64_t request_id = 0;
  std::vector<int32_t> output_ids;
  std::vector<float> output_logprobs;  // log-softmax of the raw logits at each output token
  std::vector<std::vector<std::pair<int32_t, float>>> output_top_logprobs;  // when sampling.n_top_logprobs > 0
  FinishReason finish_reason = FinishReason::Length;
  std::optional<int32_t> matched_stop_token;  // the EOS or stop token that finished it
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;   // prompt tokens whose KV came from the prefix cache instead of a prefill
  std::string weight_version;  // the engine's version when the result was taken
};

// What one step produced for one sequence (for streaming).
struct StepToken {
  int64_t request_id;
  int32_t token;
  float logprob;
  std::vector<std::pair<int32_t, float>> top_logprobs;  // when sampling.n_top_logprobs > 0
  bool finished;
};

class Engine {
 public:
  Engine(std::unique_ptr<Qwen3Model> model, EngineOptions options);

  // Runs the requests to completion (together with any already queued) and returns their results in order.
  // Checks every request before queueing any: a bad one throws naming its index and nothing runs.
  std::vector<GenerateResult> generate(std::vector<GenerateRequest> requests);

  // Step-level API. check_request validates (prompt ids in the vocabulary, lengths within the context and the KV
  // cache, sampling parameters), throwing with `name` in the message; add_request checks and queues.
  void check_request(const GenerateRequest& request, std::string_view name) const;
  int64_t add_request(GenerateRequest request);
  // Ends a queued or running request with finish reason abort (its pages are freed); no-op once it has finished.
  void abort(int64_t request_id);
  bool has_unfinished() const { return scheduler_.has_work(); }
  std::vector<StepToken> step();  // one forward pass over the scheduled batch; empty when idle
  // The result of a finished request (once); throws if it is unknown or still running.
  GenerateResult take_result(int64_t request_id);

  // Drops every cached prefix (after a weight update the cached KV no longer matches the weights).
  void flush_prefix_cache();
  int64_t n_prefix_cached_pages() const { return prefix_cache_ ? prefix_cache_->n_cached_pages() : 0; }

  const std::string& weight_version() const { return weight_version_; }
  void set_weight_version(std::string version) { weight_version_ = std::move(version); }
  Qwen3Model& model() { return *model_; }
  const KvCache& kv_cache() const { return kv_cache_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  int64_t queue_request(GenerateRequest request);
  bool is_stop_token(const Sequence& seq, int32_t token) const;

  std::unique_ptr<Qwen3Model> model_;
  EngineOptions options_;
  KvCache kv_cache_;
  std::unique_ptr<PrefixCache> prefix_cache_;  // null when disabled
  Scheduler scheduler_;
  std::map<int64_t, std::unique_ptr<Sequence>> sequences_;  // queued, running and finished-but-not-taken
  int64_t next_request_id_ = 0;
  std::string weight_version_;
};

}  // namespace fp4serve
