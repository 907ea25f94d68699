// OpenAI-compatible endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (messages rendered
// with the model's chat template). Choices are ordered prompt-major then sample; SGLang's extra sampling fields
// (top_k, min_p, ignore_eos, stop_token_ids) are accepted; "metadata.weight_version" names the weights used.
#pragma once
#include <httplib.h>

#include "server/http_util.h"

namespace fp4serve {

void handle_models(const ApiContext& context, const httplib::Request& request, httplib::Response& response);
void handle_completions(const ApiContext& context, const httplib::Request& request, httplib::Response& response);
void handle_chat_completions(const ApiContext& context, const httplib::Request& request,
                             httplib::Response& response);

}  // namespace fp4serve
