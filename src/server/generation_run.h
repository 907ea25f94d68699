// One submitted request as the HTTP thread serving it sees it: the channel from the engine thread, its text so far
// (stop strings applied) and how it ended. Destroying an unfinished run cancels its request, so a client that goes
// away (handler returns, stream write fails) frees its engine slot. Owned by one HTTP thread; not thread-safe.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/engine_service.h"
#include "server/output_text.h"

namespace fp4serve {

// What the HTTP layers ask for one generation (one prompt, one sample).
struct GenerationJob {
  GenerateRequest request;
  std::vector<std::string> stop_strings;
  bool skip_special_tokens = true;
  std::string rid;
};

class GenerationRun {
 public:
  // Submits; throws what EngineService::submit throws.
  GenerationRun(EngineService& service, const Tokenizer& tokenizer, GenerationJob job, std::string_view name);
  ~GenerationRun();
  GenerationRun(const GenerationRun&) = delete;
  GenerationRun& operator=(const GenerationRun&) = delete;

  // Waits up to `timeout` for news and takes it in. Returns true when something new arrived.
  bool poll(std::chrono::milliseconds timeout);
  bool ended() const { return ended_; }

  OutputText& output() { return output_; }
  const OutputText& output() const { return output_; }
  int64_t prompt_tokens() const { return static_cast<int64_t>(prompt_.size()); }
  const std::vector<int32_t>& prompt() const { return prompt_; }
  // The prompt logprobs the engine computed (GenerateResult::input_logprobs), once its prompt has been prefilled.
  const std::vector<PositionLogprobs>& input_logprobs() const { return input_logprobs_; }
  // Valid once ended(): the engine's result (finish reason, cached tokens, weight version) or the error.
  const std::optional<GenerateResult>& result() const { return result_; }
  const std::optional<ChannelError>& error() const { return error_; }
  // The weights it runs on, known from admission; once ended, those of its last token (only an update while paused
  // in place, or /update_weight_version, changes it mid-request: see GenerateResult::weight_version_spans).
  const std::optional<std::string>& weight_version() const { return weight_version_; }
  double seconds_elapsed() const;
  const std::string& rid() const { return rid_; }
  int64_t max_new_tokens() const { return max_new_tokens_; }

 private:
  EngineService& service_;
  std::shared_ptr<RequestChannel> channel_;
  OutputText output_;
  std::string rid_;
  std::vector<int32_t> prompt_;
  std::vector<PositionLogprobs> input_logprobs_;
  int64_t max_new_tokens_;
  std::chrono::steady_clock::time_point start_;
  std::optional<GenerateResult> result_;
  std::optional<ChannelError> error_;
  std::optional<std::string> weight_version_;
  bool ended_ = false;
  bool cancelled_ = false;
};

}  // namespace fp4serve
