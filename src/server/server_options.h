// The launch arguments of `fp4serve serve` (SGLang's spellings where it has one). Plain data: tools/cmd_serve.cpp
// fills it from the command line; /get_server_info reports it back with the keys redacted.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace fp4serve {

struct ServerOptions {
  std::string model_path;
  std::string served_model_name;  // OpenAI "model"; default: the model directory's name
  std::string host = "127.0.0.1";
  int port = 30000;               // 0: any free port (the log line "listening on" names it)
  std::string device = "cpu";
  int64_t cuda_graph_max_bs = 256;  // --device cuda: decode steps up to this batch replay CUDA graphs
  bool disable_cuda_graph = false;
  int tp = 1;
  std::string moe_backend = "cutlass";
  std::string act_quant = "static";
  std::string weight_version = "default";

  int64_t max_running_requests = 64;
  int64_t max_queued_requests = 256;    // beyond the running ones; more -> 503 with Retry-After
  int64_t max_total_tokens = 0;         // KV cache tokens; 0: from mem_fraction_static
  double mem_fraction_static = 0;       // share of the KV cache's memory for weights + it; 0: 0.2 cpu, 0.85 cuda
  int64_t chunked_prefill_size = 2048;  // longest prefill per engine step, prompts split to fit; -1: never split
  int64_t max_prefill_tokens = 16384;   // prefill tokens per engine step
  int64_t page_size = 16;
  bool disable_radix_cache = false;
  bool enable_return_routed_experts = false;  // record routing for return_routed_experts (host memory per KV token)
  std::string logprobs_mode = "processed";  // raw | processed (src/engine/sampler.h)
  bool deterministic = false;  // batch-invariant kernels (QuantOptions::deterministic), README "Deterministic inference"
  std::string gpu_sampling = "on";  // on | off: with device cuda, sample on the GPU (EngineOptions::gpu_sampling)
  std::string weights_release_mode = "offload";  // offload | discard (/release_memory_occupation; engine.h)

  std::string api_key;                          // all endpoints; "" = open
  std::string admin_api_key;                    // reload, flush, pause, abort-all; "" = api_key guards them
  std::vector<std::string> allowed_model_dirs;  // reload model_path must lie inside one; empty = anywhere
  int64_t max_request_body_bytes = 8 << 20;
  int64_t max_prompt_tokens = 0;                // longer prompts get 400; 0: only the context length bounds them
  int max_connections = 128;                    // served at once (each holds a thread); one more gets 503
  int read_timeout_seconds = 30;                // a client slower than this to send its request is dropped
  int write_timeout_seconds = 30;               // ... or to accept a response (a stream nobody reads)
  int keep_alive_timeout_seconds = 5;           // an idle keep-alive connection is closed after this
};

nlohmann::json to_json(const ServerOptions& options);  // keys shown as "<set>" / ""

}  // namespace fp4serve
