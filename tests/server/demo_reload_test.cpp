// The reload demo (`make run`) as a test, on the trained demo pair (models/README.md) and the first held-out
// questions (models/arith-heldout.jsonl) over /v1/chat/completions, greedy: a server on step A reloaded to step B
// answers every question as a fresh server on B does, and reloaded back to A answers as it did before. B comes as
// NVFP4 (static act-quant, the demo's mode) and as the committed bf16 B quantized online; that leg runs per-token
// act-quant, which ignores the checkpoint input scales that an online reload keeps from A, so the answers must
// match exactly. Among the first questions A and B solve differently (A errs on 1 and 3), so reloads are visible.
#include <gtest/gtest.h>

#include <fstream>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kModels = fs::path(FP4SERVE_SOURCE_DIR) / "models";
const fs::path kModelA = kModels / "qwen3-moe-arith-a-nvfp4";
const fs::path kModelB = kModels / "qwen3-moe-arith-b-nvfp4";
const fs::path kModelBBf16 = kModels / "qwen3-moe-arith-b-bf16";
constexpr int kQuestions = 6;  // CI: a few questions keep the test fast; bench_accuracy runs all of them
constexpr int kMaxTokens = 64;  // the longest held-out solution is 43 characters, digits one token each

std::vector<std::string> heldout_questions() {
  std::ifstream in(kModels / "arith-heldout.jsonl");
  std::vector<std::string> questions;
  for (std::string line; std::getline(in, line) && questions.size() < kQuestions;)
    questions.push_back(json::parse(line)["question"]);
  return questions;
}

std::vector<std::string> answers(const ServerProcess& server) {
  httplib::Client client = server.client();
  std::vector<std::string> texts;
  for (const std::string& question : heldout_questions()) {
    int status = 0;
    const json body = {{"messages", {{{"role", "user"}, {"content", question}}}},
                       {"max_tokens", kMaxTokens},
                       {"temperature", 0}};
    const json reply = post_json(client, "/v1/chat/completions", body, &status);
    EXPECT_EQ(status, 200) << reply.dump();
    texts.push_back(status == 200 ? reply["choices"][0]["message"]["content"].get<std::string>() : "");
  }
  return texts;
}

void reload(const ServerProcess& server, const fs::path& dir, const std::string& version) {
  httplib::Client client = server.client();
  int status = 0;
  const json reply = post_json(client, "/update_weights_from_disk",
                               {{"model_path", dir.string()}, {"weight_version", version}}, &status);
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(get_json(client, "/get_weight_version")["weight_version"], version);
}

void expect_same_answers(const std::vector<std::string>& got, const std::vector<std::string>& want,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << what << ", question " << i;
}

// Serve A, reload `b`, compare with a fresh server on `fresh_b`, reload A back.
void check_reload_demo(const fs::path& b, const fs::path& fresh_b, const std::vector<std::string>& act_quant) {
  ASSERT_EQ(heldout_questions().size(), static_cast<size_t>(kQuestions));
  std::vector<std::string> want_b;
  {
    ServerProcess server_b(fresh_b, act_quant);
    want_b = answers(server_b);
  }
  ServerProcess server(kModelA, act_quant);
  const std::vector<std::string> want_a = answers(server);
  EXPECT_NE(want_a, want_b) << "A and B should be different policies";
  reload(server, b, "b");
  expect_same_answers(answers(server), want_b, "A reloaded to " + b.filename().string());
  reload(server, kModelA, "a-again");
  expect_same_answers(answers(server), want_a, "reloaded back to A");
}

TEST(DemoReload, NvFp4StepBThenBackToA) { check_reload_demo(kModelB, kModelB, {"--act-quant", "static"}); }

TEST(DemoReload, Bf16StepBQuantizedOnlineThenBackToA) {
  check_reload_demo(kModelBBf16, kModelB, {"--act-quant", "per-token"});
}

}  // namespace
}  // namespace fp4serve::test
