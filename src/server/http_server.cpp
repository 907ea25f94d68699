#include "server/http_server.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "engine/kv_cache.h"
#include "io/json_file.h"
#include "io/quant_config.h"
#include "server/http_error.h"
#include "server/metrics.h"
#include "server/native_api.h"
#include "server/openai_api.h"
#include "server/tensor_update.h"

namespace fp4serve {

namespace {

nlohmann::json memory_tags_json(const std::vector<MemoryTag>& tags) {
  nlohmann::json names = nlohmann::json::array();
  for (MemoryTag tag : tags) names.push_back(memory_tag_name(tag));
  return names;
}

// Compares without an early exit, so the time taken does not reveal how much of a key was right.
bool same_secret(std::string_view given, std::string_view expected) {
  if (expected.empty()) return false;
  unsigned char difference = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i)
    difference |= static_cast<unsigned char>(given[i] ^ expected[i % expected.size()]);
  return difference == 0;
}

// Component-wise, so /models-evil is not inside /models.
bool is_inside(const std::filesystem::path& path, const std::filesystem::path& dir) {
  return std::mismatch(dir.begin(), dir.end(), path.begin(), path.end()).first == dir.end();
}

}  // namespace

nlohmann::json to_json(const ServerOptions& o) {
  auto secret = [](const std::string& key) { return key.empty() ? "" : "<set>"; };
  return {{"model_path", o.model_path},
          {"served_model_name", o.served_model_name},
          {"host", o.host},
          {"port", o.port},
          {"device", o.device},
          {"tp_size", o.tp},
          {"moe_backend", o.moe_backend},
          {"act_quant", o.act_quant},
          {"weight_version", o.weight_version},
          {"max_running_requests", o.max_running_requests},
          {"max_queued_requests", o.max_queued_requests},
          {"max_total_tokens", o.max_total_tokens},
          {"mem_fraction_static", o.mem_fraction_static},
          {"chunked_prefill_size", o.chunked_prefill_size},
          {"max_prefill_tokens", o.max_prefill_tokens},
          {"page_size", o.page_size},
          {"disable_radix_cache", o.disable_radix_cache},
          {"enable_return_routed_experts", o.enable_return_routed_experts},
          {"logprobs_mode", o.logprobs_mode},
          {"enable_deterministic_inference", o.deterministic},
          {"gpu_sampling", o.gpu_sampling},
          {"weights_release_mode", o.weights_release_mode},
          {"api_key", secret(o.api_key)},
          {"admin_api_key", secret(o.admin_api_key)},
          {"allowed_model_dirs", o.allowed_model_dirs},
          {"max_request_body_bytes", o.max_request_body_bytes},
          {"max_prompt_tokens", o.max_prompt_tokens},
          {"max_connections", o.max_connections},
          {"read_timeout_seconds", o.read_timeout_seconds},
          {"write_timeout_seconds", o.write_timeout_seconds},
          {"keep_alive_timeout_seconds", o.keep_alive_timeout_seconds}};
}

HttpServer::HttpServer(ServerOptions options, EngineService& service, const Tokenizer& tokenizer,
                       std::optional<ChatTemplate> chat_template)
    : options_(std::move(options)),
      service_(service),
      tokenizer_(tokenizer),
      chat_template_(std::move(chat_template)),
      context_{.options = options_,
               .service = service_,
               .tokenizer = tokenizer_,
               .chat_template = chat_template_,
               .model_name = options_.served_model_name} {
  const int max_connections = options_.max_connections;
  http_.new_task_queue = [max_connections] { return new ConnectionLimit(static_cast<size_t>(max_connections)); };
  http_.set_pre_routing_handler([this](const httplib::Request&, httplib::Response& response) {
    if (!ConnectionLimit::over_limit) return httplib::Server::HandlerResponse::Unhandled;
    response.set_header("Retry-After", "1");
    response.set_header("Connection", "close");
    send_error(response, 503, fmt::format("the server has {} connections open, its limit (--max-connections); "
                                          "retry later", options_.max_connections));
    return httplib::Server::HandlerResponse::Handled;
  });
  http_.set_payload_max_length(static_cast<size_t>(options_.max_request_body_bytes));
  http_.set_read_timeout(options_.read_timeout_seconds, 0);
  http_.set_write_timeout(options_.write_timeout_seconds, 0);
  http_.set_keep_alive_max_count(1000);
  http_.set_keep_alive_timeout(options_.keep_alive_timeout_seconds);
  http_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& request,
                                                                     httplib::Response& response) {
    if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    switch (response.status) {
      case 404: message = fmt::format("no endpoint {} {}; see GET /v1/models and http-api.md", request.method,
                                      request.path); break;
      case 413: message = fmt::format("request body larger than {} bytes (--max-request-body-bytes)",
                                      options_.max_request_body_bytes); break;
      case 400: message = fmt::format("malformed HTTP request for {} {} (a POST needs a Content-Length header or a "
                                      "chunked body)", request.method, request.path); break;
      default: message = fmt::format("HTTP {} for {} {}", response.status, request.method, request.path);
    }
    send_error(response, response.status, message);
    return httplib::Server::HandlerResponse::Handled;
  }));
  add_routes();
}

int HttpServer::bind() {
  const int port = options_.port == 0 ? http_.bind_to_any_port(options_.host)
                                      : (http_.bind_to_port(options_.host, options_.port) ? options_.port : -1);
  FP4_CHECK(port > 0, "cannot listen on {}:{} (address in use, or not an address of this machine); choose "
            "another --host/--port", options_.host, options_.port);
  http_.raise_backlog(SOMAXCONN);
  return port;
}

void HttpServer::Listener::raise_backlog(int backlog) {
  FP4_CHECK(::listen(svr_sock_, backlog) == 0, "cannot set the listen backlog to {}: {}", backlog, std::strerror(errno));
}

thread_local bool HttpServer::ConnectionLimit::over_limit = false;

HttpServer::ConnectionLimit::ConnectionLimit(size_t max_connections)
    : max_connections_(max_connections), workers_(max_connections), overflow_(kOverflowThreads) {}

void HttpServer::ConnectionLimit::enqueue(std::function<void()> serve_connection) {
  if (admitted_.fetch_add(1) >= max_connections_) {
    admitted_.fetch_sub(1);
    overflow_.enqueue([serve_connection = std::move(serve_connection)] {
      over_limit = true;
      serve_connection();
      over_limit = false;
    });
    return;
  }
  workers_.enqueue([this, serve_connection = std::move(serve_connection)] {
    serve_connection();
    admitted_.fetch_sub(1);
  });
}

void HttpServer::ConnectionLimit::shutdown() {
  workers_.shutdown();
  overflow_.shutdown();
}

void HttpServer::listen() { http_.listen_after_bind(); }
void HttpServer::stop() { http_.stop(); }

// Admin endpoints take the admin key, or the API key when no admin key is set; the others take either key.
void HttpServer::check_key(const httplib::Request& request, bool admin) const {
  const std::string& admin_key = options_.admin_api_key.empty() ? options_.api_key : options_.admin_api_key;
  if (admin ? admin_key.empty() : options_.api_key.empty()) return;
  const std::string header = request.get_header_value("Authorization");
  const std::string_view prefix = "Bearer ";
  if (!header.starts_with(prefix) || header.size() == prefix.size())
    throw HttpError(401, "missing API key: send the header 'Authorization: Bearer <key>'");
  const std::string_view given = std::string_view(header).substr(prefix.size());
  if (same_secret(given, admin_key)) return;
  if (!admin && same_secret(given, options_.api_key)) return;
  if (admin && same_secret(given, options_.api_key))
    throw HttpError(403, "this endpoint needs the admin API key (--admin-api-key)");
  throw HttpError(401, "invalid API key");
}

httplib::Server::Handler HttpServer::guarded(
    bool admin, std::function<void(const httplib::Request&, httplib::Response&)> handler) {
  return [this, admin, handler = std::move(handler)](const httplib::Request& request, httplib::Response& response) {
    try {
      check_key(request, admin);
      handler(request, response);
    } catch (const HttpError& e) {
      send_error(response, e.status(), e.what());
    } catch (const Error& e) {
      send_error(response, 400, e.what());
    } catch (const std::exception& e) {
      spdlog::error("{} {}: {}", request.method, request.path, e.what());
      send_error(response, 500, fmt::format("internal error: {}", e.what()));
    }
  };
}

void HttpServer::add_routes() {
  const ApiContext& c = context_;
  auto api = [&](auto fn) { return [&c, fn](const httplib::Request& q, httplib::Response& r) { fn(c, q, r); }; };
  http_.Post("/generate", guarded(false, api(handle_generate)));
  http_.Post("/v1/completions", guarded(false, api(handle_completions)));
  http_.Post("/v1/chat/completions", guarded(false, api(handle_chat_completions)));
  http_.Get("/v1/models", guarded(false, api(handle_models)));

  http_.Post("/update_weights_from_disk", guarded(true, [this](auto& q, auto& r) { update_weights(q, r); }));
  http_.Post("/update_weights_from_tensor",
             guarded(true, [this](auto& q, auto& r) { update_weights_from_tensor(q, r); }));
  http_.Post("/flush_cache", guarded(true, [this](auto&, auto& r) {
    const FlushOutcome outcome = service_.flush_cache();
    send_json(r, {{"success", outcome.success}, {"message", outcome.message}}, outcome.success ? 200 : 400);
  }));
  http_.Post("/abort_request", guarded(false, [this](auto& q, auto& r) { abort_request(q, r); }));
  http_.Post("/pause_generation", guarded(true, [this](auto& q, auto& r) { pause_generation(q, r); }));
  http_.Post("/continue_generation", guarded(true, [this](auto&, auto& r) {
    service_.resume();
    send_json(r, {{"success", true}, {"message", "Generation continues."}});
  }));

  http_.Post("/release_memory_occupation", guarded(true, [this](auto& q, auto& r) { memory_occupation(q, r, true); }));
  http_.Post("/resume_memory_occupation", guarded(true, [this](auto& q, auto& r) { memory_occupation(q, r, false); }));
  http_.Post("/update_weight_version", guarded(true, [this](auto& q, auto& r) { update_weight_version(q, r); }));
  http_.Get("/get_weight_version", guarded(false, [this](auto&, auto& r) {
    send_json(r, {{"weight_version", service_.weight_version()}});
  }));
  http_.Get("/get_model_info", guarded(false, [this](auto&, auto& r) {
    const ModelConfig& config = service_.model_config();
    send_json(r, {{"model_path", service_.model_path()},
                  {"tokenizer_path", options_.model_path},
                  {"weight_version", service_.weight_version()},
                  {"architecture", architecture_name(config.architecture)},
                  {"quantization", quant_algo_name(load_quant_config(options_.model_path).algo)},
                  {"is_generation", true},
                  {"max_context_length", config.max_position_embeddings}});
  }));
  http_.Get("/get_weights_digest", guarded(false, [this](auto&, auto& r) {
    const ServedWeights served = service_.served_weights();
    if (!served.unavailable.empty()) throw HttpError(503, served.unavailable);
    send_json(r, {{"weights_digest", served.digest},
                  {"weight_version", served.weight_version},
                  {"model_path", served.model_path}});
  }));
  http_.Get("/get_server_info", guarded(false, [this](auto&, auto& r) { send_json(r, server_info()); }));
  http_.Get("/health", guarded(false, [this](auto&, auto& r) {
    if (!service_.serving())
      throw HttpError(503, "the server cannot generate: its weights are inconsistent after a failed reload, or the "
                           "engine failed (see the log); reload a valid checkpoint");
    // Released memory is a state the trainer asked for: healthy, and said so. Discarded weights need a reload.
    const ServiceStats stats = service_.stats();
    nlohmann::json body = nlohmann::json::object();
    if (!stats.released_memory.empty()) body["released_memory"] = memory_tags_json(stats.released_memory);
    if (stats.weights_need_reload) {
      if (stats.released_memory.empty()) throw HttpError(503, stats.generation_unavailable);
      body["weights_need_reload"] = true;
    }
    send_json(r, body);
  }));
  http_.Get("/health_generate", guarded(false, [this](auto&, auto& r) { health_generate(r); }));
  http_.Get("/metrics", guarded(false, [this](auto&, auto& r) {
    r.set_content(prometheus_metrics(service_.stats(), service_.weight_version()), "text/plain; version=0.0.4");
  }));
}

ReloadRequest parse_update_weights_request(const nlohmann::json& body) {
  const std::string where = "request body";
  ReloadRequest reload{.model_path = required_string(body, "model_path", where),
                       .tensors = {},
                       .flush_cache = optional_bool(body, "flush_cache", where).value_or(true),
                       .abort_all_requests = optional_bool(body, "abort_all_requests", where).value_or(false),
                       .weight_version = optional_string(body, "weight_version", where)};
  FP4_CHECK(!reload.model_path.empty(), "request body: field 'model_path' is empty; give a checkpoint directory");
  if (const auto format = optional_string(body, "load_format", where))
    FP4_CHECK(*format == "auto" || *format == "safetensors",
              "request body: load_format '{}' is not supported; use \"auto\" or \"safetensors\" (or null)", *format);
  return reload;
}

std::filesystem::path HttpServer::allowed_model_path(const std::string& model_path) const {
  std::error_code error;
  const std::filesystem::path resolved = std::filesystem::canonical(model_path, error);
  FP4_CHECK(!error, "model_path {}: {}", model_path, error.message());
  if (options_.allowed_model_dirs.empty()) return resolved;
  for (const std::string& dir : options_.allowed_model_dirs) {
    const std::filesystem::path allowed = std::filesystem::weakly_canonical(dir, error);
    if (!error && is_inside(resolved, allowed)) return resolved;
  }
  throw HttpError(403, fmt::format("model_path {} is outside the allowed model directories (--allowed-model-dir)",
                                   model_path));
}

void HttpServer::update_weights(const httplib::Request& request, httplib::Response& response) {
  apply_weight_update(response, [&] {
    ReloadRequest reload = parse_update_weights_request(parse_body(request));
    reload.model_path = allowed_model_path(reload.model_path.string());
    return reload;
  });
}

// The tensors are copied to host memory here, on the HTTP thread, while the engine still generates; the engine
// thread then applies them like a directory (README, "Weight update from tensors").
void HttpServer::update_weights_from_tensor(const httplib::Request& request, httplib::Response& response) {
  apply_weight_update(response, [&] {
    TensorUpdateRequest parsed = parse_update_weights_from_tensor_request(parse_body(request));
    return ReloadRequest{.model_path = {},
                         .tensors = copy_to_host(std::move(parsed.tensors), options_.device == "cuda"),
                         .flush_cache = parsed.flush_cache,
                         .abort_all_requests = parsed.abort_all_requests,
                         .weight_version = std::move(parsed.weight_version)};
  });
}

// Every outcome but an authentication failure answers in the reload's own shape, as SGLang clients expect.
void HttpServer::apply_weight_update(httplib::Response& response, const std::function<ReloadRequest()>& build) {
  const auto answer = [&response](int status, bool success, const std::string& message, int64_t paused) {
    send_json(response, {{"success", success}, {"message", message}, {"num_paused_requests", paused}}, status);
  };
  ReloadRequest reload;
  try {
    reload = build();
  } catch (const HttpError& e) {
    answer(e.status(), false, e.what(), 0);
    return;
  } catch (const Error& e) {
    answer(400, false, fmt::format("Failed to update model weights: {}", e.what()), 0);
    return;
  }
  const ReloadOutcome outcome = service_.update_weights(std::move(reload));
  answer(outcome.success ? 200 : 400, outcome.success, outcome.message, outcome.num_paused_requests);
}

// SGLang's modes and default ("abort"); an empty body takes the default.
void HttpServer::pause_generation(const httplib::Request& request, httplib::Response& response) {
  const nlohmann::json body = request.body.empty() ? nlohmann::json::object() : parse_body(request);
  const std::string mode = optional_string(body, "mode", "request body").value_or("abort");
  const std::map<std::string, PauseMode> modes{
      {"abort", PauseMode::Abort}, {"retract", PauseMode::Retract}, {"in_place", PauseMode::InPlace}};
  const auto it = modes.find(mode);
  FP4_CHECK(it != modes.end(), "request body: field 'mode' = \"{}\" is not a pause mode; use \"abort\", "
            "\"retract\" or \"in_place\"", mode);
  service_.pause(it->second);
  send_json(response, {{"success", true},
                       {"message", fmt::format("Generation paused ({}); new requests are held until "
                                               "/continue_generation.", mode)}});
}

void HttpServer::update_weight_version(const httplib::Request& request, httplib::Response& response) {
  const nlohmann::json body = parse_body(request);
  const std::string where = "request body";
  const std::string version = required_string(body, "new_version", where);
  FP4_CHECK(!version.empty(), "request body: field 'new_version' is empty; give the label of the served weights");
  service_.update_weight_version(version, optional_bool(body, "abort_all_requests", where).value_or(false));
  send_json(response, {{"success", true},
                       {"message", fmt::format("weight_version is now {}", version)},
                       {"weight_version", version}});
}

std::vector<MemoryTag> parse_memory_tags(const nlohmann::json& body) {
  FP4_CHECK(body.is_object(), "request body: must be a JSON object like {{\"tags\": [\"weights\"]}}, got {}",
            json_type_name(body));
  if (!body.contains("tags") || body["tags"].is_null())
    return std::vector<MemoryTag>(std::begin(kAllMemoryTags), std::end(kAllMemoryTags));
  std::vector<MemoryTag> tags;
  for (const std::string& name : optional_string_list(body, "tags", "request body")) {
    const MemoryTag tag = parse_memory_tag(name);
    if (std::find(tags.begin(), tags.end(), tag) == tags.end()) tags.push_back(tag);
  }
  return tags;
}

// SGLang answers these with an empty body; ours says what changed. A release refused because requests are in
// flight is a conflict with the server's state (409), not a bad request.
void HttpServer::memory_occupation(const httplib::Request& request, httplib::Response& response, bool release) {
  const std::vector<MemoryTag> tags =
      parse_memory_tags(request.body.empty() ? nlohmann::json::object() : parse_body(request));
  const MemoryOutcome outcome = release ? service_.release_memory(tags) : service_.resume_memory(tags);
  const ServiceStats stats = service_.stats();
  send_json(response,
            {{"success", outcome.success},
             {"message", outcome.message},
             {release ? "released" : "resumed", memory_tags_json(outcome.changed)},
             {release ? "already_released" : "not_released", memory_tags_json(outcome.unchanged)},
             {"nothing_to_do", memory_tags_json(outcome.nothing_to_do)},
             {"released_memory", memory_tags_json(stats.released_memory)},
             {"weights_need_reload", stats.weights_need_reload}},
            outcome.success ? 200 : outcome.refused_busy ? 409 : 500);
}

void HttpServer::abort_request(const httplib::Request& request, httplib::Response& response) {
  const nlohmann::json body = parse_body(request);
  const bool all = optional_bool(body, "abort_all", "request body").value_or(false);
  if (all) {
    check_key(request, /*admin=*/true);
    send_json(response, {{"success", true}, {"num_aborted", service_.abort_all()}});
    return;
  }
  const std::string rid = required_string(body, "rid", "request body");
  send_json(response, {{"success", true}, {"num_aborted", service_.abort(rid)}});
}

void HttpServer::health_generate(httplib::Response& response) {
  GenerationJob job;
  job.request.input_ids = {0};
  job.request.sampling.temperature = 0.0f;
  job.request.max_new_tokens = 1;
  job.rid = "health_generate";
  GenerationRun run(service_, tokenizer_, std::move(job), "health_generate");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!run.ended() && std::chrono::steady_clock::now() < deadline) run.poll(std::chrono::milliseconds(100));
  if (!run.ended() || run.error() || run.output().tokens().empty())
    throw HttpError(503, "health_generate: the engine did not produce a token within 20 s");
  send_json(response, nlohmann::json::object());
}

nlohmann::json HttpServer::server_info() const {
  const ModelConfig& config = service_.model_config();
  const KvCacheGeometry geometry{.n_layers = config.num_hidden_layers,
                                 .n_kv_heads = config.num_key_value_heads,
                                 .head_dim = config.head_dim};
  const ServiceStats stats = service_.stats();
  nlohmann::json info = to_json(options_);
  info["weight_version"] = service_.weight_version();
  info["max_total_num_tokens"] = service_.kv_cache_tokens();
  info["memory"] = {{"weights_bytes", service_.weights_bytes()},
                    {"weights_bytes_without_aliasing", service_.weights_bytes_without_aliasing()},
                    {"kv_cache_bytes", static_cast<int64_t>(geometry.bytes_per_token()) * service_.kv_cache_tokens()},
                    {"kv_cache_bytes_per_token", geometry.bytes_per_token()},
                    {"kv_cache_pages", stats.kv_pages_total},
                    {"kv_cache_pages_used", stats.kv_pages_used},
                    {"workspace_bytes", stats.workspace_bytes},
                    {"staging_bytes", stats.staging_bytes}};
  info["released_memory"] = memory_tags_json(stats.released_memory);
  info["weights_need_reload"] = stats.weights_need_reload;
  info["version"] = "fp4serve 0.1";
  return info;
}

}  // namespace fp4serve
