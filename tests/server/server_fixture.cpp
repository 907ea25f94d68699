#include "server_fixture.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

extern char** environ;

namespace fp4serve::test {

namespace fs = std::filesystem;

fs::path fp4serve_binary() {
  if (const char* bin = std::getenv("FP4SERVE_BIN")) return bin;
  return fs::path(FP4SERVE_BINARY_DIR) / "fp4serve";
}

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The child's environment: ours, plus OMP_WAIT_POLICY=passive unless set. OpenMP workers that spin while waiting
// starve the server's other threads on this shared 2-core machine (steps took seconds instead of milliseconds).
std::vector<char*> child_environment() {
  static std::string passive = "OMP_WAIT_POLICY=passive";
  std::vector<char*> env;
  bool has_policy = false;
  for (char** e = environ; *e; ++e) {
    env.push_back(*e);
    has_policy |= std::string_view(*e).starts_with("OMP_WAIT_POLICY=");
  }
  if (!has_policy) env.push_back(passive.data());
  env.push_back(nullptr);
  return env;
}

pid_t spawn(const std::vector<std::string>& args, const fs::path& log_path) {
  std::vector<char*> argv;
  for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  std::vector<char*> env = child_environment();
  const int error = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) throw std::runtime_error("cannot start " + args[0]);
  return pid;
}

}  // namespace

int run_cli(const std::vector<std::string>& args, std::string* output) {
  const fs::path log = fs::temp_directory_path() / ("fp4serve_cli_" + std::to_string(getpid()) + ".log");
  fs::remove(log);
  std::vector<std::string> argv{fp4serve_binary().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = spawn(argv, log);
  int status = 0;
  waitpid(pid, &status, 0);
  if (output) *output += read_file(log);
  fs::remove(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void write_truncated_copy(const fs::path& model, const fs::path& out) {
  fs::copy(model, out, fs::copy_options::recursive);
  for (const auto& entry : fs::directory_iterator(out))
    if (entry.path().extension() == ".safetensors") fs::resize_file(entry.path(), entry.file_size() / 2);
}

const Models& models() {
  struct TemporaryModels : Models {
    ~TemporaryModels() {
      std::error_code ignored;
      fs::remove_all(root, ignored);
    }
  };
  static const TemporaryModels made = [] {
    TemporaryModels m;
    m.root = fs::temp_directory_path() / ("fp4serve_server_test_" + std::to_string(getpid()));
    fs::remove_all(m.root);
    fs::create_directories(m.root);
    m.a_bf16 = m.root / "a_bf16";
    m.a = m.root / "a";
    m.b = m.root / "b";
    m.corrupt = m.root / "corrupt";
    m.b_bf16 = m.root / "b_bf16";
    std::string log;
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"synth", "--preset", "tiny", "--seed", "0", "--out", m.a_bf16.string()},
             {"synth", "--preset", "tiny", "--seed", "1", "--out", m.b_bf16.string()},
             {"quantize", "--in", m.a_bf16.string(), "--out", m.a.string()},
             {"quantize", "--in", m.b_bf16.string(), "--out", m.b.string()}}) {
      if (run_cli(args, &log) != 0) throw std::runtime_error("making the test models failed:\n" + log);
    }
    write_truncated_copy(m.b, m.corrupt);
    return m;
  }();
  return made;
}

ServerProcess::ServerProcess(const fs::path& model, std::vector<std::string> extra) {
  static int counter = 0;
  log_path_ = models().root / ("server_" + std::to_string(counter++) + ".log");
  fs::remove(log_path_);
  std::vector<std::string> args{fp4serve_binary().string(), "serve", "--model-path", model.string(), "--port", "0",
                                "--max-total-tokens", "16384"};
  args.insert(args.end(), extra.begin(), extra.end());
  pid_ = spawn(args, log_path_);
  const std::regex listening("listening on http://127\\.0\\.0\\.1:([0-9]+)");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch match;
    const std::string text = read_file(log_path_);
    if (std::regex_search(text, match, listening)) {
      port_ = std::stoi(match[1]);
      return;
    }
    if (!running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string text = log();
  stop();
  throw std::runtime_error("the server did not start listening:\n" + text);
}

ServerProcess::~ServerProcess() { stop(); }

void ServerProcess::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pid_ = -1;
}

bool ServerProcess::running() {
  int status = 0;
  return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
}

std::string ServerProcess::log() const { return read_file(log_path_); }

httplib::Client ServerProcess::client(int read_timeout_seconds) const {
  return local_client(port_, read_timeout_seconds);
}

httplib::Client local_client(int port, int read_timeout_seconds) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(read_timeout_seconds, 0);
  client.set_connection_timeout(5, 0);
  return client;
}

nlohmann::json post_json(httplib::Client& client, const std::string& path, const nlohmann::json& body,
                         int* status, const httplib::Headers& headers) {
  const auto response = client.Post(path.c_str(), headers, body.dump(), "application/json");
  if (!response) throw std::runtime_error("POST " + path + " failed: " + httplib::to_string(response.error()));
  if (status) *status = response->status;
  return nlohmann::json::parse(response->body, nullptr, /*allow_exceptions=*/false);
}

nlohmann::json get_json(httplib::Client& client, const std::string& path, int* status,
                        const httplib::Headers& headers) {
  const auto response = client.Get(path.c_str(), headers);
  if (!response) throw std::runtime_error("GET " + path + " failed: " + httplib::to_string(response.error()));
  if (status) *status = response->status;
  return nlohmann::json::parse(response->body, nullptr, /*allow_exceptions=*/false);
}

std::vector<std::string> post_sse(httplib::Client& client, const std::string& path, const nlohmann::json& body,
                                  int* status) {
  const auto response = client.Post(path.c_str(), body.dump(), "application/json");
  if (!response) throw std::runtime_error("POST " + path + " failed: " + httplib::to_string(response.error()));
  if (status) *status = response->status;
  std::vector<std::string> events;
  size_t at = 0;
  const std::string& text = response->body;
  while ((at = text.find("data: ", at)) != std::string::npos) {
    const size_t end = text.find("\n\n", at);
    events.push_back(text.substr(at + 6, end - at - 6));
    at = end;
  }
  return events;
}

int stream_post(httplib::Client& client, const std::string& path, const nlohmann::json& body,
                const std::function<bool(const std::string& payload)>& on_event) {
  httplib::Request request;
  request.method = "POST";
  request.path = path;
  request.body = body.dump();
  request.set_header("Content-Type", "application/json");
  std::string pending;
  request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    pending.append(data, size);
    size_t end = 0;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.starts_with("data: ") && !on_event(event.substr(6))) return false;
    }
    return true;
  };
  const httplib::Result result = client.send(request);
  if (!result) std::fprintf(stderr, "stream_post %s: %s\n", path.c_str(), httplib::to_string(result.error()).c_str());
  return result ? result->status : -1;
}

double metric(httplib::Client& client, const std::string& name) {
  const auto response = client.Get("/metrics");
  if (!response) return -1;
  const std::regex line("\\n" + std::regex_replace(name, std::regex("[{}\"]"), "\\$&") + " ([0-9.e+-]+)\\n");
  std::smatch match;
  return std::regex_search(response->body, match, line) ? std::stod(match[1]) : -1;
}

bool eventually(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

BackgroundStream::BackgroundStream(const ServerProcess& server, nlohmann::json body) {
  thread = std::thread([this, &server, body] {
    httplib::Client client = server.client();
    status = stream_post(client, "/generate", body, [this](const std::string& payload) {
      if (payload != "[DONE]") last = nlohmann::json::parse(payload);
      started = true;
      return true;
    });
  });
}

BackgroundStream::~BackgroundStream() {
  if (thread.joinable()) thread.join();
}

Greedy greedy_generate(httplib::Client& client, const std::vector<int>& input_ids, int max_new_tokens) {
  int status = 0;
  const nlohmann::json response = post_json(
      client, "/generate",
      {{"input_ids", input_ids},
       {"sampling_params", {{"max_new_tokens", max_new_tokens}, {"temperature", 0}, {"ignore_eos", true}}},
       {"return_logprob", true}},
      &status);
  if (status != 200) throw std::runtime_error("generate failed: " + response.dump());
  Greedy greedy;
  for (const auto& entry : response["meta_info"]["output_token_logprobs"]) {
    greedy.logprobs.push_back(entry[0].get<double>());
    greedy.ids.push_back(entry[1].get<int>());
  }
  greedy.weight_version = response["meta_info"]["weight_version"];
  return greedy;
}

}  // namespace fp4serve::test
