#include "server/native_api.h"

#include "io/json_file.h"
#include "server/http_error.h"
#include "server/request_fields.h"

namespace fp4serve {

GenerateApiRequest parse_generate_request(const Tokenizer& tokenizer, const nlohmann::json& body) {
  GenerateApiRequest parsed;
  const bool has_text = body.contains("text") && !body["text"].is_null();
  const bool has_ids = body.contains("input_ids") && !body["input_ids"].is_null();
  FP4_CHECK(has_text != has_ids, "request body: give exactly one of 'text' and 'input_ids'");
  if (has_text) {
    bool single = false;
    const std::vector<std::string> texts = read_string_or_list(body["text"], "text", "request body", &single);
    parsed.batch = !single;
    FP4_CHECK(!texts.empty(), "request body: field 'text' is an empty list; send at least one prompt");
    for (size_t i = 0; i < texts.size(); ++i) {
      FP4_CHECK(!texts[i].empty(), "request body: field 'text'{} is empty; send a non-empty prompt",
                single ? "" : fmt::format(" entry {}", i));
      parsed.prompts.push_back(tokenizer.encode(texts[i]));
    }
  } else {
    const nlohmann::json& ids = body["input_ids"];
    parsed.batch = ids.is_array() && !ids.empty() && ids[0].is_array();
    if (parsed.batch) {
      for (size_t i = 0; i < ids.size(); ++i)
        parsed.prompts.push_back(read_token_ids(ids[i], fmt::format("input_ids[{}]", i), "request body"));
    } else {
      parsed.prompts.push_back(read_token_ids(ids, "input_ids", "request body"));
    }
  }

  if (body.contains("sampling_params") && !body["sampling_params"].is_null()) {
    const nlohmann::json& sampling = body["sampling_params"];
    read_sampling_fields(sampling, "sampling_params", parsed.spec);
    if (sampling.contains("max_new_tokens") && !sampling["max_new_tokens"].is_null())
      parsed.spec.max_new_tokens = read_max_tokens(sampling["max_new_tokens"], "max_new_tokens", "sampling_params");
  }
  parsed.return_logprob = optional_bool(body, "return_logprob", "request body").value_or(false);
  if (body.contains("top_logprobs_num") && !body["top_logprobs_num"].is_null())
    parsed.top_logprobs_num = read_top_logprobs(body["top_logprobs_num"], "top_logprobs_num", "request body");
  parsed.logprob_start_len = optional_int(body, "logprob_start_len", "request body").value_or(-1);
  FP4_CHECK(parsed.logprob_start_len >= -1, "request body: field 'logprob_start_len' = {} must be -1 or >= 0",
            parsed.logprob_start_len);
  if (body.contains("token_ids_logprob") && !body["token_ids_logprob"].is_null()) {
    parsed.spec.sampling.token_ids_logprob =
        read_token_ids(body["token_ids_logprob"], "token_ids_logprob", "request body");
    FP4_CHECK(parsed.spec.sampling.token_ids_logprob.size() <= kMaxTokenIdsLogprob,
              "request body: field 'token_ids_logprob' has {} ids; at most {} are allowed",
              parsed.spec.sampling.token_ids_logprob.size(), kMaxTokenIdsLogprob);
    parsed.with_token_ids_logprob = parsed.return_logprob;
  }
  if (!parsed.return_logprob) parsed.spec.sampling.token_ids_logprob.clear();
  parsed.spec.sampling.n_top_logprobs = parsed.return_logprob ? parsed.top_logprobs_num : 0;
  parsed.stream = optional_bool(body, "stream", "request body").value_or(false);
  read_routing_fields(body, "request body", parsed.spec);

  if (body.contains("rid") && !body["rid"].is_null()) {
    bool single = false;
    parsed.rids = read_string_or_list(body["rid"], "rid", "request body", &single);
    if (single) parsed.rids.resize(parsed.prompts.size(), parsed.rids[0]);
    FP4_CHECK(parsed.rids.size() == parsed.prompts.size(),
              "request body: field 'rid' has {} entries for {} prompts; give one per prompt or a single string",
              parsed.rids.size(), parsed.prompts.size());
  } else {
    for (size_t i = 0; i < parsed.prompts.size(); ++i) parsed.rids.push_back(random_hex_id(32));
  }
  return parsed;
}

namespace {

nlohmann::json logprob_entry(float logprob, int32_t id) { return nlohmann::json::array({logprob, id, nullptr}); }

nlohmann::json logprob_entries(const TokenLogprobs& logprobs) {
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& [id, logprob] : logprobs) entries.push_back(logprob_entry(logprob, id));
  return entries;
}

// SGLang's input_* lists: one entry per prompt token from logprob_start_len on, the first of them null (no logits
// before it were computed), then the engine's prompt logprobs. Empty until the prompt has been prefilled.
void add_input_logprobs(const GenerationRun& run, const GenerateApiRequest& request, nlohmann::json& meta) {
  const std::vector<int32_t>& prompt = run.prompt();
  const std::vector<PositionLogprobs>& computed = run.input_logprobs();
  const size_t start =
      request.logprob_start_len < 0 ? prompt.size() - 1 : static_cast<size_t>(request.logprob_start_len);
  nlohmann::json logprobs = nlohmann::json::array(), top = nlohmann::json::array(), ids = nlohmann::json::array();
  const bool ready = computed.size() == prompt.size() - 1 - start;
  if (ready) {
    logprobs.push_back(nlohmann::json::array({nullptr, prompt[start], nullptr}));
    top.push_back(nullptr);
    ids.push_back(nullptr);
    for (size_t i = 0; i < computed.size(); ++i) {
      logprobs.push_back(logprob_entry(computed[i].logprob, prompt[start + 1 + i]));
      top.push_back(logprob_entries(computed[i].top));
      ids.push_back(logprob_entries(computed[i].ids));
    }
  }
  meta["input_token_logprobs"] = std::move(logprobs);
  if (request.top_logprobs_num > 0) meta["input_top_logprobs"] = std::move(top);
  if (request.with_token_ids_logprob) meta["input_token_ids_logprobs"] = std::move(ids);
}

// The run's result so far (the final one once it ended).
nlohmann::json run_json(const GenerationRun& run, const GenerateApiRequest& request) {
  const std::vector<GeneratedToken>& tokens = run.output().tokens();
  nlohmann::json output_ids = nlohmann::json::array();
  for (const GeneratedToken& token : tokens) output_ids.push_back(token.id);
  const std::optional<GenerateResult>& result = run.result();
  nlohmann::json meta{
      {"id", run.rid()},
      {"prompt_tokens", run.prompt_tokens()},
      {"completion_tokens", tokens.size()},
      {"cached_tokens", result ? result->cached_tokens : 0},
      {"finish_reason", run.ended() ? finish_reason_json(run) : nlohmann::json(nullptr)},
      {"weight_version", run.weight_version() ? nlohmann::json(*run.weight_version()) : nlohmann::json(nullptr)},
      {"e2e_latency", run.seconds_elapsed()},
  };
  if (result) {
    nlohmann::json spans = nlohmann::json::array();
    for (const WeightVersionSpan& span : result->weight_version_spans)
      spans.push_back({{"version", span.version}, {"start", span.start}, {"end", span.end}});
    meta["weight_version_spans"] = std::move(spans);
    if (request.spec.return_routed_experts) meta["routed_experts"] = routed_experts_base64(result->routed_experts);
  }
  if (request.return_logprob) {
    add_input_logprobs(run, request, meta);
    nlohmann::json logprobs = nlohmann::json::array(), top = nlohmann::json::array(), ids = nlohmann::json::array();
    for (const GeneratedToken& token : tokens) {
      logprobs.push_back(logprob_entry(token.logprob, token.id));
      top.push_back(logprob_entries(token.top_logprobs));
      ids.push_back(logprob_entries(token.ids_logprobs));
    }
    meta["output_token_logprobs"] = std::move(logprobs);
    if (request.top_logprobs_num > 0) meta["output_top_logprobs"] = std::move(top);
    if (request.with_token_ids_logprob) meta["output_token_ids_logprobs"] = std::move(ids);
  }
  return {{"text", run.output().text()}, {"output_ids", std::move(output_ids)}, {"meta_info", std::move(meta)}};
}

}  // namespace

nlohmann::json finish_reason_json(const GenerationRun& run) {
  if (run.output().matched_stop()) return {{"type", "stop"}, {"matched", *run.output().matched_stop()}};
  const GenerateResult& result = *run.result();
  switch (result.finish_reason) {
    case FinishReason::Stop:
      return {{"type", "stop"},
              {"matched", result.matched_stop_token ? nlohmann::json(*result.matched_stop_token) : nullptr}};
    case FinishReason::Length: return {{"type", "length"}, {"length", run.max_new_tokens()}};
    case FinishReason::Abort: return {{"type", "abort"}, {"message", "the request was aborted"}};
  }
  return nullptr;
}

void handle_generate(const ApiContext& context, const httplib::Request& request, httplib::Response& response) {
  GenerateApiRequest parsed = parse_generate_request(context.tokenizer, parse_body(request));
  std::vector<GenerationJob> jobs;
  for (size_t i = 0; i < parsed.prompts.size(); ++i) {
    std::vector<GenerationJob> prompt_jobs = make_jobs({parsed.prompts[i]}, parsed.spec, parsed.rids[i]);
    for (GenerationJob& job : prompt_jobs) {
      if (parsed.return_logprob && parsed.logprob_start_len >= 0)
        job.request.logprob_start_len = parsed.logprob_start_len;  // the engine names it if out of range
      jobs.push_back(std::move(job));
    }
  }
  const bool list_output = parsed.batch || parsed.spec.n > 1;
  Runs runs = start_runs(context, std::move(jobs));

  if (parsed.stream) {
    auto plan = std::make_shared<StreamPlan>();
    plan->runs = std::move(runs);
    plan->chunks_for = [plan_ptr = plan.get(), parsed, list_output](size_t i) {
      nlohmann::json chunk = run_json(*plan_ptr->runs[i], parsed);
      if (list_output) chunk["index"] = i;
      return std::vector<nlohmann::json>{std::move(chunk)};
    };
    plan->closing_chunks = [] { return std::vector<nlohmann::json>{}; };
    stream_sse(response, std::move(plan));
    return;
  }
  wait_all(runs);
  if (!list_output) {
    send_json(response, run_json(*runs[0], parsed));
    return;
  }
  nlohmann::json results = nlohmann::json::array();
  for (const auto& run : runs) results.push_back(run_json(*run, parsed));
  send_json(response, results);
}

}  // namespace fp4serve
