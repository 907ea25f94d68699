// End-to-end helpers: tiny models made with the real CLI (synth + quantize) once per test binary, a real
// `fp4serve serve` process on 127.0.0.1 (port 0, read back from its log), cpp-httplib clients, metrics and background
// streams. Every wait is bounded; a server is stopped (SIGTERM, then SIGKILL) when its handle goes away.
#pragma once
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <sys/types.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace fp4serve::test {

std::filesystem::path fp4serve_binary();
// Runs the CLI with `args`; returns its exit status, output in `log` (appended).
int run_cli(const std::vector<std::string>& args, std::string* output = nullptr);

// Checkpoints shared by the tests of this binary, made on first use under a temp dir.
struct Models {
  std::filesystem::path root;
  std::filesystem::path a;        // NVFP4 from synth --seed 0
  std::filesystem::path b;        // NVFP4 from synth --seed 1
  std::filesystem::path a_bf16;   // the bf16 checkpoint `a` was quantized from
  std::filesystem::path b_bf16;   // the bf16 checkpoint `b` was quantized from
  std::filesystem::path corrupt;  // `b` with a truncated shard: fails validation
};
const Models& models();
// Copies the checkpoint `model` to `out` with every shard cut to half its size: it fails validation.
void write_truncated_copy(const std::filesystem::path& model, const std::filesystem::path& out);

class ServerProcess {
 public:
  // Starts `fp4serve serve --model-path MODEL --port 0 <extra>`; throws (test failure) if it does not listen
  // within 30 s.
  explicit ServerProcess(const std::filesystem::path& model, std::vector<std::string> extra = {});
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  httplib::Client client(int read_timeout_seconds = 60) const;
  std::string log() const;
  bool running();  // the process has not exited

 private:
  void stop();  // SIGTERM, then SIGKILL after 10 s

  pid_t pid_ = -1;
  int port_ = 0;
  std::filesystem::path log_path_;
};

// A client of a server on 127.0.0.1:port.
httplib::Client local_client(int port, int read_timeout_seconds = 60);

// POST a JSON body; the response parsed (status in `status`, null body when not JSON).
nlohmann::json post_json(httplib::Client& client, const std::string& path, const nlohmann::json& body,
                         int* status = nullptr, const httplib::Headers& headers = {});
nlohmann::json get_json(httplib::Client& client, const std::string& path, int* status = nullptr,
                        const httplib::Headers& headers = {});
// POST and read an SSE stream to the end: each event's payload (without "data: "), [DONE] included.
std::vector<std::string> post_sse(httplib::Client& client, const std::string& path, const nlohmann::json& body,
                                  int* status = nullptr);

// POST and read an SSE stream event by event; `on_event(payload)` returning false hangs up. Returns the status.
int stream_post(httplib::Client& client, const std::string& path, const nlohmann::json& body,
                const std::function<bool(const std::string& payload)>& on_event);

// A metric's value from /metrics (-1 when absent).
double metric(httplib::Client& client, const std::string& name);
// Polls until `condition` holds; false after 10 s.
bool eventually(const std::function<bool()>& condition);

// A /generate stream run in the background: `started` is set at its first chunk; after the thread is joined, `last`
// holds the last chunk before [DONE] and `status` the HTTP status.
struct BackgroundStream {
  std::atomic<bool> started{false};
  nlohmann::json last;
  int status = 0;
  std::thread thread;

  BackgroundStream(const ServerProcess& server, nlohmann::json body);
  ~BackgroundStream();
};

// A greedy /generate with logprobs: (output ids, their logprobs, weight_version).
struct Greedy {
  std::vector<int> ids;
  std::vector<double> logprobs;
  std::string weight_version;
};
Greedy greedy_generate(httplib::Client& client, const std::vector<int>& input_ids, int max_new_tokens);

}  // namespace fp4serve::test
