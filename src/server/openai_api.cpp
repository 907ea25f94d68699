#include "server/openai_api.h"

#include <algorithm>
#include <chrono>

#include "io/json_file.h"
#include "server/http_error.h"
#include "server/openai_logprobs.h"
#include "server/request_fields.h"

namespace fp4serve {

namespace {

constexpr std::string_view kBody = "request body";

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool has(const nlohmann::json& body, const char* field) { return body.contains(field) && !body[field].is_null(); }

// Fields both endpoints spell the same.
void read_common(const nlohmann::json& body, OpenAiRequest& parsed) {
  read_sampling_fields(body, kBody, parsed.spec);
  read_routing_fields(body, kBody, parsed.spec);
  parsed.stream = optional_bool(body, "stream", kBody).value_or(false);
  parsed.tokens_as_ids = optional_bool(body, "return_tokens_as_token_ids", kBody).value_or(false);
  if (has(body, "stream_options")) {
    const nlohmann::json& options = body["stream_options"];
    parsed.include_usage = optional_bool(options, "include_usage", "stream_options").value_or(false);
  }
}

std::vector<std::vector<int32_t>> read_prompts(const Tokenizer& tokenizer, const nlohmann::json& prompt) {
  std::vector<std::vector<int32_t>> prompts;
  if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer())
    return {read_token_ids(prompt, "prompt", kBody)};
  if (prompt.is_array() && !prompt.empty() && prompt[0].is_array()) {
    for (size_t i = 0; i < prompt.size(); ++i)
      prompts.push_back(read_token_ids(prompt[i], fmt::format("prompt[{}]", i), kBody));
    return prompts;
  }
  const std::vector<std::string> texts = read_string_or_list(prompt, "prompt", kBody);
  FP4_CHECK(!texts.empty(), "request body: field 'prompt' is an empty list; send at least one prompt");
  for (size_t i = 0; i < texts.size(); ++i) {
    FP4_CHECK(!texts[i].empty(), "request body: field 'prompt' entry {} is empty; send a non-empty prompt", i);
    prompts.push_back(tokenizer.encode(texts[i]));
  }
  return prompts;
}

OpenAiRequest parse_completions(const Tokenizer& tokenizer, const nlohmann::json& body) {
  OpenAiRequest parsed;
  parsed.api = OpenAiEndpoint::Completions;
  FP4_CHECK(has(body, "prompt"), "request body: required field 'prompt' is missing");
  parsed.prompts = read_prompts(tokenizer, body["prompt"]);
  parsed.spec.max_new_tokens = 16;  // OpenAI's default for completions
  read_common(body, parsed);
  if (has(body, "max_tokens")) parsed.spec.max_new_tokens = read_max_tokens(body["max_tokens"], "max_tokens", kBody);
  parsed.echo = optional_bool(body, "echo", kBody).value_or(false);
  if (has(body, "logprobs")) {
    parsed.logprobs = true;
    parsed.top_logprobs = read_top_logprobs(body["logprobs"], "logprobs", kBody);
  }
  if (has(body, "prompt_logprobs"))
    parsed.prompt_logprobs = read_top_logprobs(body["prompt_logprobs"], "prompt_logprobs", kBody);
  // One top-k list serves both: each part shows the first entries it asked for.
  parsed.spec.sampling.n_top_logprobs = std::max(parsed.top_logprobs, parsed.prompt_logprobs.value_or(0));
  return parsed;
}

std::string message_content(const nlohmann::json& content, size_t index) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  FP4_CHECK(content.is_array(), "messages[{}]: field 'content' must be a string or a list of text parts", index);
  std::string text;
  for (const nlohmann::json& part : content) {
    FP4_CHECK(part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string(),
              "messages[{}]: only content parts {{\"type\": \"text\", \"text\": ...}} are supported", index);
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

OpenAiRequest parse_chat_request(const Tokenizer& tokenizer, const std::optional<ChatTemplate>& chat_template,
                                 int64_t context_room, const nlohmann::json& body) {
  OpenAiRequest parsed;
  parsed.api = OpenAiEndpoint::Chat;
  FP4_CHECK(chat_template.has_value(),
            "this model directory has no chat template (tokenizer_config.json 'chat_template'); use /v1/completions");
  FP4_CHECK(has(body, "messages") && body["messages"].is_array() && !body["messages"].empty(),
            "request body: field 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects");
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < body["messages"].size(); ++i) {
    const nlohmann::json& message = body["messages"][i];
    const std::string where = fmt::format("messages[{}]", i);
    messages.push_back({.role = required_string(message, "role", where),
                        .content = message_content(message.value("content", nlohmann::json()), i)});
  }
  bool enable_thinking = true;
  if (has(body, "chat_template_kwargs"))
    enable_thinking = optional_bool(body["chat_template_kwargs"], "enable_thinking", "chat_template_kwargs")
                          .value_or(true);
  const std::string prompt = chat_template->render(messages, /*add_generation_prompt=*/true, enable_thinking);
  parsed.prompts = {tokenizer.encode(prompt)};
  read_common(body, parsed);
  // Without a limit the answer may fill the rest of the context.
  parsed.spec.max_new_tokens = std::max<int64_t>(context_room - static_cast<int64_t>(parsed.prompts[0].size()), 0);
  for (const char* field : {"max_tokens", "max_completion_tokens"})
    if (has(body, field)) parsed.spec.max_new_tokens = read_max_tokens(body[field], field, kBody);
  parsed.logprobs = optional_bool(body, "logprobs", kBody).value_or(false);
  if (has(body, "top_logprobs")) {
    FP4_CHECK(parsed.logprobs, "request body: field 'top_logprobs' needs 'logprobs': true");
    parsed.top_logprobs = read_top_logprobs(body["top_logprobs"], "top_logprobs", kBody);
    parsed.spec.sampling.n_top_logprobs = parsed.top_logprobs;
  }
  return parsed;
}

namespace {

std::string finish_reason_name_of(const GenerationRun& run) {
  if (run.output().matched_stop()) return "stop";
  return std::string(finish_reason_name(run.result()->finish_reason));
}

// Logprobs of output tokens [from, to), after the prompt's when `with_prompt` (echo), in the endpoint's format;
// `text_offset` advances over completions' tokens.
nlohmann::json logprobs_json(const LogprobsFormat& format, OpenAiEndpoint api, const GenerationRun& run,
                             bool with_prompt, size_t from, size_t to, size_t& text_offset) {
  std::vector<LogprobEntry> entries;
  if (with_prompt) entries = prompt_entries(run.prompt(), run.input_logprobs());
  for (const LogprobEntry& entry : output_entries(run.output().tokens(), from, to)) entries.push_back(entry);
  return api == OpenAiEndpoint::Chat ? chat_logprobs(format, entries)
                                     : completion_logprobs(format, entries, text_offset);
}

nlohmann::json usage_json(const Runs& runs, int64_t n) {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (i % static_cast<size_t>(n) == 0) prompt += runs[i]->prompt_tokens();  // a prompt counts once for its n
    completion += static_cast<int64_t>(runs[i]->output().tokens().size());
    if (runs[i]->result()) cached += runs[i]->result()->cached_tokens;
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

struct ResponseHeader {
  std::string id;
  std::string object;
  int64_t created;
  std::string model;
  // `choices` must be an array: spell one choice as json::array({c}), since a braced {c} is a copy of c under
  // clang but a one-element array under gcc.
  nlohmann::json with(nlohmann::json choices) const {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"choices", std::move(choices)}};
  }
};

void serve(const ApiContext& context, OpenAiRequest parsed, httplib::Response& response) {
  const OpenAiEndpoint api = parsed.api;
  const std::string id = (api == OpenAiEndpoint::Chat ? "chatcmpl-" : "cmpl-") + random_hex_id(24);
  std::vector<GenerationJob> jobs = make_jobs(parsed.prompts, parsed.spec, id);
  if (parsed.wants_prompt_logprobs())
    for (GenerationJob& job : jobs) job.request.logprob_start_len = 0;
  Runs runs = start_runs(context, std::move(jobs));
  const LogprobsFormat format{
      .tokenizer = context.tokenizer, .n_top = parsed.top_logprobs, .tokens_as_ids = parsed.tokens_as_ids};
  const LogprobsFormat prompt_format{.tokenizer = context.tokenizer,
                                     .n_top = parsed.prompt_logprobs.value_or(0),
                                     .tokens_as_ids = parsed.tokens_as_ids};
  auto echoed_prompt = [&context](const GenerationRun& run) { return context.tokenizer.decode(run.prompt()); };
  const int64_t created = unix_time();
  const std::string object_kind = api == OpenAiEndpoint::Chat ? "chat.completion" : "text_completion";

  if (!parsed.stream) {
    wait_all(runs);
    nlohmann::json choices = nlohmann::json::array();
    for (size_t i = 0; i < runs.size(); ++i) {
      const GenerationRun& run = *runs[i];
      size_t offset = 0;
      nlohmann::json choice{
          {"index", i},
          {"finish_reason", finish_reason_name_of(run)},
          {"logprobs", parsed.logprobs ? logprobs_json(format, api, run, parsed.echo, 0, run.output().tokens().size(),
                                                       offset)
                                       : nullptr}};
      if (api == OpenAiEndpoint::Chat)
        choice["message"] = {{"role", "assistant"}, {"content", run.output().text()}};
      else
        choice["text"] = (parsed.echo ? echoed_prompt(run) : "") + run.output().text();
      if (parsed.spec.return_routed_experts)
        choice["routed_experts"] = routed_experts_base64(run.result()->routed_experts);
      if (parsed.prompt_logprobs)
        choice["prompt_logprobs"] = vllm_prompt_logprobs(prompt_format, run.prompt(), run.input_logprobs());
      choices.push_back(std::move(choice));
    }
    nlohmann::json body = ResponseHeader{id, object_kind, created, context.model_name}.with(std::move(choices));
    body["usage"] = usage_json(runs, parsed.spec.n);
    body["metadata"] = {{"weight_version", *runs[0]->weight_version()}};
    send_json(response, body);
    return;
  }

  struct Progress {
    size_t tokens_sent = 0;
    size_t text_offset = 0;
    bool started = false;
    bool prompt_sent = false;  // echo / prompt_logprobs: the prompt's chunk comes first
  };
  auto plan = std::make_shared<StreamPlan>();
  plan->runs = std::move(runs);
  auto progress = std::make_shared<std::vector<Progress>>(plan->runs.size());
  const ResponseHeader header{id, api == OpenAiEndpoint::Chat ? "chat.completion.chunk" : "text_completion",
                              created, context.model_name};
  plan->chunks_for = [api, header, progress, parsed, format, prompt_format, echoed_prompt,
                      routed_experts = parsed.spec.return_routed_experts, plan_ptr = plan.get()](size_t i) {
    GenerationRun& run = *plan_ptr->runs[i];
    Progress& sent = (*progress)[i];
    std::vector<nlohmann::json> chunks;
    auto choice = [&](nlohmann::json delta_or_text) {
      nlohmann::json c{{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      if (api == OpenAiEndpoint::Chat)
        c["delta"] = std::move(delta_or_text);
      else
        c["text"] = std::move(delta_or_text);
      return c;
    };
    if (api == OpenAiEndpoint::Chat && !sent.started) {
      chunks.push_back(header.with(nlohmann::json::array({choice({{"role", "assistant"}, {"content", ""}})})));
      sent.started = true;
    }
    if (!sent.prompt_sent && (parsed.echo || parsed.prompt_logprobs)) {
      const bool prompt_done = !parsed.wants_prompt_logprobs() ||
                               run.input_logprobs().size() + 1 == run.prompt().size() || run.ended();
      if (!prompt_done) return chunks;  // its first token cannot come before it
      nlohmann::json c = choice(parsed.echo ? echoed_prompt(run) : "");
      if (parsed.echo && parsed.logprobs)
        c["logprobs"] = completion_logprobs(format, prompt_entries(run.prompt(), run.input_logprobs()),
                                            sent.text_offset);
      if (parsed.prompt_logprobs)
        c["prompt_logprobs"] = vllm_prompt_logprobs(prompt_format, run.prompt(), run.input_logprobs());
      chunks.push_back(header.with(nlohmann::json::array({std::move(c)})));
      sent.prompt_sent = true;
    }
    const std::string text = run.output().take_delta();
    const size_t n_tokens = run.output().tokens().size();
    if (!text.empty() || n_tokens > sent.tokens_sent) {
      nlohmann::json c = choice(api == OpenAiEndpoint::Chat ? nlohmann::json{{"content", text}} : nlohmann::json(text));
      if (parsed.logprobs)
        c["logprobs"] = logprobs_json(format, api, run, false, sent.tokens_sent, n_tokens, sent.text_offset);
      sent.tokens_sent = n_tokens;
      chunks.push_back(header.with(nlohmann::json::array({std::move(c)})));
    }
    if (run.ended() && run.result()) {
      nlohmann::json c = choice(api == OpenAiEndpoint::Chat ? nlohmann::json::object() : nlohmann::json(""));
      c["finish_reason"] = finish_reason_name_of(run);
      if (routed_experts) c["routed_experts"] = routed_experts_base64(run.result()->routed_experts);
      nlohmann::json chunk = header.with(nlohmann::json::array({std::move(c)}));
      chunk["metadata"] = {{"weight_version", *run.weight_version()}};
      chunks.push_back(std::move(chunk));
    }
    return chunks;
  };
  plan->closing_chunks = [header, n = parsed.spec.n, include_usage = parsed.include_usage, plan_ptr = plan.get()] {
    if (!include_usage) return std::vector<nlohmann::json>{};
    nlohmann::json chunk = header.with(nlohmann::json::array());
    chunk["usage"] = usage_json(plan_ptr->runs, n);
    return std::vector<nlohmann::json>{std::move(chunk)};
  };
  stream_sse(response, std::move(plan));
}

}  // namespace

void handle_models(const ApiContext& context, const httplib::Request&, httplib::Response& response) {
  send_json(response, {{"object", "list"},
                       {"data", nlohmann::json::array({{{"id", context.model_name},
                                                        {"object", "model"},
                                                        {"created", unix_time()},
                                                        {"owned_by", "fp4serve"},
                                                        {"root", context.service.model_path()},
                                                        {"max_model_len",
                                                         context.service.model_config().max_position_embeddings}}})}});
}

void handle_completions(const ApiContext& context, const httplib::Request& request, httplib::Response& response) {
  serve(context, parse_completions(context.tokenizer, parse_body(request)), response);
}

void handle_chat_completions(const ApiContext& context, const httplib::Request& request,
                             httplib::Response& response) {
  // The answer may fill the rest of the context, and of the KV cache.
  const int64_t room = std::min<int64_t>(context.service.model_config().max_position_embeddings,
                                         context.service.kv_cache_tokens());
  serve(context, parse_chat_request(context.tokenizer, context.chat_template, room, parse_body(request)), response);
}

}  // namespace fp4serve
