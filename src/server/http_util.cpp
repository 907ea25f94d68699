#include "server/http_util.h"

#include <bit>
#include <chrono>

#include "common/base64.h"
#include "io/json_file.h"
#include "server/http_error.h"

namespace fp4serve {

std::string_view error_type_for_status(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 503: return "server_overloaded";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

nlohmann::json error_body(int status, const std::string& message) {
  return {{"error", {{"message", message}, {"type", error_type_for_status(status)}, {"code", status}}}};
}

std::string dump_json(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json parse_body(const httplib::Request& request) { return parse_body_text(request.body); }

nlohmann::json parse_body_text(std::string_view text) {
  FP4_CHECK(!text.empty(), "request body: empty; send a JSON object");
  nlohmann::json body = parse_json_text(text, "request body");
  FP4_CHECK(body.is_object(), "request body: expected a JSON object, got {}", json_type_name(body));
  return body;
}

void send_json(httplib::Response& response, const nlohmann::json& body, int status) {
  response.status = status;
  response.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& response, int status, const std::string& message) {
  if (status == 503) response.set_header("Retry-After", "1");
  send_json(response, error_body(status, message), status);
}

Runs start_runs(const ApiContext& context, std::vector<GenerationJob> jobs) {
  Runs runs;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const std::string name = jobs.size() == 1 ? "request" : fmt::format("request (prompt/sample {})", i);
    try {
      runs.push_back(std::make_unique<GenerationRun>(context.service, context.tokenizer, std::move(jobs[i]), name));
    } catch (const ServiceBusy& e) {
      throw HttpError(503, e.what());
    }
  }
  return runs;
}

void wait_all(Runs& runs) {
  for (auto& run : runs) {
    while (!run->ended()) run->poll(std::chrono::milliseconds(200));
    if (run->error()) throw HttpError(run->error()->http_status, run->error()->message);
  }
}

void stream_sse(httplib::Response& response, std::shared_ptr<StreamPlan> plan) {
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider("text/event-stream", [plan](size_t, httplib::DataSink& sink) {
    auto send = [&](const std::string& payload) {
      const std::string event = "data: " + payload + "\n\n";
      return sink.write(event.data(), event.size());
    };
    Runs& runs = plan->runs;
    size_t n_ended = 0;
    for (auto& run : runs) n_ended += run->ended();
    if (n_ended == runs.size()) {  // every chunk was sent on earlier calls
      for (const nlohmann::json& chunk : plan->closing_chunks()) send(dump_json(chunk));
      send("[DONE]");
      sink.done();
      return true;
    }
    // Block briefly on the first unfinished run, then take whatever the others have without waiting.
    bool waited = false;
    for (size_t i = 0; i < runs.size(); ++i) {
      GenerationRun& run = *runs[i];
      if (run.ended()) continue;
      const bool news = run.poll(std::chrono::milliseconds(waited ? 0 : 50));
      waited = true;
      if (!news) continue;
      if (run.error()) {
        send(dump_json(error_body(run.error()->http_status, run.error()->message)));
        send("[DONE]");
        sink.done();
        return true;
      }
      for (const nlohmann::json& chunk : plan->chunks_for(i))
        if (!send(dump_json(chunk))) return false;  // the client went away
    }
    return sink.is_writable();
  });
}

std::string routed_experts_base64(std::span<const int32_t> ids) {
  static_assert(std::endian::native == std::endian::little, "the wire form is little-endian int32");
  return base64_encode({reinterpret_cast<const uint8_t*>(ids.data()), ids.size_bytes()});
}

std::string token_text(const Tokenizer& tokenizer, int32_t id) {
  const int32_t ids[] = {id};
  return tokenizer.decode(ids);
}

std::vector<uint8_t> token_bytes(const Tokenizer& tokenizer, int32_t id) {
  const int32_t ids[] = {id};
  const std::string bytes = tokenizer.decode_bytes(ids);
  return {bytes.begin(), bytes.end()};
}

}  // namespace fp4serve
