// The HTTP server in the test process (EngineService + HttpServer on 127.0.0.1, any free port), for what a child
// process cannot be given: an injected I/O layer or staging allocator (LoadOptions). Requests still go through real
// sockets and the real handlers. Stopped when its handle goes away.
#pragma once
#include <httplib.h>

#include <filesystem>
#include <memory>
#include <thread>

#include "server/engine_service.h"
#include "server/http_server.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve::test {

class InProcessServer {
 public:
  InProcessServer(const std::filesystem::path& model, LoadOptions load, ServerOptions options = {});
  ~InProcessServer();
  InProcessServer(const InProcessServer&) = delete;
  InProcessServer& operator=(const InProcessServer&) = delete;

  int port() const { return port_; }
  httplib::Client client(int read_timeout_seconds = 60) const;

 private:
  Tokenizer tokenizer_;
  std::unique_ptr<EngineService> service_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
  std::thread listener_;
};

}  // namespace fp4serve::test
