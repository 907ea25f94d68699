// bench_accuracy: the gsm8k-style accuracy benchmark against a running `fp4serve serve`. All N held-out questions
// (JSONL lines {"question", "answer"}, e.g. models/arith-heldout.jsonl) are sent at once, one thread each, as greedy
// /v1/chat/completions requests (the model's chat template renders them as in training); an answer counts when
// the integer after its first "####" equals the reference, and is invalid when there is none. Prints accuracy,
// invalid rate, latency percentiles and output tokens/s; --answers-out keeps every answer for a question-by-question
// comparison of two runs.
//   bench_accuracy --port 30000 --questions models/arith-heldout.jsonl [--n 256] [--max-new-tokens 64] [--label L]
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Options {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string questions;
  int n = 0;  // 0: every question in the file
  int max_new_tokens = 64;
  std::string label = "server";
  std::string answers_out;
};

struct Problem {
  std::string question;
  long long answer = 0;
};

struct Outcome {
  bool ok = false;  // HTTP 200 with a completion
  std::string text;
  std::optional<long long> parsed;
  int tokens = 0;
  double latency = 0;
};

std::vector<Problem> read_problems(const std::string& path, int n) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--questions " + path + ": cannot open the file");
  std::vector<Problem> problems;
  int line_number = 0;
  for (std::string line; std::getline(in, line) && (n <= 0 || static_cast<int>(problems.size()) < n);) {
    ++line_number;
    if (line.empty()) continue;
    const json row = json::parse(line, nullptr, false);
    if (!row.is_object() || !row.contains("question") || !row["question"].is_string() || !row.contains("answer") ||
        !row["answer"].is_number_integer())
      throw std::runtime_error(path + ":" + std::to_string(line_number) +
                               ": expected {\"question\": string, \"answer\": integer}");
    problems.push_back({row["question"], row["answer"]});
  }
  if (problems.empty()) throw std::runtime_error("--questions " + path + ": no questions");
  return problems;
}

// The integer after the first "####", as gsm8k's grader reads it.
std::optional<long long> parse_answer(const std::string& text) {
  static const std::regex pattern(R"(####\s*(-?\d+))");
  std::smatch match;
  if (!std::regex_search(text, match, pattern)) return std::nullopt;
  try {
    return std::stoll(match[1]);
  } catch (const std::out_of_range&) {
    return std::nullopt;
  }
}

Outcome ask(const Options& options, const std::string& question) {
  httplib::Client client(options.host, options.port);
  client.set_read_timeout(600, 0);
  const json body = {{"messages", {{{"role", "user"}, {"content", question}}}},
                     {"max_tokens", options.max_new_tokens},
                     {"temperature", 0}};
  Outcome outcome;
  const Clock::time_point start = Clock::now();
  const auto response = client.Post("/v1/chat/completions", body.dump(), "application/json");
  outcome.latency = std::chrono::duration<double>(Clock::now() - start).count();
  if (!response || response->status != 200) return outcome;
  const json answer = json::parse(response->body, nullptr, false);
  if (answer.is_discarded()) return outcome;
  outcome.ok = true;
  outcome.text = answer["choices"][0]["message"]["content"];
  outcome.tokens = answer["usage"]["completion_tokens"];
  outcome.parsed = parse_answer(outcome.text);
  return outcome;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
}

int run(const Options& options) {
  const std::vector<Problem> problems = read_problems(options.questions, options.n);
  std::vector<Outcome> outcomes(problems.size());
  const Clock::time_point start = Clock::now();
  {
    std::vector<std::jthread> threads;
    for (size_t i = 0; i < problems.size(); ++i)
      threads.emplace_back([&, i] { outcomes[i] = ask(options, problems[i].question); });
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();

  int correct = 0, invalid = 0, failed = 0;
  long long tokens = 0;
  std::vector<double> latencies;
  for (size_t i = 0; i < problems.size(); ++i) {
    const Outcome& o = outcomes[i];
    failed += !o.ok;
    invalid += o.ok && !o.parsed;
    correct += o.parsed == problems[i].answer;
    tokens += o.tokens;
    latencies.push_back(o.latency);
  }
  const double n = static_cast<double>(problems.size());
  std::printf("| label | n | accuracy | invalid | failed | latency mean s | p50 | p90 | max | output tokens | wall s "
              "| out tok/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  double mean = 0;
  for (double l : latencies) mean += l / n;
  std::printf("| %s | %zu | %.3f | %.3f | %d | %.2f | %.2f | %.2f | %.2f | %lld | %.2f | %.0f |\n",
              options.label.c_str(), problems.size(), correct / n, invalid / n, failed, mean,
              percentile(latencies, 0.5), percentile(latencies, 0.9), percentile(latencies, 1.0), tokens, wall,
              static_cast<double>(tokens) / wall);
  if (!options.answers_out.empty()) {
    std::ofstream out(options.answers_out);
    for (size_t i = 0; i < problems.size(); ++i) {
      const Outcome& o = outcomes[i];
      out << json{{"index", i}, {"text", o.text}, {"parsed", o.parsed ? json(*o.parsed) : json(nullptr)},
                  {"correct", o.parsed == problems[i].answer}}
                 .dump()
          << "\n";
    }
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"gsm8k-style accuracy of a running fp4serve server on held-out questions, all sent in parallel"};
  app.add_option("--host", options.host)->capture_default_str();
  app.add_option("--port", options.port)->capture_default_str();
  app.add_option("--questions", options.questions, "JSONL, one {\"question\", \"answer\"} per line")->required();
  app.add_option("--n", options.n, "Questions to send (the first N; 0: all)")->capture_default_str();
  app.add_option("--max-new-tokens", options.max_new_tokens)->capture_default_str();
  app.add_option("--label", options.label, "Row label in the printed table")->capture_default_str();
  app.add_option("--answers-out", options.answers_out, "Write every answer as JSONL (index, text, parsed)");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_accuracy: %s\n", e.what());
    return 2;
  }
}
