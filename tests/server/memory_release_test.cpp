// /release_memory_occupation and /resume_memory_occupation end to end, on the bundled arithmetic models (steps A and
// B): the RL flow (release all, resume weights, reload, resume the KV cache) answers bitwise as a server that never
// slept; offload gives back the same model (digest and answers); discard refuses to generate until a reload; a
// release is refused while requests run; repeated calls are reported, not errors.
#include <gtest/gtest.h>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kModelA = fs::path(FP4SERVE_SOURCE_DIR) / "models" / "qwen3-moe-arith-a-nvfp4";
const fs::path kModelB = fs::path(FP4SERVE_SOURCE_DIR) / "models" / "qwen3-moe-arith-b-nvfp4";

// "Q: 12 + 30 = ?"-like prompts of the demo vocabulary.
std::vector<int> prompt_of(int seed, int length) {
  std::vector<int> ids;
  for (int i = 0; i < length; ++i) ids.push_back(3 + (seed * 13 + i * 5) % 40);
  return ids;
}

json post_status(httplib::Client& client, const std::string& path, const json& body, int expected_status) {
  int status = 0;
  const json answer = post_json(client, path, body, &status);
  EXPECT_EQ(status, expected_status) << path << " " << body.dump() << ": " << answer.dump();
  return answer;
}

std::string digest_of(httplib::Client& client) { return get_json(client, "/get_weights_digest")["weights_digest"]; }

void expect_same_answers(const Greedy& a, const Greedy& b) {
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.logprobs, b.logprobs);  // bitwise: the same floats print the same JSON
}

void expect_generate_refused(httplib::Client& client, const std::string& naming) {
  int status = 0;
  const json refused = post_json(client, "/generate", {{"input_ids", prompt_of(1, 8)}}, &status);
  EXPECT_EQ(status, 503);
  EXPECT_NE(refused.dump().find(naming), std::string::npos) << refused;
}

class RlFlow : public ::testing::TestWithParam<std::string> {};

TEST_P(RlFlow, ReleaseAllResumeWeightsReloadResumeKvCacheAnswersAsAServerThatNeverSlept) {
  const std::vector<int> prompt = prompt_of(2, 30);
  Greedy never_slept;
  std::string digest_b;
  {
    ServerProcess fresh(kModelB);
    httplib::Client client = fresh.client();
    never_slept = greedy_generate(client, prompt, 24);
    digest_b = digest_of(client);
  }
  ServerProcess server(kModelA, {"--weights-release-mode", GetParam()});
  httplib::Client client = server.client();
  greedy_generate(client, prompt, 24);  // fills the prefix cache under A

  const json released = post_status(client, "/release_memory_occupation", json::object(), 200);
  EXPECT_EQ(released["released"], json({"weights", "kv_cache"}));
  EXPECT_EQ(released["nothing_to_do"], json({"cuda_graph"}));
  EXPECT_EQ(get_json(client, "/get_server_info")["released_memory"], json({"weights", "kv_cache"}));
  expect_generate_refused(client, "the memory of weights, kv_cache is released");
  const json too_early = post_status(client, "/update_weights_from_disk", {{"model_path", kModelB.string()}}, 400);
  EXPECT_NE(too_early["message"].get<std::string>().find("the weights' memory is released; resume it first"),
            std::string::npos) << too_early;

  post_status(client, "/resume_memory_occupation", {{"tags", {"weights"}}}, 200);
  expect_generate_refused(client, "the memory of kv_cache is released");
  post_status(client, "/update_weights_from_disk", {{"model_path", kModelB.string()}, {"weight_version", "b"}}, 200);
  const json resumed = post_status(client, "/resume_memory_occupation", {{"tags", {"kv_cache"}}}, 200);
  EXPECT_EQ(resumed["resumed"], json({"kv_cache"}));
  EXPECT_EQ(resumed["released_memory"], json::array());
  EXPECT_EQ(resumed["weights_need_reload"], false);

  const Greedy after = greedy_generate(client, prompt, 24);
  expect_same_answers(after, never_slept);
  EXPECT_EQ(after.weight_version, "b");
  EXPECT_EQ(digest_of(client), digest_b);
}

INSTANTIATE_TEST_SUITE_P(MemoryRelease, RlFlow, ::testing::Values("offload", "discard"));

TEST(MemoryRelease, OffloadGivesBackTheSameModel) {
  ServerProcess server(kModelA);
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(3, 20);
  const Greedy before = greedy_generate(client, prompt, 16);
  const std::string digest = digest_of(client);

  post_status(client, "/release_memory_occupation", {{"tags", {"weights"}}}, 200);
  int status = 0;
  get_json(client, "/get_weights_digest", &status);
  EXPECT_EQ(status, 503);
  const json health = get_json(client, "/health", &status);
  EXPECT_EQ(status, 200);  // asleep on purpose: healthy, and it says so
  EXPECT_EQ(health["released_memory"], json({"weights"}));
  post_status(client, "/resume_memory_occupation", {{"tags", {"weights"}}}, 200);

  EXPECT_EQ(digest_of(client), digest);
  expect_same_answers(greedy_generate(client, prompt, 16), before);
}

TEST(MemoryRelease, DiscardedWeightsRefuseToGenerateUntilAReload) {
  ServerProcess server(kModelA, {"--weights-release-mode", "discard"});
  httplib::Client client = server.client();
  const std::vector<int> prompt = prompt_of(4, 20);
  const Greedy before = greedy_generate(client, prompt, 16);
  const std::string digest = digest_of(client);

  post_status(client, "/release_memory_occupation", {{"tags", {"weights"}}}, 200);
  const json resumed = post_status(client, "/resume_memory_occupation", {{"tags", {"weights"}}}, 200);
  EXPECT_EQ(resumed["weights_need_reload"], true);
  EXPECT_NE(resumed["message"].get<std::string>().find("load them with /update_weights_from_disk"), std::string::npos);
  expect_generate_refused(client, "the weights were discarded");
  int status = 0;
  const json health = get_json(client, "/health", &status);
  EXPECT_EQ(status, 503);
  EXPECT_NE(health.dump().find("/update_weights_from_disk"), std::string::npos) << health;
  get_json(client, "/get_weights_digest", &status);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(get_json(client, "/get_server_info")["weights_need_reload"], true);

  const json bad_reload = post_status(client, "/update_weights_from_disk", {{"model_path", "/nonexistent"}}, 400);
  expect_generate_refused(client, "the weights were discarded");  // a failed reload does not make them valid

  post_status(client, "/update_weights_from_disk", {{"model_path", kModelA.string()}}, 200);
  get_json(client, "/health", &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(digest_of(client), digest);
  expect_same_answers(greedy_generate(client, prompt, 16), before);
}

TEST(MemoryRelease, RefusedWhileRequestsRunAndRepeatedCallsAreReported) {
  ServerProcess server(models().a);  // a synthetic model with a context long enough to keep a request running
  httplib::Client client = server.client();
  json long_request = {{"input_ids", prompt_of(5, 10)},
                       {"sampling_params", {{"max_new_tokens", 3000}, {"ignore_eos", true}}},
                       {"stream", true}};
  BackgroundStream running(server, long_request);
  ASSERT_TRUE(eventually([&] { return running.started.load(); }));
  const json refused = post_status(client, "/release_memory_occupation", json::object(), 409);
  EXPECT_EQ(refused["success"], false);
  EXPECT_NE(refused["message"].get<std::string>().find("1 requests are in flight"), std::string::npos) << refused;
  EXPECT_EQ(get_json(client, "/get_server_info")["released_memory"], json::array());

  // Paused in place, the frozen request still holds KV: still refused. Aborted: nothing is in flight.
  post_status(client, "/pause_generation", {{"mode", "in_place"}}, 200);
  post_status(client, "/release_memory_occupation", {{"tags", {"kv_cache"}}}, 409);
  post_status(client, "/pause_generation", {{"mode", "abort"}}, 200);
  running.thread.join();
  EXPECT_EQ(running.last["meta_info"]["finish_reason"]["type"], "abort");
  post_status(client, "/release_memory_occupation", {{"tags", {"kv_cache"}}}, 200);
  post_status(client, "/continue_generation", json::object(), 200);

  const json again = post_status(client, "/release_memory_occupation", {{"tags", {"kv_cache", "weights"}}}, 200);
  EXPECT_EQ(again["released"], json({"weights"}));
  EXPECT_EQ(again["already_released"], json({"kv_cache"}));
  const json resumed = post_status(client, "/resume_memory_occupation", {{"tags", nullptr}}, 200);
  EXPECT_EQ(resumed["resumed"], json({"weights", "kv_cache"}));
  const json not_released = post_status(client, "/resume_memory_occupation", {{"tags", {"weights"}}}, 200);
  EXPECT_EQ(not_released["not_released"], json({"weights"}));
  EXPECT_EQ(post_status(client, "/release_memory_occupation", {{"tags", json::array()}}, 200)["released"],
            json::array());

  const json unknown = post_status(client, "/release_memory_occupation", {{"tags", {"weights", "activations"}}}, 400);
  EXPECT_NE(unknown.dump().find("unknown memory tag \\\"activations\\\""), std::string::npos) << unknown;
  EXPECT_EQ(get_json(client, "/get_server_info")["released_memory"], json::array());
  greedy_generate(client, prompt_of(6, 12), 4);
}

}  // namespace
}  // namespace fp4serve::test
