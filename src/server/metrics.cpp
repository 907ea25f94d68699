#include "server/metrics.h"

#include <fmt/format.h>

namespace fp4serve {

namespace {

void metric(std::string& out, std::string_view name, std::string_view type, std::string_view help, double value,
            std::string_view labels = "") {
  fmt::format_to(std::back_inserter(out), "# HELP fp4serve_{} {}\n# TYPE fp4serve_{} {}\nfp4serve_{}{} {}\n", name,
                 help, name, type, name, labels, value);
}

// Label values escape backslash, double quote and newline (the exposition format's rule).
std::string label_value(std::string_view value) {
  std::string escaped;
  for (char c : value) {
    if (c == '\\') escaped += "\\\\";
    else if (c == '"') escaped += "\\\"";
    else if (c == '\n') escaped += "\\n";
    else escaped += c;
  }
  return escaped;
}

}  // namespace

std::string prometheus_metrics(const ServiceStats& s, const std::string& weight_version) {
  std::string out;
  out += "# HELP fp4serve_requests_total Requests finished, by finish reason.\n"
         "# TYPE fp4serve_requests_total counter\n";
  fmt::format_to(std::back_inserter(out),
                 "fp4serve_requests_total{{finish_reason=\"stop\"}} {}\n"
                 "fp4serve_requests_total{{finish_reason=\"length\"}} {}\n"
                 "fp4serve_requests_total{{finish_reason=\"abort\"}} {}\n",
                 s.requests_finished_stop, s.requests_finished_length, s.requests_finished_abort);
  metric(out, "requests_rejected_total", "counter", "Requests refused with 503 because the queue was full.",
         static_cast<double>(s.requests_rejected_busy));
  metric(out, "prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
         static_cast<double>(s.prompt_tokens_total));
  metric(out, "generation_tokens_total", "counter", "Generated tokens of finished requests.",
         static_cast<double>(s.generation_tokens_total));
  metric(out, "cached_tokens_total", "counter", "Prompt tokens served from the prefix cache.",
         static_cast<double>(s.cached_tokens_total));
  metric(out, "num_running_reqs", "gauge", "Requests in the engine (running or waiting for a slot).",
         static_cast<double>(s.running_requests));
  metric(out, "num_queue_reqs", "gauge", "Requests held back by a weight update or a pause.",
         static_cast<double>(s.held_requests));
  metric(out, "kv_cache_pages_total", "gauge", "Pages of the KV cache.", static_cast<double>(s.kv_pages_total));
  metric(out, "kv_cache_pages_used", "gauge", "KV cache pages in use (requests and prefix cache).",
         static_cast<double>(s.kv_pages_used));
  metric(out, "kv_cache_usage_ratio", "gauge", "Share of KV cache pages in use.",
         s.kv_pages_total > 0 ? static_cast<double>(s.kv_pages_used) / static_cast<double>(s.kv_pages_total) : 0.0);
  metric(out, "weight_reloads_total", "counter", "Successful weight updates.",
         static_cast<double>(s.reloads_succeeded));
  metric(out, "weight_reload_failures_total", "counter", "Refused or failed weight updates.",
         static_cast<double>(s.reloads_failed));
  metric(out, "weight_reload_seconds_total", "counter", "Time spent loading weights in updates.",
         s.reload_seconds_total);
  metric(out, "weight_reload_last_seconds", "gauge", "Load time of the last weight update.", s.last_reload_seconds);
  metric(out, "weight_reload_last_pause_seconds", "gauge",
         "From the last update's request to the restart of the requests it held back.", s.last_reload_pause_seconds);
  metric(out, "generation_paused", "gauge", "1 while /pause_generation is in effect.", s.paused ? 1.0 : 0.0);
  metric(out, "weight_version_info", "gauge", "The served weight version (as a label).", 1.0,
         fmt::format("{{weight_version=\"{}\"}}", label_value(weight_version)));
  return out;
}

}  // namespace fp4serve
