#include "server/openai_api.h"

#include <algorithm>
#include <chrono>

#include "io/json_file.h"
#include "server/http_error.h"
#include "server/request_fields.h"

namespace fp4serve {

namespace {

enum class Api { Completions, Chat };

struct OpenAiRequest {
  Api api = Api::Completions;
  std::vector<std::vector<int32_t>> prompts;
  SamplingSpec spec;
  bool logprobs = false;
  bool stream = false;
  bool include_usage = false;
};

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
  if (has(body, "stream_options")) {
    const nlohmann::json& options = body["stream_options"];
    parsed.include_usage = optional_bool(options, "include_usage", "stream_options").value_or(false);
  }
}

std::vector<std::vector<int32_t>> read_prompts(const ApiContext& context, const nlohmann::json& prompt) {
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
    prompts.push_back(context.tokenizer.encode(texts[i]));
  }
  return prompts;
}

OpenAiRequest parse_completions(const ApiContext& context, const nlohmann::json& body) {
  OpenAiRequest parsed;
  parsed.api = Api::Completions;
  FP4_CHECK(has(body, "prompt"), "request body: required field 'prompt' is missing");
  parsed.prompts = read_prompts(context, body["prompt"]);
  parsed.spec.max_new_tokens = 16;  // OpenAI's default for completions
  read_common(body, parsed);
  if (has(body, "max_tokens")) parsed.spec.max_new_tokens = read_max_tokens(body["max_tokens"], "max_tokens", kBody);
  FP4_CHECK(!optional_bool(body, "echo", kBody).value_or(false),
            "request body: field 'echo' = true is not supported (it needs prompt logprobs)");
  if (has(body, "logprobs")) {
    parsed.logprobs = true;
    parsed.spec.sampling.n_top_logprobs = read_top_logprobs(body["logprobs"], "logprobs", kBody);
  }
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

OpenAiRequest parse_chat(const ApiContext& context, const nlohmann::json& body) {
  OpenAiRequest parsed;
  parsed.api = Api::Chat;
  FP4_CHECK(context.chat_template.has_value(),
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
  const std::string prompt = context.chat_template->render(messages, /*add_generation_prompt=*/true, enable_thinking);
  parsed.prompts = {context.tokenizer.encode(prompt)};
  read_common(body, parsed);
  // Without a limit the answer may fill the rest of the context (and of the KV cache).
  const int64_t room = std::min<int64_t>(context.service.model_config().max_position_embeddings,
                                         context.service.kv_cache_tokens());
  parsed.spec.max_new_tokens = std::max<int64_t>(room - static_cast<int64_t>(parsed.prompts[0].size()), 0);
  for (const char* field : {"max_tokens", "max_completion_tokens"})
    if (has(body, field)) parsed.spec.max_new_tokens = read_max_tokens(body[field], field, kBody);
  parsed.logprobs = optional_bool(body, "logprobs", kBody).value_or(false);
  if (has(body, "top_logprobs")) {
    FP4_CHECK(parsed.logprobs, "request body: field 'top_logprobs' needs 'logprobs': true");
    parsed.spec.sampling.n_top_logprobs = read_top_logprobs(body["top_logprobs"], "top_logprobs", kBody);
  }
  return parsed;
}

std::string finish_reason_name_of(const GenerationRun& run) {
  if (run.output().matched_stop()) return "stop";
  return std::string(finish_reason_name(run.result()->finish_reason));
}

// Logprobs of tokens [from, to) in the endpoint's format; `text_offset` advances over completions' tokens.
nlohmann::json logprobs_json(const ApiContext& context, Api api, const GenerationRun& run, size_t from, size_t to,
                             size_t& text_offset) {
  const std::vector<GeneratedToken>& tokens = run.output().tokens();
  if (api == Api::Chat) {
    nlohmann::json content = nlohmann::json::array();
    for (size_t i = from; i < to; ++i) {
      nlohmann::json top = nlohmann::json::array();
      for (const auto& [id, logprob] : tokens[i].top_logprobs)
        top.push_back({{"token", token_text(context.tokenizer, id)},
                       {"logprob", logprob},
                       {"bytes", token_bytes(context.tokenizer, id)}});
      content.push_back({{"token", token_text(context.tokenizer, tokens[i].id)},
                         {"logprob", tokens[i].logprob},
                         {"bytes", token_bytes(context.tokenizer, tokens[i].id)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  nlohmann::json text = nlohmann::json::array(), logprobs = nlohmann::json::array(),
                 top = nlohmann::json::array(), offsets = nlohmann::json::array();
  for (size_t i = from; i < to; ++i) {
    const std::string token = token_text(context.tokenizer, tokens[i].id);
    text.push_back(token);
    logprobs.push_back(tokens[i].logprob);
    offsets.push_back(text_offset);
    text_offset += token.size();
    nlohmann::json alternatives = nlohmann::json::object();
    for (const auto& [id, logprob] : tokens[i].top_logprobs) alternatives[token_text(context.tokenizer, id)] = logprob;
    top.push_back(std::move(alternatives));
  }
  return {{"tokens", std::move(text)}, {"token_logprobs", std::move(logprobs)}, {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
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
  nlohmann::json with(nlohmann::json choices) const {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"choices", std::move(choices)}};
  }
};

void serve(const ApiContext& context, OpenAiRequest parsed, httplib::Response& response) {
  const Api api = parsed.api;
  const std::string id = (api == Api::Chat ? "chatcmpl-" : "cmpl-") + random_hex_id(24);
  Runs runs = start_runs(context, make_jobs(parsed.prompts, parsed.spec, id));
  const int64_t created = unix_time();
  const std::string object_kind = api == Api::Chat ? "chat.completion" : "text_completion";

  if (!parsed.stream) {
    wait_all(runs);
    nlohmann::json choices = nlohmann::json::array();
    for (size_t i = 0; i < runs.size(); ++i) {
      const GenerationRun& run = *runs[i];
      size_t offset = 0;
      nlohmann::json choice{{"index", i},
                            {"finish_reason", finish_reason_name_of(run)},
                            {"logprobs", parsed.logprobs ? logprobs_json(context, api, run, 0, run.output().tokens().size(),
                                                                         offset)
                                                         : nullptr}};
      if (api == Api::Chat)
        choice["message"] = {{"role", "assistant"}, {"content", run.output().text()}};
      else
        choice["text"] = run.output().text();
      if (parsed.spec.return_routed_experts)
        choice["routed_experts"] = routed_experts_base64(run.result()->routed_experts);
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
  };
  auto plan = std::make_shared<StreamPlan>();
  plan->runs = std::move(runs);
  auto progress = std::make_shared<std::vector<Progress>>(plan->runs.size());
  const ResponseHeader header{id, api == Api::Chat ? "chat.completion.chunk" : "text_completion", created,
                              context.model_name};
  plan->chunks_for = [&context, api, header, progress, logprobs = parsed.logprobs,
                      routed_experts = parsed.spec.return_routed_experts, plan_ptr = plan.get()](size_t i) {
    GenerationRun& run = *plan_ptr->runs[i];
    Progress& sent = (*progress)[i];
    std::vector<nlohmann::json> chunks;
    auto choice = [&](nlohmann::json delta_or_text) {
      nlohmann::json c{{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
      if (api == Api::Chat)
        c["delta"] = std::move(delta_or_text);
      else
        c["text"] = std::move(delta_or_text);
      return c;
    };
    if (api == Api::Chat && !sent.started) {
      chunks.push_back(header.with({choice({{"role", "assistant"}, {"content", ""}})}));
      sent.started = true;
    }
    const std::string text = run.output().take_delta();
    const size_t n_tokens = run.output().tokens().size();
    if (!text.empty() || n_tokens > sent.tokens_sent) {
      nlohmann::json c = choice(api == Api::Chat ? nlohmann::json{{"content", text}} : nlohmann::json(text));
      if (logprobs) c["logprobs"] = logprobs_json(context, api, run, sent.tokens_sent, n_tokens, sent.text_offset);
      sent.tokens_sent = n_tokens;
      chunks.push_back(header.with({std::move(c)}));
    }
    if (run.ended() && run.result()) {
      nlohmann::json c = choice(api == Api::Chat ? nlohmann::json::object() : nlohmann::json(""));
      c["finish_reason"] = finish_reason_name_of(run);
      if (routed_experts) c["routed_experts"] = routed_experts_base64(run.result()->routed_experts);
      nlohmann::json chunk = header.with({std::move(c)});
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
  serve(context, parse_completions(context, parse_body(request)), response);
}

void handle_chat_completions(const ApiContext& context, const httplib::Request& request,
                             httplib::Response& response) {
  serve(context, parse_chat(context, parse_body(request)), response);
}

}  // namespace fp4serve
