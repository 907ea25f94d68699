// fp4serve serve: the HTTP server (SGLang-native and OpenAI-compatible endpoints) over one engine thread. Binds
// 127.0.0.1 unless --host says otherwise; logs "listening on http://HOST:PORT" once it accepts connections (with
// --port 0 that line names the port picked). SIGINT/SIGTERM stop it: open requests end, then the process exits.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <csignal>
#include <memory>
#include <thread>

#include "common/error.h"
#include "engine/kv_cache.h"
#include "io/model_config.h"
#include "kernels/device.h"
#include "tensor/cuda_memory.h"
#include "server/engine_service.h"
#include "server/http_server.h"
#include "server/server_options.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace fp4serve::tools {

namespace {

uint64_t checkpoint_bytes(const std::filesystem::path& dir) {
  uint64_t bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors") bytes += entry.file_size();
  return bytes;
}

// --max-total-tokens, else what mem_fraction_static of the memory the KV cache lives in (host memory on cpu, the
// GPU's on cuda; default 0.2 and 0.85, SGLang's order for a GPU) leaves after the weights, capped at what the running
// requests can use.
int64_t kv_cache_tokens(const ServerOptions& options, const ModelConfig& config, Device device) {
  const int64_t cap = options.max_running_requests * config.max_position_embeddings;
  if (options.max_total_tokens > 0) return options.max_total_tokens;
  const bool gpu = device == Device::CUDA;
  const double fraction = options.mem_fraction_static > 0 ? options.mem_fraction_static : gpu ? 0.85 : 0.2;
  const double memory_bytes =
      gpu ? static_cast<double>(cuda::device_memory_info().total_bytes)
          : static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  const double budget = fraction * memory_bytes - static_cast<double>(checkpoint_bytes(options.model_path));
  const KvCacheGeometry geometry{.n_layers = config.num_hidden_layers,
                                 .n_kv_heads = config.num_key_value_heads,
                                 .head_dim = config.head_dim};
  const int64_t tokens = static_cast<int64_t>(budget / static_cast<double>(geometry.bytes_per_token()));
  FP4_CHECK(tokens >= options.page_size,
            "--mem-fraction-static {} of {:.1f} GB ({} memory) leaves no room for a KV cache after the weights; raise "
            "it or set --max-total-tokens",
            fraction, memory_bytes / 1e9, gpu ? "GPU" : "host");
  return std::min(tokens, cap);
}

void run_serve(ServerOptions options) {
  // SIGINT/SIGTERM are blocked in every thread (threads inherit the mask: block before any starts) and taken by
  // one waiter thread, which stops the server.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  FP4_CHECK(options.tp == 1, "--tp {}: tensor parallelism is not implemented yet; use --tp 1", options.tp);
  QuantOptions quant{.layout = parse_weight_layout(options.moe_backend),
                     .act_quant = parse_act_quant(options.act_quant),
                     .device = parse_device(options.device),
                     .cuda_graph_max_batch = options.disable_cuda_graph ? 0 : options.cuda_graph_max_bs,
                     .deterministic = options.deterministic};
  if (options.served_model_name.empty())
    options.served_model_name = std::filesystem::path(options.model_path).lexically_normal().filename().string();
  if (options.served_model_name.empty())
    options.served_model_name = std::filesystem::path(options.model_path).parent_path().filename().string();

  const Tokenizer tokenizer = Tokenizer::from_files(options.model_path);
  std::optional<ChatTemplate> chat_template;
  try {
    chat_template = ChatTemplate::from_model_dir(options.model_path);
  } catch (const Error& e) {
    spdlog::warn("no chat template ({}); /v1/chat/completions will answer 400", e.what());
  }
  const ModelConfig config = load_model_config(options.model_path);
  EngineServiceOptions service_options{
      .model_path = options.model_path,
      .quant = quant,
      .engine = {.kv_cache_tokens = kv_cache_tokens(options, config, quant.device),
                 .page_size = options.page_size,
                 .scheduler = {.max_running_sequences = options.max_running_requests,
                               .max_prefill_tokens = options.max_prefill_tokens,
                               .chunked_prefill_size = options.chunked_prefill_size},
                 .eos_token_ids = tokenizer.stop_ids(),
                 .weight_version = options.weight_version,
                 .enable_prefix_cache = !options.disable_radix_cache,
                 .record_routed_experts = options.enable_return_routed_experts,
                 .logprobs_mode = options.logprobs_mode == "raw" ? LogprobsMode::Raw : LogprobsMode::Processed,
                 .gpu_sampling = options.gpu_sampling == "on"},
      .max_queued_requests = options.max_queued_requests,
      .max_prompt_tokens = options.max_prompt_tokens,
      .load = {},
      .weights_release_mode = options.weights_release_mode == "discard" ? WeightsReleaseMode::Discard
                                                                         : WeightsReleaseMode::Offload};
  EngineService service(std::move(service_options));
  HttpServer server(options, service, tokenizer, std::move(chat_template));
  const int port = server.bind();

  std::thread signal_waiter([&] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    if (signal == SIGINT || signal == SIGTERM) spdlog::info("signal {}: stopping", signal);
    server.stop();
  });
  spdlog::info("serving {} ({} KV cache tokens, weight_version {}); listening on http://{}:{}",
               options.model_path, service.kv_cache_tokens(), service.weight_version(), options.host, port);
  server.listen();
  pthread_kill(signal_waiter.native_handle(), SIGTERM);  // wakes the waiter when stop() came from elsewhere
  signal_waiter.join();
}

}  // namespace

void register_serve(CLI::App& app) {
  auto options = std::make_shared<ServerOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve a model over HTTP (SGLang-native and OpenAI-compatible API)");
  cmd->add_option("--model-path", options->model_path, "Checkpoint directory (NVFP4 or bf16) with its tokenizer")
      ->required();
  cmd->add_option("--host", options->host, "Address to bind (loopback unless you mean otherwise)")
      ->capture_default_str();
  cmd->add_option("--port", options->port, "Port (0: any free port, named in the log)")->capture_default_str();
  cmd->add_option("--device", options->device, "Compute device")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  add_cuda_graph_flags(cmd, options->cuda_graph_max_bs, options->disable_cuda_graph);
  add_gpu_sampling_flag(cmd, options->gpu_sampling);
  cmd->add_option("--tp", options->tp, "Tensor parallel size (1 only, for now)")->capture_default_str();
  cmd->add_option("--moe-backend", options->moe_backend, "NVFP4 weight layout: cutlass or trtllm")
      ->check(CLI::IsMember({"cutlass", "trtllm"}))
      ->capture_default_str();
  cmd->add_option("--act-quant", options->act_quant, "Activation quantization of NVFP4 layers")
      ->check(CLI::IsMember({"static", "per-token", "none"}))
      ->capture_default_str();
  cmd->add_option("--weight-version", options->weight_version, "Initial weight_version reported in responses")
      ->capture_default_str();
  cmd->add_option("--served-model-name", options->served_model_name,
                  "OpenAI model id (default: the model directory's name)");
  cmd->add_option("--max-running-requests", options->max_running_requests, "Requests decoded together")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-queued-requests", options->max_queued_requests,
                  "Requests waiting beyond the running ones; more get 503 with Retry-After")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-total-tokens", options->max_total_tokens,
                  "KV cache size in tokens (default: from --mem-fraction-static)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--mem-fraction-static", options->mem_fraction_static,
                  "Share of the KV cache's memory (host on cpu, GPU on cuda) for weights + KV cache "
                  "(default: 0.2 on cpu, 0.85 on cuda)")
      ->check(CLI::Range(0.01, 0.95));
  cmd->add_option("--chunked-prefill-size", options->chunked_prefill_size,
                  "Most prompt tokens prefilled per engine step; longer prompts are split over steps while running "
                  "requests keep decoding (-1: never split a prompt)")
      ->check(CLI::PositiveNumber | CLI::IsMember({-1}))
      ->capture_default_str();
  cmd->add_option("--max-prefill-tokens", options->max_prefill_tokens,
                  "Prompt tokens prefilled per engine step (with chunking off, a longer prompt runs as the step's only "
                  "prefill)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--page-size", options->page_size, "KV cache page size in tokens")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--disable-radix-cache", options->disable_radix_cache, "Turn the prefix cache off");
  cmd->add_flag("--deterministic,--enable-deterministic-inference", options->deterministic,
                "A request's tokens and logprobs are bitwise the same whatever else is in the batch (README: "
                "Deterministic inference; the second spelling is SGLang's)");
  cmd->add_flag("--enable-return-routed-experts", options->enable_return_routed_experts,
                "Record every token's MoE routing so requests can ask for it (return_routed_experts)");
  cmd->add_option("--logprobs-mode", options->logprobs_mode,
                  "What reported logprobs are of: raw = log_softmax(logits); processed = log_softmax(logits / "
                  "temperature), before top-k/top-p/min-p")
      ->check(CLI::IsMember({"raw", "processed"}))
      ->capture_default_str();
  cmd->add_option("--weights-release-mode", options->weights_release_mode,
                  "What /release_memory_occupation does with the weights: offload = copy them to host memory and "
                  "back on resume (the same model); discard = drop them, the next step being a reload "
                  "(/update_weights_from_disk), which generation then waits for")
      ->check(CLI::IsMember({"offload", "discard"}))
      ->capture_default_str();
  cmd->add_option("--api-key", options->api_key, "Key every endpoint requires (Authorization: Bearer KEY)");
  cmd->add_option("--admin-api-key", options->admin_api_key,
                  "Key for reload, flush, pause/continue and abort-all (default: --api-key)");
  cmd->add_option("--allowed-model-dir", options->allowed_model_dirs,
                  "Directory a reload's model_path must lie in (repeatable; default: anywhere)");
  cmd->add_option("--max-request-body-bytes", options->max_request_body_bytes, "Larger bodies get 413")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-prompt-tokens", options->max_prompt_tokens,
                  "Longest prompt accepted in tokens; longer ones get 400 (0: the model's context length)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--max-connections", options->max_connections,
                  "Connections served at once, each on its own thread (a stream holds one to its end); one more "
                  "gets 503 with Retry-After")
      ->check(CLI::Range(2, 4096))
      ->capture_default_str();
  cmd->add_option("--read-timeout", options->read_timeout_seconds,
                  "Seconds a client may take to send its request; slower ones are disconnected")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--write-timeout", options->write_timeout_seconds,
                  "Seconds a client may leave a response unread; then it is disconnected and its request aborted")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--keep-alive-timeout", options->keep_alive_timeout_seconds,
                  "Seconds an idle keep-alive connection stays open")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([options] {
    std::signal(SIGPIPE, SIG_IGN);  // a client that disconnects must not kill the server
    run_serve(*options);
  });
}

}  // namespace fp4serve::tools
