// Request control on a real server: abort by rid and abort-all, a client hanging up mid-stream, pause/continue,
// flush refused while requests run, and back-pressure (503 with Retry-After) when the queue is full.
#include <gtest/gtest.h>

#include <future>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;

// A streaming /generate that would run for thousands of tokens.
json long_request(const std::string& rid) {
  return {{"text", "tell me everything"},
          {"sampling_params", {{"max_new_tokens", 3000}, {"ignore_eos", true}}},
          {"stream", true},
          {"rid", rid}};
}

TEST(Control, AbortByRidEndsThatStreamWithFinishReasonAbort) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  BackgroundStream victim(server, long_request("victim"));
  BackgroundStream bystander(server, long_request("bystander"));
  ASSERT_TRUE(eventually([&] { return victim.started && bystander.started; }));
  const json aborted = post_json(client, "/abort_request", {{"rid", "victim"}});
  EXPECT_EQ(aborted["num_aborted"], 1);
  victim.thread.join();
  EXPECT_EQ(victim.status, 200);
  EXPECT_EQ(victim.last["meta_info"]["finish_reason"]["type"], "abort");
  EXPECT_LT(victim.last["meta_info"]["completion_tokens"].get<int>(), 3000);

  const json all = post_json(client, "/abort_request", {{"abort_all", true}});
  EXPECT_EQ(all["num_aborted"], 1);
  bystander.thread.join();
  EXPECT_EQ(bystander.last["meta_info"]["finish_reason"]["type"], "abort");
  EXPECT_EQ(metric(client, "fp4serve_requests_total{finish_reason=\"abort\"}"), 2);
}

TEST(Control, ClientHangingUpMidStreamFreesItsRequest) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  int chunks = 0;
  httplib::Client streamer = server.client();
  stream_post(streamer, "/generate", long_request("leaver"), [&](const std::string&) { return ++chunks < 3; });
  EXPECT_EQ(chunks, 3);
  EXPECT_TRUE(eventually([&] { return metric(client, "fp4serve_num_running_reqs") == 0; }))
      << "the abandoned request still runs";
  EXPECT_EQ(metric(client, "fp4serve_requests_total{finish_reason=\"abort\"}"), 1);
}

TEST(Control, PauseHoldsNewRequestsUntilContinue) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  int status = 0;
  post_json(client, "/pause_generation", json::object(), &status);
  ASSERT_EQ(status, 200);
  auto held = std::async(std::launch::async, [&server] {
    httplib::Client other = server.client();
    return greedy_generate(other, {5, 6, 7}, 4);
  });
  EXPECT_TRUE(eventually([&] { return metric(client, "fp4serve_num_queue_reqs") == 1; }));
  EXPECT_EQ(metric(client, "fp4serve_generation_paused"), 1);
  post_json(client, "/continue_generation", json::object(), &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(held.get().ids.size(), 4u);
  EXPECT_EQ(metric(client, "fp4serve_generation_paused"), 0);
}

TEST(Control, FlushCacheIsRefusedWhileRequestsRun) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  int status = 0;
  const json idle = post_json(client, "/flush_cache", json::object(), &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(idle["success"], true);
  BackgroundStream running(server, long_request("busy"));
  ASSERT_TRUE(eventually([&] { return running.started.load(); }));
  const json refused = post_json(client, "/flush_cache", json::object(), &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(refused["success"], false);
  EXPECT_NE(refused["message"].get<std::string>().find("in flight"), std::string::npos);
  post_json(client, "/abort_request", {{"abort_all", true}});
}

TEST(Control, FullQueueAnswers503WithRetryAfter) {
  ServerProcess server(models().a, {"--max-running-requests", "1", "--max-queued-requests", "1"});
  httplib::Client client = server.client();
  BackgroundStream first(server, long_request("first"));
  ASSERT_TRUE(eventually([&] { return first.started.load(); }));
  auto second = std::async(std::launch::async, [&server] {
    httplib::Client other = server.client();
    int status = 0;
    post_json(other, "/generate", {{"text", "queued"}, {"sampling_params", {{"max_new_tokens", 2}}}}, &status);
    return status;
  });
  ASSERT_TRUE(eventually([&] { return metric(client, "fp4serve_num_running_reqs") == 2; }));
  const auto response = client.Post("/generate", R"({"text": "x", "sampling_params": {"max_new_tokens": 1}})",
                                    "application/json");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 503);
  EXPECT_EQ(response->get_header_value("Retry-After"), "1");
  EXPECT_NE(response->body.find("capacity"), std::string::npos);
  post_json(client, "/abort_request", {{"rid", "first"}});
  EXPECT_EQ(second.get(), 200);  // the queued one ran once the slot freed
  EXPECT_GE(metric(client, "fp4serve_requests_rejected_total"), 1);
}

}  // namespace
}  // namespace fp4serve::test
