#include "server/engine_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "common/error.h"
#include "engine/weights_digest.h"
#include "io/quant_config.h"
#include "model/qwen3_model.h"

namespace fp4serve {

namespace {
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
}  // namespace

struct EngineService::Pending {
  int64_t ticket;
  GenerateRequest request;
  std::string rid;
  std::shared_ptr<RequestChannel> channel;
};

struct EngineService::Active {
  int64_t ticket;
  std::string rid;
  std::shared_ptr<RequestChannel> channel;
};

struct EngineService::ReloadInProgress {
  ReloadRequest request;
  std::promise<ReloadOutcome> promise;
  Clock::time_point requested_at;
};

EngineService::EngineService(EngineServiceOptions options)
    : options_(std::move(options)), model_config_(load_model_config(options_.model_path)) {
  std::vector<int32_t>& eos = options_.engine.eos_token_ids;
  for (int id : model_config_.eos_token_ids)
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  auto model = std::make_unique<Qwen3Model>(model_config_, load_quant_config(options_.model_path), options_.quant);
  engine_ = std::make_unique<Engine>(std::move(model), options_.engine);
  kv_cache_tokens_ = engine_->kv_cache().token_capacity();
  updater_ = std::make_unique<WeightUpdater>(engine_->model(), model_config_, options_.load);
  stats_.staging_bytes = updater_->load(options_.model_path).peak_staging_bytes;
  // Reloads write into these storages, so the sizes are fixed from here on.
  const ParameterSet& params = engine_->model().params();
  weights_bytes_ = params.total_bytes();
  for (const ParameterSet::StorageUse& use : params.storage_uses())
    for (const std::string& name : use.names) weights_bytes_without_aliasing_ += params.get(name).nbytes();
  weight_version_ = engine_->weight_version();
  model_path_ = options_.model_path.string();
  publish_stats();
  thread_ = std::thread([this] { run(); });
}

EngineService::~EngineService() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void EngineService::post(std::function<void()> task) {
  {
    std::lock_guard lock(mutex_);
    tasks_.push_back(std::move(task));
  }
  wake_.notify_all();
}

std::string EngineService::weight_version() const {
  std::lock_guard lock(stats_mutex_);
  return weight_version_;
}

std::string EngineService::model_path() const {
  std::lock_guard lock(stats_mutex_);
  return model_path_;
}

ServiceStats EngineService::stats() const {
  std::lock_guard lock(stats_mutex_);
  return stats_;
}

std::shared_ptr<RequestChannel> EngineService::submit(GenerateRequest request, std::string rid,
                                                      std::string_view name) {
  engine_->check_request(request, name);
  const int64_t prompt_tokens = static_cast<int64_t>(request.input_ids.size());
  FP4_CHECK(options_.max_prompt_tokens == 0 || prompt_tokens <= options_.max_prompt_tokens,
            "{}: the prompt has {} tokens, more than this server's --max-prompt-tokens {}", name, prompt_tokens,
            options_.max_prompt_tokens);
  if (!serving_) {
    throw ServiceBusy("the served weights are inconsistent after a failed reload; reload a valid checkpoint "
                      "with /update_weights_from_disk");
  }
  {
    std::lock_guard lock(stats_mutex_);
    if (!stats_.generation_unavailable.empty()) throw ServiceBusy(stats_.generation_unavailable);
  }
  const int64_t limit = options_.engine.scheduler.max_running_sequences + options_.max_queued_requests;
  if (in_flight_.fetch_add(1) >= limit) {
    in_flight_.fetch_sub(1);
    std::lock_guard lock(stats_mutex_);
    ++stats_.requests_rejected_busy;
    throw ServiceBusy(fmt::format("the server is at capacity ({} requests in flight); retry later", limit));
  }
  auto channel = std::make_shared<RequestChannel>(next_ticket_++);
  post([this, pending = Pending{channel->ticket(), std::move(request), std::move(rid), channel}]() mutable {
    if (reload_ || paused_)
      held_.push_back(std::move(pending));
    else
      admit(std::move(pending));
  });
  return channel;
}

void EngineService::cancel(int64_t ticket) {
  post([this, ticket] { abort_where([ticket](const std::string&, int64_t t) { return t == ticket; }); });
}

int64_t EngineService::abort(const std::string& rid) {
  std::promise<int64_t> done;
  std::future<int64_t> count = done.get_future();
  post([&] {
    const size_t before = active_.size() + held_.size();
    abort_where([&rid](const std::string& r, int64_t) { return r == rid; });
    done.set_value(static_cast<int64_t>(before - active_.size() - held_.size()));
  });
  return count.get();
}

int64_t EngineService::abort_all() {
  std::promise<int64_t> done;
  std::future<int64_t> count = done.get_future();
  post([&] {
    const size_t before = active_.size() + held_.size();
    abort_where([](const std::string&, int64_t) { return true; });
    done.set_value(static_cast<int64_t>(before - active_.size() - held_.size()));
  });
  return count.get();
}

ReloadOutcome EngineService::update_weights(ReloadRequest request) {
  auto reload = std::make_unique<ReloadInProgress>(ReloadInProgress{std::move(request), {}, Clock::now()});
  std::future<ReloadOutcome> outcome = reload->promise.get_future();
  post([this, reload = std::shared_ptr<ReloadInProgress>(std::move(reload))]() mutable {
    if (reload_) {
      reload->promise.set_value({.success = false,
                                 .message = "another weight update is in progress; retry when it has finished",
                                 .num_paused_requests = 0});
      return;
    }
    if (engine_->weights_released()) {
      reload->promise.set_value({.success = false,
                                 .message = "Failed to update model weights: the weights' memory is released; "
                                            "resume it first (/resume_memory_occupation with tags [\"weights\"])",
                                 .num_paused_requests = static_cast<int64_t>(held_.size())});
      return;
    }
    const ReloadRequest& request = reload->request;
    const size_t n_frozen = engine_->scheduler().running().size();
    if (paused_ == PauseMode::InPlace && n_frozen > 0 && !request.abort_all_requests && request.flush_cache) {
      reload->promise.set_value(
          {.success = false,
           .message = fmt::format("Failed to update model weights: generation is paused in_place and {} running "
                                  "requests keep KV computed by the current weights; send flush_cache=false to "
                                  "resume them on the new weights (their later tokens carry the new "
                                  "weight_version), or pause with mode \"retract\" or \"abort\" first",
                                  n_frozen),
           .num_paused_requests = static_cast<int64_t>(held_.size())});
      return;
    }
    reload_ = std::make_unique<ReloadInProgress>(std::move(*reload));
    // Requests already in the engine end with "abort"; held ones have not started and run on the new weights.
    if (reload_->request.abort_all_requests) abort_in_engine();
  });
  return outcome.get();
}

FlushOutcome EngineService::flush_cache() {
  std::promise<FlushOutcome> done;
  std::future<FlushOutcome> outcome = done.get_future();
  post([&] {
    if (!active_.empty() || !held_.empty()) {
      done.set_value({false, fmt::format("cache not flushed: {} requests are in flight; flush when the server is "
                                         "idle", active_.size() + held_.size())});
      return;
    }
    engine_->flush_prefix_cache();
    done.set_value({true, "Cache flushed."});
  });
  return outcome.get();
}

ServedWeights EngineService::served_weights() {
  std::promise<ServedWeights> done;
  std::future<ServedWeights> answer = done.get_future();
  post([&] {
    ServedWeights served{.unavailable = {},
                         .digest = {},
                         .weight_version = engine_->weight_version(),
                         .model_path = updater_->current_source()};
    if (updater_->state() != WeightLoader::State::Loaded)
      served.unavailable = "the served weights are inconsistent after a failed reload; reload a valid checkpoint";
    else if (engine_->weights_released())
      served.unavailable = "the weights' memory is released (/release_memory_occupation); resume it first";
    else if (weights_discarded_)
      served.unavailable = "the weights were discarded when their memory was released; reload them first";
    else
      served.digest = digest_hex(model_weights_digest(engine_->model()));
    done.set_value(std::move(served));
  });
  return answer.get();
}

void EngineService::pause(PauseMode mode) {
  std::promise<void> done;
  std::future<void> applied = done.get_future();
  post([&] {
    paused_ = mode;
    if (mode == PauseMode::Abort) abort_where([](const std::string&, int64_t) { return true; });
    if (mode == PauseMode::Retract) engine_->retract_all();
    publish_stats();  // /metrics shows the pause once this returns
    done.set_value();
  });
  applied.get();
}

// Waits like pause(): /continue_generation answers once generation may go on (and /metrics says so).
void EngineService::resume() {
  std::promise<void> done;
  std::future<void> applied = done.get_future();
  post([&] {
    paused_.reset();
    if (!reload_) start_held();
    publish_stats();
    done.set_value();
  });
  applied.get();
}

std::string_view memory_tag_name(MemoryTag tag) {
  switch (tag) {
    case MemoryTag::Weights: return "weights";
    case MemoryTag::KvCache: return "kv_cache";
    case MemoryTag::CudaGraph: return "cuda_graph";
  }
  return "?";
}

MemoryTag parse_memory_tag(std::string_view name) {
  for (MemoryTag tag : kAllMemoryTags)
    if (memory_tag_name(tag) == name) return tag;
  fail("unknown memory tag \"{}\"; use \"weights\", \"kv_cache\" or \"cuda_graph\"", name);
}

namespace {
std::string tag_list(const std::vector<MemoryTag>& tags) {
  std::string out;
  for (MemoryTag tag : tags) out += (out.empty() ? "" : ", ") + std::string(memory_tag_name(tag));
  return out;
}

// "released weights, kv_cache; already released: cuda_graph" (empty parts left out).
std::string memory_message(std::string_view done, std::string_view already, const MemoryOutcome& outcome) {
  std::vector<std::string> parts;
  if (!outcome.changed.empty()) parts.push_back(fmt::format("{} {}", done, tag_list(outcome.changed)));
  if (!outcome.unchanged.empty()) parts.push_back(fmt::format("{}: {}", already, tag_list(outcome.unchanged)));
  if (!outcome.nothing_to_do.empty())
    parts.push_back(fmt::format("nothing to do for {}: captured graphs hold no weights or KV of their own and stay "
                                "valid, what they point at keeping its addresses", tag_list(outcome.nothing_to_do)));
  std::string message;
  for (const std::string& part : parts) message += (message.empty() ? "" : "; ") + part;
  return message.empty() ? "no tags given: nothing to do" : message;
}
}  // namespace

MemoryOutcome EngineService::release_memory(const std::vector<MemoryTag>& tags) {
  std::promise<MemoryOutcome> done;
  std::future<MemoryOutcome> answer = done.get_future();
  post([&] {
    MemoryOutcome outcome;
    bool releases_something = false;
    for (MemoryTag tag : tags) releases_something |= tag != MemoryTag::CudaGraph && !memory_released(tag);
    const size_t in_flight = active_.size() + held_.size();
    if (releases_something && (in_flight > 0 || reload_)) {
      outcome.refused_busy = true;
      outcome.message = fmt::format(
          "memory not released: {} requests are in flight{}; release needs an idle server: pause with "
          "/pause_generation {{\"mode\": \"abort\"}} or let them finish, then release",
          in_flight, reload_ ? " and a weight update is pending" : "");
      done.set_value(std::move(outcome));
      return;
    }
    try {
      for (MemoryTag tag : tags) {
        if (tag == MemoryTag::CudaGraph) {
          outcome.nothing_to_do.push_back(tag);
        } else if (memory_released(tag)) {
          outcome.unchanged.push_back(tag);
        } else if (tag == MemoryTag::Weights) {
          engine_->release_weights(options_.weights_release_mode);
          weights_discarded_ = weights_discarded_ || options_.weights_release_mode == WeightsReleaseMode::Discard;
          outcome.changed.push_back(tag);
        } else {
          engine_->release_kv_cache();
          outcome.changed.push_back(tag);
        }
      }
      outcome.success = true;
      outcome.message = memory_message(
          options_.weights_release_mode == WeightsReleaseMode::Offload ? "released (weights offloaded to host memory)"
                                                                       : "released (weights discarded)",
          "already released", outcome);
    } catch (const std::exception& e) {
      outcome.message = fmt::format("releasing memory failed: {}", e.what());
    }
    spdlog::log(outcome.success ? spdlog::level::info : spdlog::level::err, "{}", outcome.message);
    publish_stats();
    done.set_value(std::move(outcome));
  });
  return answer.get();
}

MemoryOutcome EngineService::resume_memory(const std::vector<MemoryTag>& tags) {
  std::promise<MemoryOutcome> done;
  std::future<MemoryOutcome> answer = done.get_future();
  post([&] {
    MemoryOutcome outcome;
    try {
      for (MemoryTag tag : tags) {
        if (tag == MemoryTag::CudaGraph) {
          outcome.nothing_to_do.push_back(tag);
        } else if (!memory_released(tag)) {
          outcome.unchanged.push_back(tag);
        } else {
          if (tag == MemoryTag::Weights)
            engine_->resume_weights();
          else
            engine_->resume_kv_cache();
          outcome.changed.push_back(tag);
        }
      }
      outcome.success = true;
      outcome.message = memory_message("resumed", "not released", outcome);
      if (weights_discarded_ && !engine_->weights_released())
        outcome.message += "; the weights were discarded: load them with /update_weights_from_disk before generating";
    } catch (const std::exception& e) {
      outcome.message = fmt::format("resuming memory failed ({} resumed before): {}; what failed stays released",
                                    outcome.changed.empty() ? "nothing" : tag_list(outcome.changed), e.what());
    }
    spdlog::log(outcome.success ? spdlog::level::info : spdlog::level::err, "{}", outcome.message);
    publish_stats();
    done.set_value(std::move(outcome));
  });
  return answer.get();
}

void EngineService::update_weight_version(std::string version, bool abort_all_requests) {
  std::promise<void> done;
  std::future<void> applied = done.get_future();
  post([&] {
    if (abort_all_requests) abort_in_engine();
    engine_->set_weight_version(version);
    {
      std::lock_guard lock(stats_mutex_);
      weight_version_ = version;
    }
    spdlog::info("weight_version is now {} (label only; the weights did not change)", version);
    done.set_value();
  });
  applied.get();
}

void EngineService::abort_in_engine() {
  std::vector<int64_t> ids;
  for (const auto& [id, active] : active_) ids.push_back(id);
  for (int64_t id : ids) end_active(id, std::nullopt);
}

void EngineService::admit(Pending pending) {
  // Checked here too: a request may have passed submit()'s check just before the memory was released.
  if (const std::string reason = generation_unavailable(); !reason.empty()) {
    pending.channel->close_with_error({503, reason});
    --in_flight_;
    return;
  }
  int64_t id;
  try {
    id = engine_->add_request(std::move(pending.request));
  } catch (const Error& e) {
    pending.channel->close_with_error({400, e.what()});
    --in_flight_;
    return;
  }
  pending.channel->admitted(engine_->weight_version());
  active_.emplace(id, Active{pending.ticket, std::move(pending.rid), std::move(pending.channel)});
  if (engine_->is_finished(id)) end_active(id, std::nullopt);  // nothing to run: it never appears in a step
}

// Takes the request's result (aborting it first if it still runs) and closes its channel.
void EngineService::end_active(int64_t engine_id, std::optional<ChannelError> error) {
  auto it = active_.find(engine_id);
  if (it == active_.end()) return;
  Active active = std::move(it->second);
  active_.erase(it);
  --in_flight_;
  if (error) {
    engine_->abort(engine_id);
    engine_->take_result(engine_id);
    active.channel->close_with_error(std::move(*error));
    return;
  }
  engine_->abort(engine_id);  // no-op for a finished request
  GenerateResult result = engine_->take_result(engine_id);
  {
    std::lock_guard lock(stats_mutex_);
    switch (result.finish_reason) {
      case FinishReason::Stop: ++stats_.requests_finished_stop; break;
      case FinishReason::Length: ++stats_.requests_finished_length; break;
      case FinishReason::Abort: ++stats_.requests_finished_abort; break;
    }
    stats_.prompt_tokens_total += result.prompt_tokens;
    stats_.generation_tokens_total += static_cast<int64_t>(result.output_ids.size());
    stats_.cached_tokens_total += result.cached_tokens;
  }
  active.channel->close(std::move(result));
}

void EngineService::abort_where(const std::function<bool(const std::string& rid, int64_t ticket)>& matches) {
  std::vector<int64_t> ids;
  for (const auto& [id, active] : active_)
    if (matches(active.rid, active.ticket)) ids.push_back(id);
  for (int64_t id : ids) end_active(id, std::nullopt);
  std::deque<Pending> kept;
  for (Pending& pending : held_) {
    if (!matches(pending.rid, pending.ticket)) {
      kept.push_back(std::move(pending));
      continue;
    }
    GenerateResult result;
    result.finish_reason = FinishReason::Abort;
    result.prompt_tokens = static_cast<int64_t>(pending.request.input_ids.size());
    result.weight_version = engine_->weight_version();
    pending.channel->close(std::move(result));
    --in_flight_;
    std::lock_guard lock(stats_mutex_);
    ++stats_.requests_finished_abort;
  }
  held_.swap(kept);
}

bool EngineService::can_step() const {
  return serving_ && engine_->has_unfinished() && !paused_;
}

void EngineService::run() {
  while (true) {
    std::vector<std::function<void()>> tasks;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !tasks_.empty() || can_step() || reload_can_apply(); });
      if (stopping_) break;
      tasks.swap(tasks_);
    }
    for (auto& task : tasks) task();
    finish_reload_if_drained();
    if (can_step()) step_once();
    publish_stats();
  }
  abort_where([](const std::string&, int64_t) { return true; });
  if (reload_) reload_->promise.set_value({false, "the server is shutting down", 0});
}

void EngineService::step_once() {
  std::vector<StepOutput> produced;
  try {
    produced = engine_->step();
  } catch (const std::exception& e) {
    fail_everything(fmt::format("the engine failed: {}", e.what()));
    return;
  }
  for (StepOutput& out : produced) {
    auto it = active_.find(out.request_id);
    if (it == active_.end()) continue;
    RequestChannel& channel = *it->second.channel;
    if (!out.input_logprobs.empty()) channel.push_input_logprobs(std::move(out.input_logprobs));
    if (out.token)
      channel.push({*out.token, out.logprobs.logprob, std::move(out.logprobs.top), std::move(out.logprobs.ids)});
    if (out.finished) end_active(out.request_id, std::nullopt);
  }
}

// A failed step leaves the engine in an unknown state: every request fails and the server stops serving.
void EngineService::fail_everything(const std::string& message) {
  spdlog::critical("{}; the server no longer serves requests", message);
  serving_ = false;
  std::vector<int64_t> ids;
  for (const auto& [id, active] : active_) ids.push_back(id);
  for (int64_t id : ids) end_active(id, ChannelError{500, message});
  for (Pending& pending : held_) {
    pending.channel->close_with_error({500, message});
    --in_flight_;
  }
  held_.clear();
}

// Paused, nothing runs: retracted requests hold no KV, and frozen in-place ones may keep theirs only when the update
// said so (flush_cache=false). A flushing update that met an in-place pause waits for the running requests to drain
// after /continue_generation.
bool EngineService::reload_can_apply() const {
  if (!reload_) return false;
  if (active_.empty()) return true;
  if (!paused_) return false;
  return paused_ != PauseMode::InPlace || engine_->scheduler().running().empty() || !reload_->request.flush_cache;
}

void EngineService::finish_reload_if_drained() {
  if (!reload_can_apply()) return;
  const ReloadRequest& request = reload_->request;
  ReloadOutcome outcome{.success = false, .message = {}, .num_paused_requests = static_cast<int64_t>(held_.size())};
  const Clock::time_point load_start = Clock::now();
  const std::string source = request.tensors.empty()
                                 ? request.model_path.string()
                                 : fmt::format("update_weights_from_tensor ({} tensors)", request.tensors.size());
  try {
    std::vector<NamedTensor> tensors;
    for (const HostTensor& t : request.tensors) tensors.push_back({t.name, t.dtype, t.shape, t.bytes});
    // Discarded weights hold nothing to keep: an update from tensors must then replace every tensor.
    const LoadResult loaded = request.tensors.empty()
                                  ? updater_->load(request.model_path)
                                  : updater_->update(tensors, source, /*replace_all=*/weights_discarded_);
    {
      std::lock_guard lock(stats_mutex_);
      stats_.staging_bytes = loaded.peak_staging_bytes;
    }
    if (request.flush_cache) engine_->flush_prefix_cache();
    if (!request.flush_cache && !request.weight_version)
      spdlog::warn("weights updated with flush_cache=false under the same weight_version {}: cached prefixes are "
                   "reused, which is right only if the weights did not change; give a new weight_version otherwise",
                   engine_->weight_version());
    if (request.weight_version) engine_->set_weight_version(*request.weight_version);
    weights_discarded_ = false;
    outcome.success = true;
    outcome.message =
        fmt::format("Succeeded to update model weights from {}; weight_version {}", source, engine_->weight_version());
    serving_ = true;
  } catch (const std::exception& e) {
    outcome.message = fmt::format("Failed to update model weights: {}", e.what());
    if (updater_->state() == WeightLoader::State::Inconsistent) {
      serving_ = false;
      outcome.message += "; the served weights are now inconsistent: requests are refused until a reload succeeds";
      fail_everything(outcome.message);
    } else {
      outcome.message += "; the server keeps serving the previous weights";
    }
  }
  spdlog::log(outcome.success ? spdlog::level::info : spdlog::level::err, "{}", outcome.message);
  {
    std::lock_guard lock(stats_mutex_);
    const double load_seconds = seconds_since(load_start);
    (outcome.success ? stats_.reloads_succeeded : stats_.reloads_failed) += 1;
    stats_.reload_seconds_total += load_seconds;
    stats_.last_reload_seconds = load_seconds;
    stats_.last_reload_pause_seconds = seconds_since(reload_->requested_at);
    weight_version_ = engine_->weight_version();
    if (outcome.success && request.tensors.empty()) model_path_ = request.model_path.string();
  }
  publish_stats();  // whoever waits on the outcome then reads stats that include it (weights_need_reload)
  reload_->promise.set_value(std::move(outcome));
  reload_.reset();
  if (!paused_) start_held();
}

void EngineService::start_held() {
  std::deque<Pending> held;
  held.swap(held_);
  for (Pending& pending : held) admit(std::move(pending));
}

void EngineService::publish_stats() {
  const PageAllocator& pages = engine_->kv_cache().pages();
  std::lock_guard lock(stats_mutex_);
  stats_.running_requests = static_cast<int64_t>(active_.size());
  stats_.held_requests = static_cast<int64_t>(held_.size());
  stats_.kv_pages_total = pages.n_pages();
  stats_.kv_pages_used = pages.n_pages() - pages.n_free_pages();
  stats_.workspace_bytes = engine_->model().device_workspace_bytes();
  stats_.paused = paused_.has_value();
  stats_.released_memory = released_memory();
  stats_.weights_need_reload = weights_discarded_;
  stats_.generation_unavailable = generation_unavailable();
}

bool EngineService::memory_released(MemoryTag tag) const {
  switch (tag) {
    case MemoryTag::Weights: return engine_->weights_released();
    case MemoryTag::KvCache: return engine_->kv_cache_released();
    case MemoryTag::CudaGraph: return false;  // never released (README: what release does with graphs)
  }
  return false;
}

std::vector<MemoryTag> EngineService::released_memory() const {
  std::vector<MemoryTag> released;
  for (MemoryTag tag : kAllMemoryTags)
    if (memory_released(tag)) released.push_back(tag);
  return released;
}

std::string EngineService::generation_unavailable() const {
  const std::vector<MemoryTag> released = released_memory();
  if (!released.empty())
    return fmt::format("the memory of {} is released (/release_memory_occupation); resume it with "
                       "/resume_memory_occupation before generating", tag_list(released));
  if (weights_discarded_)
    return "the weights were discarded when their memory was released (--weights-release-mode discard); load "
           "weights with /update_weights_from_disk before generating";
  return {};
}

}  // namespace fp4serve
