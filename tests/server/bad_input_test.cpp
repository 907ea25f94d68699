// Bad input and security: every mistake gets a 4xx whose JSON error names the field, and the server keeps serving.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

using nlohmann::json;

struct Case {
  std::string path;
  std::string body;
  int status;
  std::string message_part;  // the error message must name this
};

TEST(BadInput, EveryMistakeGetsA4xxNamingTheFieldAndTheServerCarriesOn) {
  ServerProcess server(models().a, {"--max-request-body-bytes", "4096"});
  httplib::Client client = server.client();
  const std::vector<Case> cases = {
      {"/generate", "{\"text\": \"abc\"", 400, "request body"},
      {"/generate", "[1, 2]", 400, "JSON object"},
      {"/generate", "{\"text\": \"a\", \"text\": \"b\"}", 400, "text"},
      {"/generate", "{}", 400, "'text' and 'input_ids'"},
      {"/generate", "{\"text\": \"\"}", 400, "empty"},
      {"/generate", "{\"text\": []}", 400, "empty list"},
      {"/generate", "{\"input_ids\": []}", 400, "input_ids"},
      {"/generate", "{\"input_ids\": [1, \"x\"]}", 400, "input_ids"},
      {"/generate", "{\"input_ids\": [99999]}", 400, "vocabulary"},
      {"/generate", "{\"input_ids\": [-1]}", 400, "input_ids"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"max_new_tokens\": \"9\"}}", 400, "max_new_tokens"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"max_new_tokens\": -1}}", 400, "max_new_tokens"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"max_new_tokens\": 100000000}}", 400, "context"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"max_new_tokens\": 1e30}}", 400, "max_new_tokens"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"top_p\": 2}}", 400, "top_p"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"top_p\": 1e999}}", 400, "malformed"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"temperature\": -1}}", 400, "temperature"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"top_k\": 0}}", 400, "top_k"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": {\"n\": 1000}}", 400, "'n'"},
      {"/generate", "{\"text\": \"a\", \"sampling_params\": []}", 400, "sampling_params"},
      {"/generate", "{\"text\": \"a\", \"return_logprob\": true, \"top_logprobs_num\": 100000}", 400,
       "top_logprobs_num"},
      {"/generate", "{\"text\": [\"a\", \"b\"], \"rid\": [\"x\"]}", 400, "rid"},
      {"/generate", "{\"text\": \"a\", \"return_logprob\": true, \"logprob_start_len\": 1}", 400, "logprob_start_len"},
      {"/generate", "{\"text\": \"a\", \"return_logprob\": true, \"token_ids_logprob\": [1, -3]}", 400,
       "token_ids_logprob"},
      {"/v1/completions", "{\"max_tokens\": 3}", 400, "prompt"},
      {"/v1/completions", "{\"prompt\": \"a\", \"echo\": 1}", 400, "echo"},
      {"/v1/completions", "{\"prompt\": \"a\", \"prompt_logprobs\": 21}", 400, "prompt_logprobs"},
      {"/v1/completions", "{\"prompt\": \"a\", \"logprobs\": 50}", 400, "logprobs"},
      {"/v1/chat/completions", "{\"messages\": []}", 400, "messages"},
      {"/v1/chat/completions", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", 400, "tool"},
      {"/v1/chat/completions", "{\"messages\": [{\"content\": \"x\"}]}", 400, "role"},
      {"/abort_request", "{}", 400, "rid"},
      {"/generate", "{\"text\": \"" + std::string(5000, 'x') + "\"}", 413, "4096 bytes"},
      {"/no_such_endpoint", "{}", 404, "/no_such_endpoint"},
  };
  for (const Case& c : cases) {
    const auto response = client.Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(response) << c.body.substr(0, 100);
    EXPECT_EQ(response->status, c.status) << c.path << " " << c.body.substr(0, 100) << " -> " << response->body;
    const json error = json::parse(response->body, nullptr, false);
    ASSERT_TRUE(error.contains("error")) << response->body;
    EXPECT_EQ(error["error"]["code"], c.status);
    EXPECT_TRUE(error["error"]["type"].is_string());
    const std::string message = error["error"]["message"];
    EXPECT_NE(message.find(c.message_part), std::string::npos) << c.body.substr(0, 100) << " -> " << message;
  }
  // A bad reload answers in the reload's own shape.
  for (const auto& [body, part] : std::vector<std::pair<std::string, std::string>>{
           {"{}", "model_path"}, {"{\"model_path\": \"/nonexistent/dir\"}", "/nonexistent/dir"},
           {"{\"model_path\": 5}", "model_path"}}) {
    const auto response = client.Post("/update_weights_from_disk", body, "application/json");
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 400);
    const json answer = json::parse(response->body);
    EXPECT_EQ(answer["success"], false);
    EXPECT_EQ(answer["num_paused_requests"], 0);
    EXPECT_NE(answer["message"].get<std::string>().find(part), std::string::npos) << answer["message"];
  }
  // Ill-formed UTF-8 in the prompt is kept byte for byte, and answers stay valid JSON.
  const auto bytes = client.Post("/generate", "{\"text\": \"\xff\xfe\", \"sampling_params\": {\"max_new_tokens\": 2}}",
                                 "application/json");
  ASSERT_TRUE(bytes);
  EXPECT_TRUE(bytes->status == 200 || bytes->status == 400) << bytes->body;
  EXPECT_FALSE(json::parse(bytes->body, nullptr, false).is_discarded());

  const Greedy after = greedy_generate(client, {1, 2, 3}, 3);
  EXPECT_EQ(after.ids.size(), 3u);
  EXPECT_TRUE(server.running());
}

// A 200 KB body of nested brackets (well inside the 8 MB default body limit) used to overflow the JSON parser's
// recursion and kill the server; now every endpoint refuses it with a 400.
TEST(BadInput, DeeplyNestedJsonIsRefusedAndTheServerCarriesOn) {
  ServerProcess server(models().a);
  httplib::Client client = server.client();
  const int depth = 100000;
  const std::string nested = std::string(depth, '[') + std::string(depth, ']');
  for (const auto& [path, body] : std::vector<std::pair<std::string, std::string>>{
           {"/generate", "{\"input_ids\": " + nested + "}"},
           {"/v1/chat/completions", "{\"messages\": " + nested + "}"},
           {"/update_weights_from_disk", "{\"model_path\": " + nested + "}"}}) {
    const auto response = client.Post(path.c_str(), body, "application/json");
    ASSERT_TRUE(response) << path << ": no answer (did the server die?)";
    EXPECT_EQ(response->status, 400) << path;
    EXPECT_NE(response->body.find("nested deeper than"), std::string::npos) << path << " -> " << response->body;
  }
  EXPECT_EQ(greedy_generate(client, {1, 2, 3}, 2).ids.size(), 2u);
  EXPECT_TRUE(server.running());
}

TEST(BadInput, ASlowClientIsDroppedWhileOthersAreServed) {
  ServerProcess server(models().a, {"--read-timeout", "1"});
  const int slow = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(server.port()));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  ASSERT_EQ(connect(slow, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const std::string partial = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text\":";
  ASSERT_EQ(send(slow, partial.data(), partial.size(), 0), static_cast<ssize_t>(partial.size()));

  httplib::Client client = server.client();
  EXPECT_EQ(greedy_generate(client, {1, 2, 3}, 2).ids.size(), 2u);  // served while the slow one dawdles

  // The server gives up on the slow body: the socket reaches end-of-file (bounded by our own 10 s timeout).
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  char buffer[512];
  ssize_t n = 0;
  while ((n = recv(slow, buffer, sizeof buffer, 0)) > 0) {
  }
  EXPECT_EQ(n, 0) << "the server did not close the slow connection";
  close(slow);
  EXPECT_TRUE(server.running());
}

TEST(Security, ApiKeysGuardEndpointsAndAdminKeyGuardsAdminOnes) {
  ServerProcess server(models().a, {"--api-key", "user-key", "--admin-api-key", "admin-key"});
  httplib::Client client = server.client();
  const httplib::Headers user = {{"Authorization", "Bearer user-key"}};
  const httplib::Headers admin = {{"Authorization", "Bearer admin-key"}};
  const httplib::Headers wrong = {{"Authorization", "Bearer user-kex"}};
  const json generate = {{"text", "a"}, {"sampling_params", {{"max_new_tokens", 1}}}};
  int status = 0;
  json error = post_json(client, "/generate", generate, &status);
  EXPECT_EQ(status, 401);
  EXPECT_NE(error["error"]["message"].get<std::string>().find("Authorization"), std::string::npos);
  post_json(client, "/generate", generate, &status, wrong);
  EXPECT_EQ(status, 401);
  get_json(client, "/get_server_info", &status);
  EXPECT_EQ(status, 401);
  post_json(client, "/generate", generate, &status, user);
  EXPECT_EQ(status, 200);
  post_json(client, "/generate", generate, &status, admin);
  EXPECT_EQ(status, 200);
  const json server_info = get_json(client, "/get_server_info", &status, user);
  EXPECT_EQ(server_info["api_key"], "<set>");  // keys never leave the server

  for (const char* path : {"/flush_cache", "/pause_generation", "/continue_generation"}) {
    post_json(client, path, json::object(), &status, user);
    EXPECT_EQ(status, 403) << path;
    post_json(client, path, json::object(), &status, admin);
    EXPECT_EQ(status, 200) << path;
  }
  post_json(client, "/update_weights_from_disk", {{"model_path", models().a.string()}}, &status, user);
  EXPECT_EQ(status, 403);
  post_json(client, "/abort_request", {{"abort_all", true}}, &status, user);
  EXPECT_EQ(status, 403);
  post_json(client, "/abort_request", {{"abort_all", true}}, &status, admin);
  EXPECT_EQ(status, 200);
  post_json(client, "/abort_request", {{"rid", "nothing"}}, &status, user);  // a single rid needs no admin
  EXPECT_EQ(status, 200);
}

TEST(Security, ReloadOnlyFromAllowedModelDirectories) {
  namespace fs = std::filesystem;
  const fs::path allowed = models().root / "allowed";
  fs::create_directories(allowed);
  fs::remove_all(allowed / "b");
  fs::copy(models().b, allowed / "b", fs::copy_options::recursive);
  fs::remove(allowed / "escape");
  fs::create_directory_symlink(models().a, allowed / "escape");  // resolves outside the allowed directory
  ServerProcess server(models().a, {"--allowed-model-dir", allowed.string()});
  httplib::Client client = server.client();
  int status = 0;
  for (const fs::path& outside : {models().b, allowed / "escape", allowed / ".." / "b"}) {
    const json refused = post_json(client, "/update_weights_from_disk", {{"model_path", outside.string()}}, &status);
    EXPECT_EQ(status, 403) << outside;
    EXPECT_EQ(refused["success"], false);
    EXPECT_NE(refused["message"].get<std::string>().find("--allowed-model-dir"), std::string::npos);
  }
  const json accepted = post_json(client, "/update_weights_from_disk",
                                  {{"model_path", (allowed / "b").string()}, {"weight_version", "b"}}, &status);
  EXPECT_EQ(status, 200) << accepted.dump();
  EXPECT_EQ(accepted["success"], true);
}

}  // namespace
}  // namespace fp4serve::test
