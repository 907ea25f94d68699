#include "engine/engine.h"

#include <algorithm>
#include <exception>

#include "common/error.h"

namespace fp4serve {

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length:
      return "length";
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Abort:
      return "abort";
  }
  return "?";
}

bool samples_next_token(const ScheduledChunk& chunk) {
  const Sequence& seq = *chunk.sequence;
  return chunk.completes_prefill() && seq.n_output_tokens() < seq.request.max_new_tokens;
}

std::vector<DeviceSamplingRow> device_sampling_rows(std::span<const ScheduledChunk> chunks) {
  std::vector<DeviceSamplingRow> rows;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Sequence& seq = *chunks[i].sequence;
    if (samples_next_token(chunks[i]) && can_sample_on_device(seq.request.sampling))
      rows.push_back(
          {.sequence = static_cast<int64_t>(i), .params = &seq.request.sampling, .token_index = seq.n_output_tokens()});
  }
  return rows;
}

namespace {
KvCacheGeometry geometry_of(const ModelConfig& config) {
  return {.n_layers = config.num_hidden_layers, .n_kv_heads = config.num_key_value_heads, .head_dim = config.head_dim};
}
}  // namespace

Engine::Engine(std::unique_ptr<Qwen3Model> model, EngineOptions options)
    : model_(std::move(model)),
      options_(std::move(options)),
      kv_cache_(geometry_of(model_->config()), options_.kv_cache_tokens, options_.page_size, model_->options().device),
      prefix_cache_(options_.enable_prefix_cache
                        ? std::make_unique<PrefixCache>(kv_cache_.pages(), options_.weight_version)
                        : nullptr),
      scheduler_(kv_cache_.pages(), prefix_cache_.get(), options_.scheduler),
      weight_version_(options_.weight_version) {
  if (options_.record_routed_experts) {
    const ModelConfig& config = model_->config();
    FP4_CHECK(config.num_experts > 0, "record_routed_experts (serve --enable-return-routed-experts): the model has "
              "no experts, so there is no routing to record; leave it off for a dense model");
    routing_.emplace(kv_cache_.pages().n_pages(), kv_cache_.pages().page_size(), config.num_hidden_layers,
                     config.num_experts_per_tok);
  }
}

void Engine::check_request(const GenerateRequest& request, std::string_view name) const {
  const ModelConfig& config = model_->config();
  request.sampling.validate(name);
  FP4_CHECK(!request.input_ids.empty(), "{}: the prompt is empty; send at least one token", name);
  for (size_t i = 0; i < request.input_ids.size(); ++i)
    FP4_CHECK(request.input_ids[i] >= 0 && request.input_ids[i] < config.vocab_size,
              "{}: input id {} at position {} is outside the vocabulary [0, {})", name, request.input_ids[i], i,
              config.vocab_size);
  for (int32_t id : request.sampling.token_ids_logprob)
    FP4_CHECK(id >= 0 && id < config.vocab_size, "{}: token_ids_logprob id {} is outside the vocabulary [0, {})", name,
              id, config.vocab_size);
  FP4_CHECK(
      request.logprob_start_len >= -1 && request.logprob_start_len < static_cast<int64_t>(request.input_ids.size()),
      "{}: logprob_start_len {} must be -1 (no prompt logprobs) or below the number of prompt tokens ({})", name,
      request.logprob_start_len, request.input_ids.size());
  FP4_CHECK(request.max_new_tokens >= 0, "{}: max_new_tokens {} must be >= 0", name, request.max_new_tokens);
  const int64_t total = static_cast<int64_t>(request.input_ids.size()) + request.max_new_tokens;
  FP4_CHECK(total <= config.max_position_embeddings,
            "{}: {} prompt tokens + max_new_tokens {} exceed the model's context of {} tokens", name,
            request.input_ids.size(), request.max_new_tokens, config.max_position_embeddings);
  FP4_CHECK(total <= kv_cache_.token_capacity(),
            "{}: {} prompt tokens + max_new_tokens {} exceed the KV cache of {} tokens; lower max_new_tokens or "
            "enlarge the cache",
            name, request.input_ids.size(), request.max_new_tokens, kv_cache_.token_capacity());
  FP4_CHECK(!request.return_routed_experts || routing_.has_value(),
            "{}: return_routed_experts needs routing to be recorded; start the server with "
            "--enable-return-routed-experts (MoE models)", name);
  FP4_CHECK(request.routed_experts_start_len >= 0 &&
                request.routed_experts_start_len <= static_cast<int64_t>(request.input_ids.size()),
            "{}: routed_experts_start_len {} must be in [0, {}] (the prompt length)", name,
            request.routed_experts_start_len, request.input_ids.size());
}

int64_t Engine::add_request(GenerateRequest request) {
  check_request(request, fmt::format("request {}", next_request_id_));
  return queue_request(std::move(request));
}

int64_t Engine::queue_request(GenerateRequest request) {
  const int64_t id = next_request_id_++;
  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  seq->tokens = request.input_ids;
  seq->n_prompt_tokens = static_cast<int64_t>(request.input_ids.size());
  seq->request = std::move(request);
  if (seq->request.max_new_tokens == 0 && seq->n_input_logprobs_wanted() == 0) {
    seq->status = SequenceStatus::Finished;
    seq->finish_reason = FinishReason::Length;
  } else {
    scheduler_.add(seq.get());
  }
  sequences_.emplace(id, std::move(seq));
  return id;
}

bool Engine::is_stop_token(const Sequence& seq, int32_t token) const {
  const auto contains = [token](const std::vector<int32_t>& ids) {
    return std::find(ids.begin(), ids.end(), token) != ids.end();
  };
  return contains(seq.request.stop_token_ids) || (!seq.request.ignore_eos && contains(options_.eos_token_ids));
}

std::vector<StepOutput> Engine::step() {
  const ScheduledBatch scheduled = scheduler_.schedule();
  if (scheduled.chunks.empty()) return {};
  FP4_CHECK(!weights_released() && !kv_cache_released(),
            "engine: cannot run a step while the {} memory is released; resume it first",
            weights_released() ? "weights'" : "KV cache's");

  ForwardBatch batch{.sequences = {}, .kv_cache = &kv_cache_.tensors()};
  for (const ScheduledChunk& chunk : scheduled.chunks) {
    Sequence& seq = *chunk.sequence;
    if (!chunk.decode && chunk.start == seq.n_cached_tokens) seq.kv_weight_version = weight_version_;  // 1st chunk
    const std::span<const int32_t> tokens(seq.tokens.data() + chunk.start, static_cast<size_t>(chunk.n_tokens));
    batch.sequences.push_back({.token_ids = tokens, .start_position = chunk.start, .page_table = seq.pages.pages});
    batch.all_logits |= static_cast<int64_t>(seq.input_logprobs.size()) < seq.n_input_logprobs_wanted();
  }
  if (options_.gpu_sampling && model_->options().device == Device::CUDA) {
    batch.device_sampling = device_sampling_rows(scheduled.chunks);
    batch.logprobs_mode = options_.logprobs_mode;
  }
  std::vector<int64_t> row_slots;
  const std::optional<ForwardObserver> recorder = routing_recorder(batch, row_slots);
  if (recorder) batch.observer = &*recorder;
  const ForwardOutput output = model_->forward(batch);
  ++n_steps_;

  // Sampling and logprobs read only their own sequence's logits: sequences run in parallel (a log-softmax over a
  // 152k vocabulary costs about a millisecond of one core), each with the same arithmetic as alone. Chunk i's token
  // comes from output.device_sampled[device_results[i]], or from its row host_rows[i] of output.last_logits.
  const int64_t vocab = model_->config().vocab_size;
  const auto n_chunks = static_cast<int64_t>(scheduled.chunks.size());
  std::vector<int64_t> first_rows(static_cast<size_t>(n_chunks), 0);
  for (int64_t i = 1; i < n_chunks; ++i) first_rows[i] = first_rows[i - 1] + scheduled.chunks[i - 1].n_tokens;
  std::vector<int64_t> host_rows(static_cast<size_t>(n_chunks), -1), device_results(static_cast<size_t>(n_chunks), -1);
  for (int64_t i = 0, next_device = 0, next_host = 0; i < n_chunks; ++i) {
    const bool on_device = next_device < static_cast<int64_t>(batch.device_sampling.size()) &&
                           batch.device_sampling[static_cast<size_t>(next_device)].sequence == i;
    if (on_device)
      device_results[i] = next_device++;
    else
      host_rows[i] = next_host++;
  }
  std::vector<std::optional<SampledToken>> sampled(static_cast<size_t>(n_chunks));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n_chunks));
#pragma omp parallel for schedule(dynamic) if (n_chunks > 1)
  for (int64_t i = 0; i < n_chunks; ++i) {
    const ScheduledChunk& chunk = scheduled.chunks[i];
    Sequence& seq = *chunk.sequence;
    try {
      if (batch.all_logits) record_input_logprobs(seq, chunk, output, first_rows[i]);
      if (samples_next_token(chunk))
        sampled[i] =
            device_results[i] >= 0
                ? output.device_sampled[static_cast<size_t>(device_results[i])]
                : choose_next(seq,
                              {output.last_logits.data<float>() + host_rows[i] * vocab, static_cast<size_t>(vocab)},
                              normalizer_of(output.last_log_normalizers, host_rows[i]));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);

  std::vector<StepOutput> produced;
  for (size_t i = 0; i < scheduled.chunks.size(); ++i) {
    const ScheduledChunk& chunk = scheduled.chunks[i];
    Sequence& seq = *chunk.sequence;
    if (!chunk.decode) offer_to_prefix_cache(seq);
    if (!chunk.completes_prefill()) continue;

    StepOutput out{
        .request_id = seq.id, .token = std::nullopt, .logprobs = {}, .input_logprobs = {}, .finished = false};
    if (seq.n_output_tokens() == 0) out.input_logprobs = seq.input_logprobs;
    if (sampled[i]) append_sampled(seq, *sampled[i], out);
    if (seq.n_output_tokens() >= seq.request.max_new_tokens) {
      seq.finish_reason = FinishReason::Length;
    } else if (is_stop_token(seq, *out.token)) {
      seq.finish_reason = FinishReason::Stop;
      seq.matched_stop_token = out.token;
    }
    if (seq.finish_reason) end_sequence(seq);
    out.finished = seq.finish_reason.has_value();
    produced.push_back(std::move(out));
  }
  return produced;
}

std::optional<float> Engine::normalizer_of(const std::vector<float>& normalizers, int64_t row) {
  return normalizers.empty() ? std::nullopt : std::optional(normalizers[static_cast<size_t>(row)]);
}

// Position p's logits score prompt token p + 1; the scheduler started this sequence's computation no later than
// the first position still needed.
void Engine::record_input_logprobs(Sequence& seq, const ScheduledChunk& chunk, const ForwardOutput& output,
                                   int64_t first_row) const {
  const int64_t vocab = model_->config().vocab_size;
  const float* chunk_logits = output.all_logits.data<float>() + first_row * vocab;
  const int64_t n_wanted = seq.n_input_logprobs_wanted();
  const int64_t end = std::min(chunk.start + chunk.n_tokens, seq.n_prompt_tokens - 1);
  for (int64_t p = seq.request.logprob_start_len + static_cast<int64_t>(seq.input_logprobs.size());
       static_cast<int64_t>(seq.input_logprobs.size()) < n_wanted && p < end; ++p) {
    FP4_CHECK(p >= chunk.start, "engine: request {} needs the logits of position {} but its chunk starts at {}", seq.id,
              p, chunk.start);
    const std::span<const float> logits(chunk_logits + (p - chunk.start) * vocab, static_cast<size_t>(vocab));
    const int32_t scored_token = seq.tokens[static_cast<size_t>(p + 1)];
    seq.input_logprobs.push_back(
        position_logprobs(logits, scored_token, seq.request.sampling, options_.logprobs_mode,
                          normalizer_of(output.all_log_normalizers, first_row + p - chunk.start)));
  }
}

SampledToken Engine::choose_next(const Sequence& seq, std::span<const float> logits,
                                 std::optional<float> raw_log_normalizer) const {
  const SamplingParams& sampling = seq.request.sampling;
  const int32_t token = sample_token(logits, sampling, seq.n_output_tokens());
  return {.token = token,
          .logprobs = position_logprobs(logits, token, sampling, options_.logprobs_mode, raw_log_normalizer)};
}

void Engine::append_sampled(Sequence& seq, const SampledToken& sampled, StepOutput& out) const {
  const SamplingParams& sampling = seq.request.sampling;
  const int32_t token = sampled.token;
  out.token = token;
  out.logprobs = sampled.logprobs;
  seq.tokens.push_back(token);
  seq.output_logprobs.push_back(out.logprobs.logprob);
  if (sampling.n_top_logprobs > 0) seq.output_top_logprobs.push_back(out.logprobs.top);
  if (!sampling.token_ids_logprob.empty()) seq.output_ids_logprobs.push_back(out.logprobs.ids);
  std::vector<WeightVersionSpan>& spans = seq.weight_version_spans;
  if (spans.empty() || spans.back().version != weight_version_)
    spans.push_back({.version = weight_version_, .start = seq.n_output_tokens() - 1, .end = seq.n_output_tokens()});
  else
    spans.back().end = seq.n_output_tokens();
}

void Engine::abort(int64_t request_id) {
  const auto it = sequences_.find(request_id);
  FP4_CHECK(it != sequences_.end(), "abort: request {} is unknown (never added, or its result was already taken)",
            request_id);
  Sequence& seq = *it->second;
  if (seq.status == SequenceStatus::Finished) return;
  seq.finish_reason = FinishReason::Abort;
  end_sequence(seq);
}

std::optional<ForwardObserver> Engine::routing_recorder(const ForwardBatch& batch, std::vector<int64_t>& row_slots) {
  if (!routing_) return std::nullopt;
  for (const SequenceInput& seq : batch.sequences)
    for (size_t t = 0; t < seq.token_ids.size(); ++t)
      row_slots.push_back(routing_->slot(seq.page_table, seq.start_position + static_cast<int64_t>(t)));
  ForwardObserver recorder;
  recorder.on_moe_routing = [this, &row_slots](int layer, const Tensor&, const Tensor& topk_ids, const Tensor&) {
    routing_->record(layer, row_slots, topk_ids.data<int32_t>());
  };
  return recorder;
}

// KV computed under weights that no longer serve (an update while paused in place) stays out of the cache.
void Engine::offer_to_prefix_cache(const Sequence& seq) {
  if (prefix_cache_ && seq.kv_weight_version == weight_version_)
    prefix_cache_->insert(seq.tokens, seq.pages.pages, seq.n_computed_tokens);
}

void Engine::end_sequence(Sequence& seq) {
  const int64_t n_fed = static_cast<int64_t>(seq.tokens.size()) - 1;  // the last token was never fed
  if (seq.request.return_routed_experts && seq.n_computed_tokens >= n_fed)
    seq.routed_experts = routing_->gather(seq.pages.pages, seq.request.routed_experts_start_len, n_fed);
  offer_to_prefix_cache(seq);
  scheduler_.finish(&seq);
}

void Engine::retract_all() {
  for (const Sequence* seq : scheduler_.running()) offer_to_prefix_cache(*seq);
  scheduler_.retract_all();
}

void Engine::check_idle_for_release(std::string_view what) const {
  FP4_CHECK(!scheduler_.has_work(), "cannot release the {} memory while requests are queued or running; abort them "
            "or let them finish first", what);
}

void Engine::release_weights(WeightsReleaseMode mode) {
  if (weights_released()) return;
  check_idle_for_release("weights'");
  const bool keep_contents = mode == WeightsReleaseMode::Offload;
  model_->weights_memory().release(keep_contents);
  if (!keep_contents) model_->forget_weights();
}

void Engine::resume_weights() { model_->weights_memory().resume(); }

void Engine::release_kv_cache() {
  if (kv_cache_released()) return;
  check_idle_for_release("KV cache's");
  flush_prefix_cache();  // the cached pages' keys and values are about to be dropped
  kv_cache_.memory().release(/*keep_contents=*/false);
}

void Engine::resume_kv_cache() { kv_cache_.memory().resume(); }

void Engine::set_weight_version(std::string version) {
  weight_version_ = std::move(version);
  if (prefix_cache_) prefix_cache_->set_weight_version(weight_version_);
}

bool Engine::is_finished(int64_t request_id) const {
  const auto it = sequences_.find(request_id);
  FP4_CHECK(it != sequences_.end(), "request {} is unknown (never added, or its result was already taken)", request_id);
  return it->second->status == SequenceStatus::Finished;
}

void Engine::flush_prefix_cache() {
  if (prefix_cache_) prefix_cache_->clear();
}

GenerateResult Engine::take_result(int64_t request_id) {
  const auto it = sequences_.find(request_id);
  FP4_CHECK(it != sequences_.end(), "request {} is unknown (never added, or its result was already taken)", request_id);
  Sequence& seq = *it->second;
  FP4_CHECK(seq.status == SequenceStatus::Finished, "request {} has not finished yet", request_id);
  GenerateResult result{
      .request_id = request_id,
      .output_ids = std::vector<int32_t>(seq.tokens.begin() + seq.n_prompt_tokens, seq.tokens.end()),
      .output_logprobs = seq.output_logprobs,
      .output_top_logprobs = seq.output_top_logprobs,
      .output_ids_logprobs = seq.output_ids_logprobs,
      .input_logprobs = seq.input_logprobs,
      .finish_reason = *seq.finish_reason,
      .matched_stop_token = seq.matched_stop_token,
      .prompt_tokens = seq.n_prompt_tokens,
      .cached_tokens = seq.n_cached_tokens,
      .weight_version = weight_version_,
      .weight_version_spans = std::move(seq.weight_version_spans),
      .routed_experts = std::move(seq.routed_experts),
  };
  sequences_.erase(it);
  return result;
}

std::vector<GenerateResult> Engine::generate(std::vector<GenerateRequest> requests) {
  for (size_t i = 0; i < requests.size(); ++i) check_request(requests[i], fmt::format("request {}", i));
  std::vector<int64_t> ids;
  for (GenerateRequest& request : requests) ids.push_back(queue_request(std::move(request)));
  while (has_unfinished()) {
    const int64_t steps_before = n_steps_;
    step();
    FP4_CHECK(n_steps_ > steps_before,
              "engine: no sequence could be scheduled although requests are waiting (a request "
              "larger than the KV cache slipped through validation)");
  }
  std::vector<GenerateResult> results;
  for (int64_t id : ids) results.push_back(take_result(id));
  return results;
}

}  // namespace fp4serve
