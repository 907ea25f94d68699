// The engine thread (llama.cpp server style): ONE thread owns the Engine, the model and the weight updater; every
// public method here is thread-safe and only posts a task to that thread (waiting on a future where it answers).
// Between two engine steps the thread runs posted tasks (admit, cancel, abort, reload, flush, pause/continue).
// Reload keeps versions unmixed: new requests are held back while the running ones drain (or are aborted first),
// then the weights change, then the held requests start; every result names the weights that produced all of it.
// The one exception is explicit: while paused "in_place", an update with flush_cache=false applies at once and the
// frozen requests resume on the new weights with their old KV (their later tokens are labelled with the new version).
// Memory release (/release_memory_occupation) needs nothing in flight; while the weights' or the KV cache's memory is
// released, or the weights were discarded and not yet reloaded, new requests are refused (ServiceBusy: 503).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/weight_updater.h"
#include "io/model_config.h"
#include "quant/method.h"
#include "server/request_channel.h"

namespace fp4serve {

struct EngineServiceOptions {
  std::filesystem::path model_path;
  QuantOptions quant;
  EngineOptions engine;               // eos ids from config.json are added to engine.eos_token_ids
  int64_t max_queued_requests = 256;  // admitted beyond the running batch; one more -> ServiceBusy
  int64_t max_prompt_tokens = 0;      // longer prompts are refused (an Error: 400); 0: the model's context bounds
  LoadOptions load;                   // how checkpoints are read (tests inject I/O faults and memory exhaustion)
  WeightsReleaseMode weights_release_mode = WeightsReleaseMode::Offload;  // what release_memory does with weights
};

// Thrown by submit() when the queue is full or the weights cannot serve; the HTTP layer answers 503.
class ServiceBusy : public Error {
 public:
  using Error::Error;
};

// A named tensor in host memory that an update request owns (update_weights_from_tensor).
struct HostTensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;  // C order, little-endian
};

// One weight update: from a checkpoint directory, or from tensors (then model_path is empty). Both take the same
// path through the engine thread: the same pause, abort, version and prefix-cache rules.
struct ReloadRequest {
  std::filesystem::path model_path;
  std::vector<HostTensor> tensors;  // any subset of the checkpoint's tensors (WeightUpdater::update)
  // false keeps cached prefixes (SGLang's semantics): only right when the new weights are the same, else later
  // requests would reuse keys/values the old weights computed.
  bool flush_cache = true;
  bool abort_all_requests = false;
  std::optional<std::string> weight_version;  // unchanged when absent
};

// SGLang's /pause_generation modes. In every mode new requests are held until resume().
enum class PauseMode {
  Abort,    // every request in flight ends with finish reason abort (partial output)
  Retract,  // running requests return to the queue, their KV freed; they are prefilled again after resume()
  InPlace,  // running requests freeze with their KV and continue after resume()
};

struct ReloadOutcome {
  bool success = false;
  std::string message;
  int64_t num_paused_requests = 0;  // requests held back (admitted, not started) while the weights changed
};

// The logical-weights digest of what the engine serves (engine/weights_digest.h), with the labels it serves under.
struct ServedWeights {
  // Why there is no digest: the weights are inconsistent after a failed reload, released or discarded; "" if none.
  std::string unavailable;
  std::string digest;
  std::string weight_version;
  std::string model_path;
};

struct FlushOutcome {
  bool success = false;
  std::string message;
};

// The memory /release_memory_occupation and /resume_memory_occupation act on: SGLang's tags.
enum class MemoryTag { Weights, KvCache, CudaGraph };
std::string_view memory_tag_name(MemoryTag tag);  // "weights", "kv_cache", "cuda_graph"
MemoryTag parse_memory_tag(std::string_view name);  // throws naming the tag and the valid ones
inline constexpr MemoryTag kAllMemoryTags[] = {MemoryTag::Weights, MemoryTag::KvCache, MemoryTag::CudaGraph};

struct MemoryOutcome {
  bool success = false;
  bool refused_busy = false;  // requests were in flight (or a reload pending): nothing changed
  std::string message;
  std::vector<MemoryTag> changed;    // released (resumed) by this call
  std::vector<MemoryTag> unchanged;  // already released (not released): nothing to do
  std::vector<MemoryTag> nothing_to_do;  // cuda_graph: graphs hold no weights or KV and stay valid (README)
};

// A consistent snapshot for /metrics and /get_server_info.
struct ServiceStats {
  int64_t running_requests = 0;  // in the engine (its waiting queue included)
  int64_t held_requests = 0;     // admitted but held back by a reload or a pause
  int64_t kv_pages_total = 0, kv_pages_used = 0;
  size_t workspace_bytes = 0;  // the GPU forward's device workspaces now (Qwen3Model::device_workspace_bytes)
  size_t staging_bytes = 0;    // host staging the last successful load or reload allocated (freed after it)
  int64_t requests_finished_stop = 0, requests_finished_length = 0, requests_finished_abort = 0;
  int64_t requests_rejected_busy = 0;
  int64_t prompt_tokens_total = 0, generation_tokens_total = 0, cached_tokens_total = 0;
  int64_t reloads_succeeded = 0, reloads_failed = 0;
  double reload_seconds_total = 0, last_reload_seconds = 0;
  double last_reload_pause_seconds = 0;  // from the reload request to the held requests' restart
  bool paused = false;
  std::vector<MemoryTag> released_memory;  // in kAllMemoryTags order
  bool weights_need_reload = false;        // discarded at a release; refused until a reload succeeds
  std::string generation_unavailable;      // why new requests are refused for their memory; "" when they are not
};

class EngineService {
 public:
  // Builds the model, loads model_path (throws Error naming the file on failure) and starts the engine thread.
  explicit EngineService(EngineServiceOptions options);
  ~EngineService();  // aborts what is still running and joins the thread
  EngineService(const EngineService&) = delete;
  EngineService& operator=(const EngineService&) = delete;

  // Validates (throws Error naming `name` and the field: a 400) and queues a request; `rid` groups requests for
  // abort(rid). Throws ServiceBusy when max_running + max_queued requests are in flight.
  std::shared_ptr<RequestChannel> submit(GenerateRequest request, std::string rid, std::string_view name);
  // Ends one request with finish reason "abort" (a client that went away); unknown tickets are ignored.
  void cancel(int64_t ticket);
  // Ends every request of `rid` (or all of them) with finish reason "abort"; returns how many.
  int64_t abort(const std::string& rid);
  int64_t abort_all();

  // Blocks until done. While paused (any mode) the update applies without waiting for running requests; while
  // paused in_place with running requests it is refused unless flush_cache is false.
  ReloadOutcome update_weights(ReloadRequest request);
  FlushOutcome flush_cache();  // refused while requests are in flight
  ServedWeights served_weights();  // computed between engine steps: never during a reload
  void pause(PauseMode mode);  // both return once applied (and shown in stats())
  void resume();
  // Blocks until done. Release refuses (refused_busy) while any request is admitted, held or running, or a reload is
  // pending: pause with mode "abort" or let them finish first. Resuming the weights after a discard leaves them to
  // be reloaded (update_weights) before requests are accepted. A failure (the device out of memory on resume) says
  // so and leaves that memory released.
  MemoryOutcome release_memory(const std::vector<MemoryTag>& tags);
  MemoryOutcome resume_memory(const std::vector<MemoryTag>& tags);

  // Relabels the served weights (no reload); with abort_all_requests the requests in the engine end first.
  void update_weight_version(std::string version, bool abort_all_requests);

  const ModelConfig& model_config() const { return model_config_; }
  int64_t kv_cache_tokens() const { return kv_cache_tokens_; }
  // Parameter memory, each storage once (aliases share one), and what it would be if every name had its own.
  size_t weights_bytes() const { return weights_bytes_; }
  size_t weights_bytes_without_aliasing() const { return weights_bytes_without_aliasing_; }
  std::string weight_version() const;
  std::string model_path() const;
  // False once the engine failed or a failed reload left the weights inconsistent: requests are refused.
  bool serving() const { return serving_; }
  ServiceStats stats() const;

 private:
  struct Pending;
  struct Active;

  void run();
  void post(std::function<void()> task);
  bool can_step() const;
  void step_once();
  void admit(Pending pending);
  void end_active(int64_t engine_id, std::optional<ChannelError> error);
  void abort_where(const std::function<bool(const std::string& rid, int64_t ticket)>& matches);
  void abort_in_engine();  // the requests admitted to the engine; held ones stay held
  bool reload_can_apply() const;
  void finish_reload_if_drained();
  void start_held();
  void fail_everything(const std::string& message);
  void publish_stats();
  // Engine thread.
  bool memory_released(MemoryTag tag) const;
  std::vector<MemoryTag> released_memory() const;  // in kAllMemoryTags order
  std::string generation_unavailable() const;       // why requests are refused for their memory; "" when they are not

  EngineServiceOptions options_;
  ModelConfig model_config_;
  int64_t kv_cache_tokens_ = 0;
  size_t weights_bytes_ = 0, weights_bytes_without_aliasing_ = 0;
  std::unique_ptr<Engine> engine_;           // engine thread only (after construction)
  std::unique_ptr<WeightUpdater> updater_;   // engine thread only

  // Engine-thread state.
  std::map<int64_t, Active> active_;         // by engine request id
  std::deque<Pending> held_;
  struct ReloadInProgress;
  std::unique_ptr<ReloadInProgress> reload_;
  std::optional<PauseMode> paused_;
  bool weights_discarded_ = false;  // released without a copy; cleared by the next successful reload

  // Shared state.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::atomic<int64_t> next_ticket_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> serving_{true};  // false once a failed reload left the weights inconsistent
  mutable std::mutex stats_mutex_;
  ServiceStats stats_;
  std::string weight_version_;
  std::string model_path_;
  std::thread thread_;
};

}  // namespace fp4serve
