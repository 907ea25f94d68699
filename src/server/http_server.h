// The HTTP front: cpp-httplib routes for every endpoint of http-api.md, API keys, the resource limits (request body,
// open connections, slow client and idle timeouts; prompt length is the engine service's) and JSON errors for
// every failure (4xx for the client's mistakes, the server keeps serving).
// Handler threads only parse, post work to the EngineService and wait; stop() is thread-safe.
#pragma once
#include <httplib.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "server/engine_service.h"
#include "server/http_util.h"
#include "server/server_options.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve {

// A /update_weights_from_disk body, validated; model_path is as given (the handler resolves it and checks it
// against --allowed-model-dir). Throws Error naming the field at fault.
ReloadRequest parse_update_weights_request(const nlohmann::json& body);

// The "tags" of a /release_memory_occupation or /resume_memory_occupation body: absent or null means every tag
// (SGLang's default). Throws Error naming the tag at fault.
std::vector<MemoryTag> parse_memory_tags(const nlohmann::json& body);

class HttpServer {
 public:
  // The service and tokenizer must outlive the server.
  HttpServer(ServerOptions options, EngineService& service, const Tokenizer& tokenizer,
             std::optional<ChatTemplate> chat_template);

  int bind();    // binds options.host:port (port 0: any free one); returns the port; throws Error on failure
  void listen();  // serves until stop()
  void stop();

 private:
  void add_routes();
  // Wraps a handler: API key check, errors -> JSON (Error: 400, HttpError: its status, anything else: 500).
  httplib::Server::Handler guarded(bool admin, std::function<void(const httplib::Request&, httplib::Response&)> h);
  void check_key(const httplib::Request& request, bool admin) const;
  std::filesystem::path allowed_model_path(const std::string& model_path) const;

  void update_weights(const httplib::Request& request, httplib::Response& response);
  void update_weights_from_tensor(const httplib::Request& request, httplib::Response& response);
  // Builds the update (an Error or HttpError there is answered in the update's shape, nothing applied) and runs it.
  void apply_weight_update(httplib::Response& response, const std::function<ReloadRequest()>& build);
  void abort_request(const httplib::Request& request, httplib::Response& response);
  void pause_generation(const httplib::Request& request, httplib::Response& response);
  void update_weight_version(const httplib::Request& request, httplib::Response& response);
  void memory_occupation(const httplib::Request& request, httplib::Response& response, bool release);
  void health_generate(httplib::Response& response);
  nlohmann::json server_info() const;

  // Serves at most max_connections connections at once, each on its own worker thread (a stream holds its thread
  // to the end). A connection beyond that is answered 503 at once by a small overflow pool rather than queued
  // behind streams that may last minutes: uvicorn's --limit-concurrency, which SGLang and vLLM serve behind.
  class ConnectionLimit : public httplib::TaskQueue {
   public:
    explicit ConnectionLimit(size_t max_connections);
    void enqueue(std::function<void()> serve_connection) override;
    void shutdown() override;
    static thread_local bool over_limit;  // set while an overflow thread serves a connection: answer 503

   private:
    static constexpr size_t kOverflowThreads = 4;
    const size_t max_connections_;
    std::atomic<size_t> admitted_{0};
    httplib::ThreadPool workers_, overflow_;
  };

  // cpp-httplib 0.11 listens with a backlog of 5: a burst of clients reconnecting together (every stream ends at
  // an abort-all) overflows it and connections fail. Listening again on the bound socket raises it.
  class Listener : public httplib::Server {
   public:
    void raise_backlog(int backlog);
  };

  ServerOptions options_;
  EngineService& service_;
  const Tokenizer& tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  ApiContext context_;
  Listener http_;
};

}  // namespace fp4serve
