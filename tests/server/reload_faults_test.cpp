// Fault injection for /update_weights_from_disk, end to end over HTTP: the server runs in this process with an
// injected I/O layer (tests/support/faulty_files.h) and staging allocator, so a disk read error, a shard truncated,
// deleted, rewritten or replaced mid-read, memory running out, or the client hanging up can be placed at any read
// of the validation or the commit. After each, the server must serve either the old weights byte-identically or
// the new ones completely, and say which: the reload's answer (success, message), /get_weights_digest against
// the checkpoints' digests, /get_weight_version, and a greedy answer against a fresh server on each checkpoint.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>

#include "engine/weights_digest.h"
#include "in_process_server.h"
#include "server_fixture.h"
#include "support/faulty_files.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::vector<int> kPrompt{5, 17, 33, 2, 90, 41, 7};
constexpr int kNewTokens = 4;

// What serving a checkpoint looks like from outside.
struct Expected {
  std::string digest;
  Greedy greedy;
};

const Expected& expected_for(const fs::path& checkpoint) {
  static std::map<fs::path, Expected> made;
  auto it = made.find(checkpoint);
  if (it != made.end()) return it->second;
  InProcessServer server(checkpoint, {});
  httplib::Client client = server.client();
  return made[checkpoint] = {digest_hex(checkpoint_digest(checkpoint)), greedy_generate(client, kPrompt, kNewTokens)};
}

std::vector<fs::path> shards_of(const fs::path& dir) {
  std::vector<fs::path> shards;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors") shards.push_back(entry.path());
  return shards;
}

class ReloadFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    LoadOptions load{.open_file = files_.opener(),
                     .allocate_staging = [this](size_t bytes) {
                       if (out_of_memory_) throw std::bad_alloc();
                       return allocate_staging_memory(bytes);
                     },
                     .between_validate_and_commit = [this] { validation_reads_ = files_.reads(); }};
    ServerOptions options;
    options.weight_version = "A";
    server_ = std::make_unique<InProcessServer>(models().a, std::move(load), options);
    client_ = std::make_unique<httplib::Client>(server_->client());
    // A clean reload of A into A counts the reads of a reload: validation, then commit.
    files_.arm({});
    ASSERT_EQ(reload(models().a, "A").second, 200);
    total_reads_ = files_.reads();
    ASSERT_GT(validation_reads_, 2u);
    ASSERT_GT(total_reads_, validation_reads_ + 2);
  }
  void TearDown() override { fs::remove_all(scratch_root()); }

  // (answer, status)
  std::pair<json, int> reload(const fs::path& dir, const std::string& version) {
    int status = 0;
    json answer = post_json(*client_, "/update_weights_from_disk",
                            {{"model_path", dir.string()}, {"weight_version", version}}, &status);
    return {answer, status};
  }

  // The server's own account of what it serves must match `checkpoint` in every way we can see.
  void expect_serving(const fs::path& checkpoint, const std::string& version, const std::string& context) {
    SCOPED_TRACE(context);
    const Expected& expected = expected_for(checkpoint);
    int status = 0;
    const json served = get_json(*client_, "/get_weights_digest", &status);
    ASSERT_EQ(status, 200) << served.dump();
    EXPECT_EQ(served["weights_digest"], expected.digest) << "served weights are neither old nor new: a mix";
    EXPECT_EQ(served["weight_version"], version);
    EXPECT_EQ(get_json(*client_, "/get_weight_version")["weight_version"], version);
    const Greedy greedy = greedy_generate(*client_, kPrompt, kNewTokens);
    EXPECT_EQ(greedy.ids, expected.greedy.ids);
    EXPECT_EQ(greedy.logprobs, expected.greedy.logprobs);
    EXPECT_EQ(greedy.weight_version, version);
  }

  // The reload must have failed saying the previous weights still serve, and they must (byte-identical A).
  void expect_refused_serving_a(const std::pair<json, int>& outcome, const std::string& context,
                                const std::string& message_part = "") {
    EXPECT_EQ(outcome.second, 400) << context << ": " << outcome.first.dump();
    EXPECT_EQ(outcome.first["success"], false) << context;
    const std::string message = outcome.first["message"];
    EXPECT_TRUE(message.find("keeps serving the previous weights") != std::string::npos) << context << ": " << message;
    EXPECT_NE(message.find(message_part), std::string::npos) << context << ": " << message;
    expect_serving(models().a, "A", context);
  }

  // Either outcome is allowed, but what the answer says must be what is served.
  void expect_old_or_new(const std::pair<json, int>& outcome, const std::string& new_version,
                         const std::string& context) {
    if (outcome.second == 200) {
      EXPECT_EQ(outcome.first["success"], true) << context;
      expect_serving(models().b, new_version, context + " (answered: new weights)");
    } else {
      expect_refused_serving_a(outcome, context + " (answered: old weights)");
    }
  }

  // Read numbers spread over one phase: its first, its last and `n` in between.
  static std::vector<uint64_t> reads_in(uint64_t first, uint64_t last, uint64_t n) {
    std::vector<uint64_t> reads{first};
    for (uint64_t i = 1; i <= n; ++i) reads.push_back(first + (last - first) * i / (n + 1));
    reads.push_back(last);
    return reads;
  }
  std::vector<std::pair<std::string, uint64_t>> every_phase() const {
    std::vector<std::pair<std::string, uint64_t>> points;
    for (uint64_t r : reads_in(1, validation_reads_, 6)) points.push_back({"validation read " + std::to_string(r), r});
    for (uint64_t r : reads_in(validation_reads_ + 1, total_reads_, 6))
      points.push_back({"commit read " + std::to_string(r), r});
    return points;
  }
  bool in_validation(uint64_t read) const { return read <= validation_reads_; }

  // A fresh copy of B to damage, its files dated an hour back as if written earlier: a file's modification time
  // has the kernel's clock tick as resolution, so a rewrite in the tick of the copy itself would not show in it.
  fs::path copy_of_b(const std::string& name) {
    const fs::path dir = scratch_root() / name;
    fs::remove_all(dir);
    fs::create_directories(dir.parent_path());
    fs::copy(models().b, dir, fs::copy_options::recursive);
    for (const fs::path& shard : shards_of(dir))
      fs::last_write_time(shard, fs::file_time_type::clock::now() - std::chrono::hours(1));
    return dir;
  }
  static fs::path scratch_root() { return models().root / ("faults_" + std::to_string(::getpid())); }

  FaultyFiles files_;
  std::atomic<bool> out_of_memory_{false};
  std::atomic<uint64_t> validation_reads_{0};
  uint64_t total_reads_ = 0;
  std::unique_ptr<InProcessServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(ReloadFaults, ReadErrorAtAnyPhaseKeepsTheOldWeights) {
  for (const auto& [where, read] : every_phase()) {
    files_.arm({.fail_read = read});
    const auto outcome = reload(models().b, "B");
    expect_refused_serving_a(outcome, "EIO at " + where, "Input/output error");
    if (!in_validation(read)) {
      EXPECT_NE(outcome.first["message"].get<std::string>().find("were restored"), std::string::npos) << where;
    }
  }
}

TEST_F(ReloadFaults, DiskGoneBadDuringTheCommitMakesTheServerRefuseUntilAGoodReload) {
  // Failing from a validation read on: refused, A serves. From a commit read on: the restore of A fails too.
  files_.arm({.fail_read = validation_reads_ / 2, .keep_failing = true});
  expect_refused_serving_a(reload(models().b, "B"), "disk bad from validation");

  files_.arm({.fail_read = validation_reads_ + 3, .keep_failing = true});
  const auto [answer, status] = reload(models().b, "B");
  EXPECT_EQ(status, 400);
  EXPECT_NE(answer["message"].get<std::string>().find("inconsistent"), std::string::npos) << answer.dump();
  // The server says so everywhere and generates nothing.
  int code = 0;
  get_json(*client_, "/health", &code);
  EXPECT_EQ(code, 503);
  get_json(*client_, "/get_weights_digest", &code);
  EXPECT_EQ(code, 503);
  post_json(*client_, "/generate", {{"input_ids", kPrompt}}, &code);
  EXPECT_EQ(code, 503);

  files_.arm({});  // the disk recovers: a reload of B brings the server back, entirely on B
  ASSERT_EQ(reload(models().b, "B").second, 200);
  expect_serving(models().b, "B", "after recovering");
}

TEST_F(ReloadFaults, ShortReadsLoadTheNewWeightsCompletely) {
  files_.arm({.max_read_bytes = 64});
  ASSERT_EQ(reload(models().b, "B").second, 200);
  EXPECT_GT(files_.reads(), 2 * total_reads_);
  expect_serving(models().b, "B", "short reads");
}

TEST_F(ReloadFaults, ShardTruncatedWhileReadKeepsTheOldWeights) {
  for (const auto& [where, read] : every_phase()) {
    const fs::path dir = copy_of_b("truncated");
    files_.arm({.before_read = read, .action = [&] {
                  for (const fs::path& shard : shards_of(dir)) fs::resize_file(shard, fs::file_size(shard) / 2);
                }});
    expect_refused_serving_a(reload(dir, "B"), "truncated before " + where);
  }
}

TEST_F(ReloadFaults, ShardDeletedWhileReadLoadsTheNewWeightsCompletely) {
  for (const auto& [where, read] : every_phase()) {
    const fs::path dir = copy_of_b("deleted");
    files_.arm({.before_read = read, .action = [&] {
                  for (const fs::path& shard : shards_of(dir)) fs::remove(shard);
                }});
    const auto outcome = reload(dir, "B " + where);
    ASSERT_EQ(outcome.second, 200) << where << ": " << outcome.first.dump();  // the open descriptor reads it whole
    expect_serving(models().b, "B " + where, "deleted before " + where);
    files_.arm({});
    ASSERT_EQ(reload(models().a, "A").second, 200);
  }
}

TEST_F(ReloadFaults, ShardRewrittenOrReplacedWhileReadIsOldOrNewNeverAMix) {
  // Rewritten in place with A's bytes (a trainer writing over the directory), or replaced by rename with A's file.
  for (const bool in_place : {true, false}) {
    for (const auto& [where, read] : every_phase()) {
      const std::string context = std::string(in_place ? "rewritten in place" : "replaced by rename") + " before " +
                                  where;
      const fs::path dir = copy_of_b("rewritten");
      files_.arm({.before_read = read, .action = [&] {
                    for (const fs::path& shard : shards_of(dir)) {
                      const fs::path a_shard = models().a / shard.filename();
                      if (in_place) {
                        std::ifstream in(a_shard, std::ios::binary);
                        std::fstream out(shard, std::ios::in | std::ios::out | std::ios::binary);
                        out << in.rdbuf();
                      } else {
                        fs::copy_file(a_shard, dir / "incoming.tmp");
                        fs::rename(dir / "incoming.tmp", shard);
                      }
                    }
                  }});
      const auto outcome = reload(dir, "B");
      if (in_validation(read)) {
        expect_refused_serving_a(outcome, context, in_place ? "modified in place" : "replaced by another file");
      } else if (in_place) {
        expect_old_or_new(outcome, "B", context);  // the digest check of every chunk still to be written decides
      } else {
        ASSERT_EQ(outcome.second, 200) << context;  // the open descriptor still reads the validated file
        expect_serving(models().b, "B", context);
      }
      files_.arm({});
      ASSERT_EQ(reload(models().a, "A").second, 200);
    }
  }
}

TEST_F(ReloadFaults, OutOfMemoryForStagingKeepsTheOldWeights) {
  out_of_memory_ = true;
  expect_refused_serving_a(reload(models().b, "B"), "staging allocation fails", "out of memory");
  out_of_memory_ = false;
  ASSERT_EQ(reload(models().b, "B").second, 200);
  expect_serving(models().b, "B", "memory back");
}

int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) throw std::runtime_error("connect");
  return fd;
}

// Sends a reload on a raw socket, whose answer nobody will read.
void send_reload(int fd, const fs::path& dir, const std::string& version) {
  const std::string body = json{{"model_path", dir.string()}, {"weight_version", version}}.dump();
  const std::string request = "POST /update_weights_from_disk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size()))
    throw std::runtime_error("send");
}

// The client's socket, closed from inside the reload (the action of a FaultyFiles read).
struct HangingUpClient {
  int fd;
  std::atomic<bool> hung_up{false};
  explicit HangingUpClient(int port) : fd(connect_to(port)) {}
  std::function<void()> hang_up() {
    return [this] {
      ::shutdown(fd, SHUT_RDWR);
      ::close(fd);
      hung_up = true;
    };
  }
};

TEST_F(ReloadFaults, ClientHangingUpMidReloadChangesNothingAboutItsOutcome) {
  // The client goes away during the validation (read 3) and during the commit: the reload completes regardless
  // and the server reports the new version.
  for (const uint64_t hang_up_at : {uint64_t{3}, validation_reads_ + 2}) {
    const std::string version = "B-" + std::to_string(hang_up_at);
    HangingUpClient client(server_->port());
    files_.arm({.before_read = hang_up_at, .action = client.hang_up()});
    send_reload(client.fd, models().b, version);
    ASSERT_TRUE(eventually([&] { return client.hung_up.load(); }));
    ASSERT_TRUE(eventually([&] { return get_json(*client_, "/get_weight_version")["weight_version"] == version; }));
    expect_serving(models().b, version, "client hung up at read " + std::to_string(hang_up_at));
    files_.arm({});
    ASSERT_EQ(reload(models().a, "A").second, 200);
  }

  // A failing reload whose client went away rolls back as any other.
  HangingUpClient client(server_->port());
  files_.arm({.fail_read = validation_reads_ + 4, .before_read = validation_reads_ + 1, .action = client.hang_up()});
  send_reload(client.fd, models().b, "never");
  ASSERT_TRUE(eventually([&] { return client.hung_up.load(); }));
  ASSERT_TRUE(eventually([&] { return metric(*client_, "fp4serve_weight_reload_failures_total") >= 1; }));
  expect_serving(models().a, "A", "client hung up, then the commit failed");
}

}  // namespace
}  // namespace fp4serve::test
