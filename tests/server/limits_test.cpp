// Resource limits of `fp4serve serve`, each set by its flag and seen over HTTP: prompt length (400 naming the
// limit), open connections (503 with Retry-After beyond --max-connections, served again once one closes), the
// idle keep-alive timeout and the write timeout (a client that reads nothing is dropped and its request aborted).
// The request body limit and the read timeout are in bad_input_test.cpp.
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

// A connected raw socket to the server (closed when it goes away), with a receive timeout as the bound of a test.
struct RawConnection {
  int fd = -1;
  explicit RawConnection(int port, int receive_buffer_bytes = 0) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (receive_buffer_bytes > 0)
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer_bytes, sizeof receive_buffer_bytes);
    timeval timeout{.tv_sec = 15, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) throw std::runtime_error("connect");
  }
  ~RawConnection() { close(fd); }
  void send_text(const std::string& text) const {
    if (send(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) throw std::runtime_error("send");
  }
  // Reads until `marker` has arrived (true) or the connection ends or times out (false).
  bool receive_until(const std::string& marker, std::string* received = nullptr) const {
    std::string data;
    char buffer[4096];
    while (data.find(marker) == std::string::npos) {
      const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
      if (n <= 0) break;
      data.append(buffer, static_cast<size_t>(n));
    }
    if (received) *received = data;
    return data.find(marker) != std::string::npos;
  }
  // Reads and drops everything until the server closes the connection; false on our own timeout.
  bool receive_until_closed() const {
    char buffer[65536];
    ssize_t n = 0;
    while ((n = recv(fd, buffer, sizeof buffer, 0)) > 0) {
    }
    return n == 0;
  }
};

std::string post_text(const std::string& path, const json& body) {
  const std::string text = body.dump();
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(text.size()) + "\r\n\r\n" + text;
}

TEST(Limits, PromptsLongerThanMaxPromptTokensGet400NamingTheLimit) {
  ServerProcess server(models().a, {"--max-prompt-tokens", "8"});
  httplib::Client client = server.client();
  int status = 0;
  const json too_long = post_json(client, "/generate", {{"input_ids", std::vector<int>(9, 7)}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(too_long["error"]["message"].get<std::string>().find("9 tokens, more than this server's "
                                                                  "--max-prompt-tokens 8"),
            std::string::npos)
      << too_long.dump();
  const json completion = post_json(client, "/v1/completions", {{"prompt", std::string(40, 'x')}, {"max_tokens", 1}},
                                    &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(completion["error"]["message"].get<std::string>().find("--max-prompt-tokens 8"), std::string::npos)
      << completion.dump();
  EXPECT_EQ(greedy_generate(client, std::vector<int>(8, 7), 2).ids.size(), 2u);  // at the limit: served
  EXPECT_EQ(get_json(client, "/get_server_info")["max_prompt_tokens"], 8);
}

TEST(Limits, ConnectionsBeyondMaxConnectionsGet503UntilOneCloses) {
  ServerProcess server(models().a, {"--max-connections", "2"});
  {
    // Two clients hold both connections (half-sent requests keep their threads for up to --read-timeout).
    RawConnection first(server.port()), second(server.port());
    first.send_text("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
    second.send_text("POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    httplib::Client client = server.client();
    const auto refused = client.Get("/health");
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 503);
    EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
    EXPECT_NE(refused->body.find("--max-connections"), std::string::npos) << refused->body;
  }
  // Both closed: served again.
  httplib::Client client = server.client();
  EXPECT_TRUE(eventually([&] {
    const auto response = client.Get("/health");
    return response && response->status == 200;
  }));
  EXPECT_EQ(greedy_generate(client, {1, 2, 3}, 2).ids.size(), 2u);
}

TEST(Limits, IdleKeepAliveConnectionsCloseAfterKeepAliveTimeout) {
  ServerProcess server(models().a, {"--keep-alive-timeout", "1"});
  RawConnection connection(server.port());
  connection.send_text("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(connection.receive_until("{}"));
  const auto answered = std::chrono::steady_clock::now();
  EXPECT_TRUE(connection.receive_until_closed());
  const double idle = std::chrono::duration<double>(std::chrono::steady_clock::now() - answered).count();
  EXPECT_GT(idle, 0.5);
  EXPECT_LT(idle, 5.0);  // the default would be 5 s
}

TEST(Limits, AClientThatReadsNothingIsDroppedAfterWriteTimeoutAndItsRequestAborted) {
  ServerProcess server(models().a, {"--write-timeout", "1"});
  httplib::Client client = server.client();
  // A stream whose chunks grow (each carries the output so far with its top logprobs) fills the socket buffers of
  // a client with a small receive window that never reads.
  RawConnection silent(server.port(), 4096);
  silent.send_text(post_text("/generate", {{"input_ids", {1, 2, 3}},
                                           {"sampling_params", {{"max_new_tokens", 4000}, {"ignore_eos", true}}},
                                           {"return_logprob", true},
                                           {"top_logprobs_num", 20},
                                           {"stream", true}}));
  EXPECT_TRUE(eventually([&] { return metric(client, "fp4serve_requests_total{finish_reason=\"abort\"}") == 1; }))
      << "the request of the client that reads nothing was not aborted";
  EXPECT_EQ(greedy_generate(client, {1, 2, 3}, 2).ids.size(), 2u);
}

}  // namespace
}  // namespace fp4serve::test
