// One request's results on their way from the engine thread (producer) to the HTTP thread serving it (consumer).
// First the weight version it runs on (at admission), its prompt logprobs (once, when asked for), tokens in generation
// order, then exactly one end: a GenerateResult, or an error (bad request found late, engine failure). Every method is thread-safe; the producer never blocks on a slow consumer (tokens accumulate).
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace fp4serve {

struct GeneratedToken {
  int32_t id;
  float logprob;               // in the engine's logprobs mode
  TokenLogprobs top_logprobs;  // most probable first, when asked for
  TokenLogprobs ids_logprobs;  // of the request's token_ids_logprob, when asked for
};

struct ChannelError {
  int http_status;  // 400: the request was invalid; 500/503: the server could not run it
  std::string message;
};

class RequestChannel {
 public:
  explicit RequestChannel(int64_t ticket) : ticket_(ticket) {}

  int64_t ticket() const { return ticket_; }  // the service's handle for cancel()

  // Producer side. close/close_with_error end the stream; later calls are ignored.
  void admitted(std::string weight_version);
  void push_input_logprobs(std::vector<PositionLogprobs> input_logprobs);
  void push(GeneratedToken token);
  void close(GenerateResult result);
  void close_with_error(ChannelError error);

  // Consumer side: waits up to `timeout` for news, then hands over the tokens since the last call and, once, the
  // end (result or error).
  struct News {
    std::optional<std::string> weight_version;  // once, when admitted
    std::optional<std::vector<PositionLogprobs>> input_logprobs;  // once, when its prompt is computed
    std::vector<GeneratedToken> tokens;
    std::optional<GenerateResult> result;
    std::optional<ChannelError> error;
    bool ended() const { return result.has_value() || error.has_value(); }
  };
  News wait(std::chrono::milliseconds timeout);

 private:
  const int64_t ticket_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<std::string> weight_version_;
  std::optional<std::vector<PositionLogprobs>> input_logprobs_;
  std::vector<GeneratedToken> tokens_;
  std::optional<GenerateResult> result_;
  std::optional<ChannelError> error_;
  bool closed_ = false;
};

}  // namespace fp4serve
