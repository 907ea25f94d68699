#include "in_process_server.h"

#include "server_fixture.h"

namespace fp4serve::test {

InProcessServer::InProcessServer(const std::filesystem::path& model, LoadOptions load, ServerOptions options)
    : tokenizer_(Tokenizer::from_files(model)) {
  options.model_path = model.string();
  options.port = 0;
  service_ = std::make_unique<EngineService>(EngineServiceOptions{
      .model_path = model,
      .quant = {},
      .engine = {.kv_cache_tokens = 4096,
                 .eos_token_ids = tokenizer_.stop_ids(),
                 .weight_version = options.weight_version},
      .max_queued_requests = options.max_queued_requests,
      .max_prompt_tokens = options.max_prompt_tokens,
      .load = std::move(load)});
  server_ = std::make_unique<HttpServer>(options, *service_, tokenizer_, std::nullopt);
  port_ = server_->bind();
  listener_ = std::thread([this] { server_->listen(); });
}

InProcessServer::~InProcessServer() {
  server_->stop();
  listener_.join();
}

httplib::Client InProcessServer::client(int read_timeout_seconds) const {
  return local_client(port_, read_timeout_seconds);
}

}  // namespace fp4serve::test
