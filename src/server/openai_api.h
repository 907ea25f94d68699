// OpenAI-compatible endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (messages rendered
// with the model's chat template). Choices are ordered prompt-major then sample; SGLang's extra sampling fields
// (top_k, min_p, ignore_eos, stop_token_ids) are accepted; "metadata.weight_version" names the weights used.
#pragma once
#include <httplib.h>

#include "server/http_util.h"
#include "server/request_fields.h"

namespace fp4serve {

enum class OpenAiEndpoint { Completions, Chat };

// A /v1/completions or /v1/chat/completions body, validated: prompts tokenized (chat: rendered with the template
// first), sampling and logprob fields checked.
struct OpenAiRequest {
  OpenAiEndpoint api = OpenAiEndpoint::Completions;
  std::vector<std::vector<int32_t>> prompts;
  SamplingSpec spec;
  bool logprobs = false;
  int32_t top_logprobs = 0;
  bool echo = false;                       // completions: the prompt first, in text and logprobs
  std::optional<int32_t> prompt_logprobs;  // vLLM's extension: prompt tokens' logprobs with this many top ones
  bool tokens_as_ids = false;              // vLLM's return_tokens_as_token_ids: tokens shown as "token_id:N"
  bool stream = false;
  bool include_usage = false;
  bool wants_prompt_logprobs() const { return (echo && logprobs) || prompt_logprobs.has_value(); }
};

// /v1/chat/completions. Without max_tokens the answer may take the rest of `context_room` tokens after the prompt.
// Throws Error naming the field at fault (or the missing chat template). Pure: reads nothing but its arguments.
OpenAiRequest parse_chat_request(const Tokenizer& tokenizer, const std::optional<ChatTemplate>& chat_template,
                                 int64_t context_room, const nlohmann::json& body);

void handle_models(const ApiContext& context, const httplib::Request& request, httplib::Response& response);
void handle_completions(const ApiContext& context, const httplib::Request& request, httplib::Response& response);
void handle_chat_completions(const ApiContext& context, const httplib::Request& request,
                             httplib::Response& response);

}  // namespace fp4serve
