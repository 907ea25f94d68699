// The generation engine: owns the model and its KV cache and runs requests as one continuously batched loop
// (scheduler.h decides each step: decodes plus prefill chunks). A sequence samples only once its prefill is
// complete; prompt logprobs come from the logits of the positions they need, which are always computed (never taken
// from the prefix cache). With the prefix cache on, every computed whole page of a prefill chunk and of a finished
// sequence is offered to the cache for later requests. Requests leave the
// batch when they reach max_new_tokens (checked first, as SGLang does), an EOS token (unless ignore_eos) or one of
// their stop tokens; the token that stopped them is part of the output. The prefix cache is keyed by the weight
// version, and a sequence's KV is offered to it only while the weights it was computed with still serve. Each output
// token is labelled with the weight version that produced it (weight_version_spans). With record_routed_experts,
// every computed KV slot keeps its MoE routing (routing_table.h), returned on request (routing replay).
// Not thread-safe: one thread (the server's engine thread) drives it.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/prefix_cache.h"
#include "engine/routing_table.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "model/qwen3_model.h"

namespace fp4serve {

// What releasing the weights' memory does with their bytes (serve --weights-release-mode).
enum class WeightsReleaseMode {
  Offload,  // copied to host memory (pinned for CUDA) and copied back on resume: bitwise the same model
  Discard,  // dropped: the next step is a reload, so the model refuses to run until one succeeds
};

struct EngineOptions {
  int64_t kv_cache_tokens = 32768;  // KV cache size in tokens (rounded up to whole pages)
  int64_t page_size = 16;
  SchedulerOptions scheduler{};
  std::vector<int32_t> eos_token_ids{};  // e.g. from config.json; empty = none
  std::string weight_version = "default";
  bool enable_prefix_cache = true;  // reuse the KV pages of earlier prompts' common prefixes
  bool record_routed_experts = false;  // keep every KV slot's routing (MoE models), for return_routed_experts
  LogprobsMode logprobs_mode = LogprobsMode::Processed;  // what every reported logprob is of (sampler.h)
  // With the model on cuda: sample on the GPU (device_sampling_rows) instead of copying every logits row to the host.
  bool gpu_sampling = true;
};

struct GenerateResult {
  int64_t request_id = 0;
  std::vector<int32_t> output_ids;
  std::vector<float> output_logprobs;              // at each output token, in EngineOptions::logprobs_mode
  std::vector<TokenLogprobs> output_top_logprobs;  // when sampling.n_top_logprobs > 0
  std::vector<TokenLogprobs> output_ids_logprobs;  // when sampling.token_ids_logprob is not empty
  std::vector<PositionLogprobs> input_logprobs;    // of prompt tokens logprob_start_len + 1 on (sequence.h)
  FinishReason finish_reason = FinishReason::Length;
  std::optional<int32_t> matched_stop_token;  // the EOS or stop token that finished it
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;   // prompt tokens whose KV came from the prefix cache instead of a prefill
  std::string weight_version;  // the engine's version when the result was taken
  std::vector<WeightVersionSpan> weight_version_spans;  // over output_ids; empty without output
  // With request.return_routed_experts: int32 [n_tokens - 1 - routed_experts_start_len, num_hidden_layers,
  // num_experts_per_tok] (n_tokens = prompt + output); empty when the request ended without its KV (aborted while
  // waiting or retracted).
  std::vector<int32_t> routed_experts;
};

// What one step produced for a sequence that completed its prefill or decoded (for streaming).
struct StepOutput {
  int64_t request_id;
  std::optional<int32_t> token;  // none when it ended right after its prompt (max_new_tokens 0, prompt logprobs)
  PositionLogprobs logprobs;     // of `token`
  std::vector<PositionLogprobs> input_logprobs;  // on its first completed prefill, when it asked for them
  bool finished;
};

// Whether a scheduled chunk samples its sequence's next token this step: it completes the prefill (or decodes) and the
// request still generates.
bool samples_next_token(const ScheduledChunk& chunk);

// Where each sampled token of a step comes from when the model runs on cuda with gpu_sampling: the chunks that sample
// (samples_next_token) and whose request the GPU sampler serves (can_sample_on_device: all but token_ids_logprob)
// are sampled on the device; the others, and every row of a step that also computes prompt logprobs, have their
// logits copied to the host, where the CPU sampler reads them. The choice depends on each request alone, never on the
// rest of the batch, so --deterministic keeps a request's tokens and logprobs independent of its batch.
std::vector<DeviceSamplingRow> device_sampling_rows(std::span<const ScheduledChunk> chunks);

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
  // Whether a request has ended (max_new_tokens 0 without prompt logprobs ends at add_request); throws if unknown.
  bool is_finished(int64_t request_id) const;
  // One forward pass over the scheduled batch (none when idle); returns the sequences that sampled or ended in it.
  std::vector<StepOutput> step();
  int64_t n_steps() const { return n_steps_; }  // forward passes run so far
  // The result of a finished request (once); throws if it is unknown or still running.
  GenerateResult take_result(int64_t request_id);

  // Every running sequence back to the waiting queue, its KV freed (its computed whole pages offered to the prefix
  // cache first), to be prefilled again when it is scheduled (pause_generation "retract").
  void retract_all();

  // Drops every cached prefix (after a weight update the cached KV no longer matches the weights).
  void flush_prefix_cache();
  int64_t n_prefix_cached_pages() const { return prefix_cache_ ? prefix_cache_->n_cached_pages() : 0; }

  // Memory release for a trainer colocated on the device (/release_memory_occupation): the physical memory of the
  // weights or of the KV cache goes back to the OS or the driver, and resume re-creates it at the same addresses
  // (pointers into it, captured CUDA graphs included, stay valid). Only while no request is queued or running:
  // throws otherwise. Releasing the KV cache flushes the prefix cache; resuming it gives zeroed pages. Releasing
  // twice, or resuming what is not released, does nothing. step() refuses while either is released.
  void release_weights(WeightsReleaseMode mode);
  void resume_weights();
  void release_kv_cache();
  void resume_kv_cache();
  bool weights_released() const { return model_->weights_memory().released(); }
  bool kv_cache_released() const { return kv_cache_.memory().released(); }

  const std::string& weight_version() const { return weight_version_; }
  // Labels the weights from now on: later output tokens carry it, and the prefix cache switches to its namespace.
  void set_weight_version(std::string version);
  Qwen3Model& model() { return *model_; }
  const KvCache& kv_cache() const { return kv_cache_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  int64_t queue_request(GenerateRequest request);
  bool is_stop_token(const Sequence& seq, int32_t token) const;
  void offer_to_prefix_cache(const Sequence& seq);
  void end_sequence(Sequence& seq);  // keeps what the result needs from its KV, then frees it
  void check_idle_for_release(std::string_view what) const;
  // The observer that records each row's routing at the KV slot of its position (null without a routing table).
  std::optional<ForwardObserver> routing_recorder(const ForwardBatch& batch, std::vector<int64_t>& row_slots);
  // The prompt logprobs a chunk's rows give (its rows start at first_row of output.all_logits).
  void record_input_logprobs(Sequence& seq, const ScheduledChunk& chunk, const ForwardOutput& output,
                             int64_t first_row) const;
  // Row `row`'s raw log-normalizer where the forward computed them (GPU), else none.
  static std::optional<float> normalizer_of(const std::vector<float>& normalizers, int64_t row);
  // The next token of `seq` and its logprobs from its logits row; reads only `seq` (safe in parallel).
  SampledToken choose_next(const Sequence& seq, std::span<const float> logits,
                           std::optional<float> raw_log_normalizer) const;
  // Appends the token to `seq` (tokens, logprobs, weight-version spans) and to the step's output.
  void append_sampled(Sequence& seq, const SampledToken& sampled, StepOutput& out) const;

  std::unique_ptr<Qwen3Model> model_;
  EngineOptions options_;
  KvCache kv_cache_;
  std::unique_ptr<PrefixCache> prefix_cache_;  // null when disabled
  std::optional<RoutingTable> routing_;         // with record_routed_experts
  Scheduler scheduler_;
  std::map<int64_t, std::unique_ptr<Sequence>> sequences_;  // queued, running and finished-but-not-taken
  int64_t next_request_id_ = 0;
  int64_t n_steps_ = 0;
  std::string weight_version_;
};

}  // namespace fp4serve
