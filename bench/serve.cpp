// bench_serve: an open-loop load generator for a running `fp4serve serve`. For each target concurrency C it sends
// streaming /generate requests with Poisson arrivals at rate C / (one request's latency alone), so by Little's law
// about C are in flight whatever the server does (open loop: arrivals never wait for answers). Prints requests/s,
// output tokens/s, TTFT and inter-token latency percentiles per level; with --reload-model-path it then measures
// one /update_weights_from_disk under the highest load: the call's time, the server's pause, the longest token gap.
//   bench_serve --port 30000 [--concurrency 1,4,16,32] [--duration 10] [--prompt-len 64] [--max-new-tokens 32]
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Options {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::vector<int> concurrency = {1, 4, 16, 32};
  double duration = 10;
  int prompt_len = 64;
  int max_new_tokens = 32;
  std::string reload_model_path;
};

struct Sample {
  bool ok = false;
  double ttft = 0, e2e = 0;
  int tokens = 0;
  std::vector<double> gaps;  // per generated token after the first: time since the previous chunk / its tokens
};

// One streaming request; chunk times give TTFT and inter-token gaps.
Sample run_request(const Options& options, uint64_t seed) {
  std::mt19937_64 random(seed);
  json ids = json::array();
  for (int i = 0; i < options.prompt_len; ++i) ids.push_back(static_cast<int>(32 + random() % 200));
  const json body = {{"input_ids", ids},
                     {"sampling_params", {{"max_new_tokens", options.max_new_tokens}, {"ignore_eos", true},
                                          {"temperature", 1.0}, {"seed", seed % 1000000007}}},
                     {"stream", true}};
  httplib::Client client(options.host, options.port);
  client.set_read_timeout(300, 0);
  httplib::Request request;
  request.method = "POST";
  request.path = "/generate";
  request.body = body.dump();
  request.set_header("Content-Type", "application/json");
  Sample sample;
  const Clock::time_point start = Clock::now();
  Clock::time_point last = start;
  std::string pending;
  request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    pending.append(data, size);
    size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (!event.starts_with("data: {")) continue;
      const int tokens = json::parse(event.substr(6))["meta_info"]["completion_tokens"];
      const Clock::time_point now = Clock::now();
      if (sample.tokens == 0 && tokens > 0) sample.ttft = seconds(now - start);
      else if (tokens > sample.tokens)
        sample.gaps.insert(sample.gaps.end(), static_cast<size_t>(tokens - sample.tokens),
                           seconds(now - last) / (tokens - sample.tokens));
      if (tokens > sample.tokens) last = now;
      sample.tokens = tokens;
    }
    return true;
  };
  const httplib::Result result = client.send(request);
  sample.ok = result && result->status == 200 && sample.tokens == options.max_new_tokens;
  if (!sample.ok) {
    static std::atomic<int> reported{0};
    if (reported++ < 3)
      std::fprintf(stderr, "request failed: %s, status %d, %d tokens\n",
                   result ? "answered" : httplib::to_string(result.error()).c_str(), result ? result->status : 0,
                   sample.tokens);
  }
  sample.e2e = seconds(Clock::now() - start);
  return sample;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(p * static_cast<double>(values.size() - 1) + 0.5)];
}

struct LevelResult {
  std::vector<Sample> samples;
  double wall = 0;
  double mean_in_flight = 0;
};

// Poisson arrivals at `rate` for the duration; every request runs on its own thread.
LevelResult run_level(const Options& options, double rate, uint64_t seed, const std::function<void()>& midway = {}) {
  std::mt19937_64 random(seed);
  std::exponential_distribution<double> gap(rate);
  std::mutex mutex;
  LevelResult level;
  std::vector<std::thread> threads;
  std::atomic<int> in_flight{0};
  double in_flight_sum = 0;
  int in_flight_samples = 0;
  const Clock::time_point start = Clock::now();
  Clock::time_point next = start;
  bool midway_done = !midway;
  std::thread midway_thread;
  while (seconds(next - start) < options.duration) {
    std::this_thread::sleep_until(next);
    in_flight_sum += in_flight;
    ++in_flight_samples;
    const uint64_t request_seed = random();
    ++in_flight;
    threads.emplace_back([&, request_seed] {
      Sample sample = run_request(options, request_seed);
      --in_flight;
      std::lock_guard lock(mutex);
      level.samples.push_back(std::move(sample));
    });
    if (!midway_done && seconds(next - start) > options.duration / 2) {
      midway_thread = std::thread(midway);
      midway_done = true;
    }
    next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(random)));
  }
  for (std::thread& t : threads) t.join();
  if (midway_thread.joinable()) midway_thread.join();
  level.wall = seconds(Clock::now() - start);
  level.mean_in_flight = in_flight_samples ? in_flight_sum / in_flight_samples : 0;
  return level;
}

void print_level(int target, double rate, const LevelResult& level) {
  std::vector<double> ttft, gaps;
  int ok = 0, tokens = 0;
  for (const Sample& s : level.samples) {
    if (!s.ok) continue;
    ++ok;
    tokens += s.tokens;
    ttft.push_back(s.ttft);
    gaps.insert(gaps.end(), s.gaps.begin(), s.gaps.end());
  }
  std::printf("| %d | %.2f | %.1f | %zu | %zu | %.2f | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.1f |\n", target,
              rate, level.mean_in_flight, level.samples.size(), level.samples.size() - static_cast<size_t>(ok),
              ok / level.wall, tokens / level.wall, 1e3 * percentile(ttft, 0.5), 1e3 * percentile(ttft, 0.9),
              1e3 * percentile(ttft, 0.99), 1e3 * percentile(gaps, 0.5), 1e3 * percentile(gaps, 0.9),
              1e3 * percentile(gaps, 0.99));
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"Open-loop load generator for fp4serve serve"};
  app.add_option("--host", options.host)->capture_default_str();
  app.add_option("--port", options.port)->capture_default_str();
  app.add_option("--concurrency", options.concurrency, "Target requests in flight, one level each")->delimiter(',');
  app.add_option("--duration", options.duration, "Seconds of arrivals per level")->capture_default_str();
  app.add_option("--prompt-len", options.prompt_len)->capture_default_str();
  app.add_option("--max-new-tokens", options.max_new_tokens)->capture_default_str();
  app.add_option("--reload-model-path", options.reload_model_path, "Reload this checkpoint under the highest load");
  CLI11_PARSE(app, argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // rows appear as levels finish

  const Sample alone = run_request(options, 1);
  if (!alone.ok) {
    std::fprintf(stderr, "bench_serve: a request to %s:%d failed; is `fp4serve serve` running there?\n",
                 options.host.c_str(), options.port);
    return 1;
  }
  std::printf("prompt %d tokens, %d new tokens; one request alone: %.0f ms (TTFT %.0f ms)\n\n", options.prompt_len,
              options.max_new_tokens, 1e3 * alone.e2e, 1e3 * alone.ttft);
  std::printf("| target conc. | arrivals/s | mean in flight | requests | failed | req/s | out tok/s | TTFT p50 ms | "
              "p90 | p99 | ITL p50 ms | p90 | p99 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int target : options.concurrency) {
    const double rate = target / alone.e2e;
    print_level(target, rate, run_level(options, rate, static_cast<uint64_t>(target)));
  }
  if (options.reload_model_path.empty()) return 0;

  const int target = *std::max_element(options.concurrency.begin(), options.concurrency.end());
  double reload_call = 0;
  json reload_answer;
  const LevelResult level = run_level(options, target / alone.e2e, 99, [&] {
    httplib::Client client(options.host, options.port);
    client.set_read_timeout(600, 0);
    const Clock::time_point start = Clock::now();
    const auto response = client.Post("/update_weights_from_disk",
                                      json({{"model_path", options.reload_model_path}}).dump(), "application/json");
    reload_call = seconds(Clock::now() - start);
    if (response) reload_answer = json::parse(response->body, nullptr, false);
  });
  double longest_gap = 0;
  for (const Sample& s : level.samples)
    for (double g : s.gaps) longest_gap = std::max(longest_gap, g);
  httplib::Client client(options.host, options.port);
  const auto metrics = client.Get("/metrics");
  std::smatch load, pause;
  const std::string text = metrics ? metrics->body : "";
  std::regex_search(text, load, std::regex("fp4serve_weight_reload_last_seconds ([0-9.e+-]+)"));
  std::regex_search(text, pause, std::regex("fp4serve_weight_reload_last_pause_seconds ([0-9.e+-]+)"));
  std::printf("\nreload under load (target concurrency %d): success %s, call %.3f s, weight load %s s, pause (request "
              "to restart of held requests) %s s, longest inter-token gap %.3f s, %zu requests\n",
              target, reload_answer.value("success", false) ? "true" : "false", reload_call,
              load.size() > 1 ? load[1].str().c_str() : "?", pause.size() > 1 ? pause[1].str().c_str() : "?",
              longest_gap, level.samples.size());
  return 0;
}
