// A real client: the official `openai` npm package (pinned in tests/npm/package.json, installed at test time into
// the build tree) drives completions and chat completions, streaming and not (tests/npm/openai_client.mjs).
// Skipped, saying why, when node/npm are missing or the npm registry cannot be reached.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "server_fixture.h"

namespace fp4serve::test {
namespace {

namespace fs = std::filesystem;

std::string tail_of(const fs::path& path, size_t n_chars) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const std::string all = text.str();
  return all.size() > n_chars ? all.substr(all.size() - n_chars) : all;
}

TEST(OpenAiNpm, OfficialClientCompletionsAndChatStreamingAndNot) {
  if (std::system("command -v node > /dev/null 2>&1 && command -v npm > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "node and npm are not installed: the openai npm client test needs them (apt-get install nodejs npm)";
  const fs::path source = fs::path(FP4SERVE_SOURCE_DIR) / "tests" / "npm";
  const fs::path dir = fs::path(FP4SERVE_BINARY_DIR) / "tests" / "npm_openai";
  fs::create_directories(dir);
  for (const char* file : {"package.json", "openai_client.mjs"})
    fs::copy_file(source / file, dir / file, fs::copy_options::overwrite_existing);
  const fs::path install_log = dir / "npm_install.log";
  const std::string install = "cd '" + dir.string() + "' && timeout 180 npm install --no-audit --no-fund "
                              "--loglevel=error > '" + install_log.string() + "' 2>&1";
  if (std::system(install.c_str()) != 0)
    GTEST_SKIP() << "npm install of the pinned openai package failed (is the npm registry reachable?):\n"
                 << tail_of(install_log, 2000);

  ServerProcess server(models().a);
  const fs::path output = dir / "client_output.log";
  const std::string run = "cd '" + dir.string() + "' && timeout 120 node openai_client.mjs http://127.0.0.1:" +
                          std::to_string(server.port()) + "/v1 > '" + output.string() + "' 2>&1";
  const int status = std::system(run.c_str());
  const std::string printed = tail_of(output, 4000);
  EXPECT_EQ(status, 0) << printed << "\nserver log:\n" << server.log();
  EXPECT_NE(printed.find("\"ok\":true"), std::string::npos) << printed;
}

}  // namespace
}  // namespace fp4serve::test
