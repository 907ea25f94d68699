// /update_weights_from_disk over HTTP: the reference system's test (reload the same checkpoint, flush on and off:
// greedy logprobs bitwise unchanged), a different checkpoint equals a fresh server on it, a failed reload changes
// nothing even under load, and reloads under load never mix versions (those two on the CPU and on the GPU).
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "server_fixture.h"
#include "support/skip_without_gpu.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::vector<int> prompt_of(int seed, int length) {
  std::vector<int> ids;
  for (int i = 0; i < length; ++i) ids.push_back(32 + (seed * 31 + i * 7) % 90);
  return ids;
}

json reload(httplib::Client& client, const fs::path& dir, json extra = json::object(), int* status = nullptr) {
  json body = {{"model_path", dir.string()}};
  body.update(extra);
  return post_json(client, "/update_weights_from_disk", body, status);
}

void expect_same(const Greedy& a, const Greedy& b, const std::string& what) {
  EXPECT_EQ(a.ids, b.ids) << what;
  EXPECT_EQ(a.logprobs, b.logprobs) << what;  // bitwise: doubles printed with round-trip precision
}

TEST(Reload, SameCheckpointTwiceFlushOnAndOffKeepsLogprobsBitwise) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(1, 40);
  const Greedy before = greedy_generate(client, prompt, 16);
  for (bool flush : {true, false}) {
    int status = 0;
    const json answer = reload(client, models().a, {{"flush_cache", flush}}, &status);
    ASSERT_EQ(status, 200) << answer.dump();
    EXPECT_EQ(answer["success"], true);
    EXPECT_EQ(answer["num_paused_requests"], 0);
    EXPECT_TRUE(answer["message"].is_string());
    expect_same(greedy_generate(client, prompt, 16), before, flush ? "after reload with flush" : "without flush");
  }
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "default");  // no version given: unchanged
}

TEST(Reload, DifferentCheckpointEqualsAFreshServerOnIt) {
  std::vector<std::vector<int>> prompts = {prompt_of(2, 5), prompt_of(3, 33), prompt_of(4, 64)};
  std::vector<Greedy> fresh_a, fresh_b;
  {
    ServerProcess server_b(models().b);
    httplib::Client client = server_b.client();
    for (const auto& prompt : prompts) fresh_b.push_back(greedy_generate(client, prompt, 12));
  }
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  for (const auto& prompt : prompts) fresh_a.push_back(greedy_generate(client, prompt, 12));
  EXPECT_NE(fresh_a[0].logprobs, fresh_b[0].logprobs) << "the two checkpoints should differ";

  int status = 0;
  const json to_b = reload(client, models().b, {{"weight_version", "b-1"}}, &status);
  ASSERT_EQ(status, 200) << to_b.dump();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Greedy reloaded = greedy_generate(client, prompts[i], 12);
    expect_same(reloaded, fresh_b[i], "B after reload, prompt " + std::to_string(i));
    EXPECT_EQ(reloaded.weight_version, "b-1");
  }
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "b-1");
  EXPECT_EQ(fs::path(get_json(client, "/get_model_info")["model_path"].get<std::string>()),
            fs::canonical(models().b));

  reload(client, models().a, {{"weight_version", "a-2"}, {"flush_cache", true}}, &status);
  ASSERT_EQ(status, 200);
  for (size_t i = 0; i < prompts.size(); ++i)
    expect_same(greedy_generate(client, prompts[i], 12), fresh_a[i], "A again, prompt " + std::to_string(i));

  // A bf16 checkpoint into the NVFP4 server is quantized on load exactly as `fp4serve quantize` made A from it.
  reload(client, models().a_bf16, {{"weight_version", "a-bf16"}}, &status);
  ASSERT_EQ(status, 200);
  for (size_t i = 0; i < prompts.size(); ++i)
    expect_same(greedy_generate(client, prompts[i], 12), fresh_a[i], "A from bf16, prompt " + std::to_string(i));
}

// Streams greedy requests in a loop until told to stop, recording every final chunk.
struct LoadClients {
  struct Outcome {
    int prompt;
    int status;
    std::vector<int> ids;
    std::string finish;
    std::string weight_version;
  };
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::vector<Outcome> outcomes;
  std::vector<std::thread> threads;

  LoadClients(const ServerProcess& server, int n_clients, const std::vector<std::vector<int>>& prompts,
              int max_new_tokens) {
    for (int c = 0; c < n_clients; ++c) {
      threads.emplace_back([this, &server, &prompts, c, max_new_tokens] {
        httplib::Client client = server.client();
        for (int i = 0; !stop; ++i) {
          const int p = (c + i) % static_cast<int>(prompts.size());
          json last;
          const json body = {{"input_ids", prompts[static_cast<size_t>(p)]},
                             {"sampling_params", {{"max_new_tokens", max_new_tokens}, {"temperature", 0},
                                                  {"ignore_eos", true}}},
                             {"stream", true}};
          const int status = stream_post(client, "/generate", body, [&](const std::string& payload) {
            if (payload != "[DONE]") last = json::parse(payload);
            return true;
          });
          Outcome outcome{p, status, {}, "", ""};
          if (status == 200 && last.contains("meta_info")) {
            outcome.ids = last["output_ids"].get<std::vector<int>>();
            outcome.finish = last["meta_info"]["finish_reason"]["type"];
            outcome.weight_version = last["meta_info"]["weight_version"];
          }
          std::lock_guard lock(mutex);
          outcomes.push_back(std::move(outcome));
        }
      });
    }
  }
  void join() {
    stop = true;
    for (std::thread& t : threads)
      if (t.joinable()) t.join();
  }
  ~LoadClients() { join(); }
};

// Where the servers of the under-load tests run, and on which pair of checkpoints. CPU: the fixture's tiny pair.
// GPU: the bundled arithmetic pair, since the tiny preset's heads of 32 are narrower than the GPU attention kernels
// take (64, 128 or 256); W4A16 (--act-quant none, as the GPU runs NVFP4) and --deterministic: the fast GPU path
// picks kernels by batch size and is not batch-invariant, so without it a greedy answer under load could differ by
// a token from the same prompt answered alone, which is what these tests compare every answer with.
struct ServedPair {
  fs::path a, b, corrupt;  // corrupt: `b` with truncated shards
  std::vector<std::string> serve_args;
};

class ReloadUnderLoad : public ::testing::TestWithParam<std::string> {  // the --device
 protected:
  void SetUp() override {
    if (GetParam() == "cuda") {
      FP4_SKIP_WITHOUT_GPU();
    }
  }

  static const ServedPair& pair() {
    static const ServedPair cpu{models().a, models().b, models().corrupt, {}};
    static const ServedPair cuda = [] {
      const fs::path bundled = fs::path(FP4SERVE_SOURCE_DIR) / "models";
      ServedPair p{bundled / "qwen3-moe-arith-a-nvfp4", bundled / "qwen3-moe-arith-b-nvfp4",
                   models().root / "arith_b_corrupt", {"--device", "cuda", "--act-quant", "none", "--deterministic"}};
      write_truncated_copy(p.b, p.corrupt);
      return p;
    }();
    return GetParam() == "cuda" ? cuda : cpu;
  }

  // A server of this device on `model`, with `extra` flags.
  static ServerProcess serve(const fs::path& model, std::vector<std::string> extra = {}) {
    extra.insert(extra.begin(), pair().serve_args.begin(), pair().serve_args.end());
    return ServerProcess(model, std::move(extra));
  }

  // What a server of this device answers to each prompt alone.
  static std::vector<std::vector<int>> fresh_outputs(const fs::path& model,
                                                     const std::vector<std::vector<int>>& prompts, int max_new_tokens) {
    ServerProcess server = serve(model);
    httplib::Client client = server.client();
    std::vector<std::vector<int>> outputs;
    for (const auto& prompt : prompts) outputs.push_back(greedy_generate(client, prompt, max_new_tokens).ids);
    return outputs;
  }
};

INSTANTIATE_TEST_SUITE_P(Devices, ReloadUnderLoad, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

TEST_P(ReloadUnderLoad, FailedReloadAnswers400AndChangesNothing) {
  const std::vector<std::vector<int>> prompts = {prompt_of(5, 20), prompt_of(6, 9)};
  const std::vector<std::vector<int>> expected = fresh_outputs(pair().a, prompts, 10);
  ServerProcess server = serve(pair().a, {"--weight-version", "good"});
  httplib::Client client = server.client();
  const Greedy before = greedy_generate(client, prompt_of(7, 30), 8);
  LoadClients load(server, 6, prompts, 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (const fs::path& bad : {pair().corrupt, models().root / "missing"}) {
    int status = 0;
    const json answer = reload(client, bad, {{"weight_version", "bad"}}, &status);
    EXPECT_EQ(status, 400) << answer.dump();
    EXPECT_EQ(answer["success"], false);
    EXPECT_NE(answer["message"].get<std::string>().find(bad.filename().string()), std::string::npos)
        << answer["message"];
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  load.join();
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], "good");
  expect_same(greedy_generate(client, prompt_of(7, 30), 8), before, "after the failed reloads");
  ASSERT_FALSE(load.outcomes.empty());
  for (const auto& outcome : load.outcomes) {
    ASSERT_EQ(outcome.status, 200);
    EXPECT_EQ(outcome.finish, "length");
    EXPECT_EQ(outcome.weight_version, "good");
    EXPECT_EQ(outcome.ids, expected[static_cast<size_t>(outcome.prompt)]);
  }
  EXPECT_NE(server.log().find("keeps serving the previous weights"), std::string::npos);
}

// The load: 32 streaming clients for the whole test while 20 reloads alternate between A and B (every
// third with abort_all_requests). Greedy requests, so each version's answer to a prompt is known in advance.
TEST_P(ReloadUnderLoad, ReloadsNeverMixVersions) {
  constexpr int kClients = 32, kReloads = 20, kNewTokens = 12;
  const std::vector<std::vector<int>> prompts = {prompt_of(8, 7), prompt_of(9, 21), prompt_of(10, 40),
                                                 prompt_of(11, 3)};
  const std::map<char, std::vector<std::vector<int>>> expected = {
      {'A', fresh_outputs(pair().a, prompts, kNewTokens)}, {'B', fresh_outputs(pair().b, prompts, kNewTokens)}};
  ServerProcess server = serve(pair().a, {"--weight-version", "0-A"});
  httplib::Client client = server.client();
  LoadClients load(server, kClients, prompts, kNewTokens);
  int aborting_reloads = 0;
  for (int r = 1; r <= kReloads; ++r) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    const bool to_b = r % 2 == 1;
    const bool abort_all = r % 3 == 0;
    aborting_reloads += abort_all;
    int status = 0;
    const json answer = reload(client, to_b ? pair().b : pair().a,
                               {{"weight_version", std::to_string(r) + (to_b ? "-B" : "-A")},
                                {"abort_all_requests", abort_all}},
                               &status);
    ASSERT_EQ(status, 200) << answer.dump();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  load.join();

  std::map<std::string, int> completed_per_version;
  int aborted = 0;
  for (const auto& outcome : load.outcomes) {
    ASSERT_EQ(outcome.status, 200) << "a request failed; server log:\n" << server.log();
    ASSERT_FALSE(outcome.weight_version.empty());
    const std::vector<int>& want = expected.at(outcome.weight_version.back())[static_cast<size_t>(outcome.prompt)];
    if (outcome.finish == "abort") {
      ++aborted;  // an aborted answer is a prefix of what its version produces
      ASSERT_LE(outcome.ids.size(), want.size());
      EXPECT_TRUE(std::equal(outcome.ids.begin(), outcome.ids.end(), want.begin())) << outcome.weight_version;
    } else {
      EXPECT_EQ(outcome.finish, "length");
      EXPECT_EQ(outcome.ids, want) << "version " << outcome.weight_version << " prompt " << outcome.prompt;
      ++completed_per_version[outcome.weight_version];
    }
  }
  EXPECT_GE(completed_per_version.size(), 4u) << "requests completed under too few versions";
  std::printf("%s: %zu requests: %d aborted, completed under %zu weight versions\n", GetParam().c_str(),
              load.outcomes.size(), aborted, completed_per_version.size());
  if (aborting_reloads == 0) {
    EXPECT_EQ(aborted, 0);
  }
  const auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("fp4serve_weight_reloads_total " + std::to_string(kReloads) + "\n"),
            std::string::npos);
}

}  // namespace
}  // namespace fp4serve::test
