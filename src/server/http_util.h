// What every endpoint handler shares: the context (service, tokenizer, options), JSON in and out (bodies parsed
// strictly; output always valid UTF-8, ill-formed bytes replaced), and the two ways of waiting on generation runs:
// to the end (plain JSON) or as Server-Sent Events (`data: {...}\n\n` chunks, then `data: [DONE]`).
// Handlers run on cpp-httplib's threads; everything here is safe to call from several at once.
#pragma once
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "server/engine_service.h"
#include "server/generation_run.h"
#include "server/server_options.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve {

struct ApiContext {
  const ServerOptions& options;
  EngineService& service;
  const Tokenizer& tokenizer;
  const std::optional<ChatTemplate>& chat_template;  // absent when the model directory has none
  std::string model_name;                            // OpenAI "model"
};

std::string dump_json(const nlohmann::json& value);  // compact; ill-formed UTF-8 replaced by U+FFFD
nlohmann::json parse_body(const httplib::Request& request);  // an object, else Error naming the problem
nlohmann::json parse_body_text(std::string_view text);       // the same for a body's text
void send_json(httplib::Response& response, const nlohmann::json& body, int status = 200);
void send_error(httplib::Response& response, int status, const std::string& message);

using Runs = std::vector<std::unique_ptr<GenerationRun>>;
// Submits every job (all or none: a rejected one cancels those already submitted and rethrows).
Runs start_runs(const ApiContext& context, std::vector<GenerationJob> jobs);
// Waits until every run has ended; throws HttpError with the first run's error.
void wait_all(Runs& runs);

// Streams the runs' progress as SSE. `chunks_for(i)` is called after run i took news (and once more when it
// ends) and returns the events to send; `closing_chunks()` runs after every run has ended, before [DONE].
// A failed write (the client left) ends the response, and destroying the runs cancels what still runs.
struct StreamPlan {
  Runs runs;
  std::function<std::vector<nlohmann::json>(size_t run_index)> chunks_for;
  std::function<std::vector<nlohmann::json>()> closing_chunks;
};
void stream_sse(httplib::Response& response, std::shared_ptr<StreamPlan> plan);

// Routing replay's wire form, SGLang's: base64 of the ids as little-endian int32, [rows, n_layers, top_k] in C order.
std::string routed_experts_base64(std::span<const int32_t> ids);

// Token text for logprob listings: the token's own text (U+FFFD for a partial character) and its raw bytes.
std::string token_text(const Tokenizer& tokenizer, int32_t id);
std::vector<uint8_t> token_bytes(const Tokenizer& tokenizer, int32_t id);

}  // namespace fp4serve
