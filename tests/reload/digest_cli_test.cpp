// `fp4serve digest`: the checkpoint digest is stable, differs between checkpoints, and a model loaded in either
// layout reports the same digest (the CLI itself fails when they differ).
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace fp4serve {
namespace {

namespace fs = std::filesystem;

std::string bin() {
  const char* env = std::getenv("FP4SERVE_BIN");
  return env ? env : FP4SERVE_BINARY_DIR "/fp4serve";
}

// Runs the command, returns its stdout; fails the test on a non-zero exit.
std::string run(const std::string& args) {
  std::string cmd = bin() + " " + args + " 2>/dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  EXPECT_EQ(pclose(pipe), 0) << cmd;
  return out;
}

TEST(DigestCli, ModelDigestEqualsCheckpointDigestInBothLayouts) {
  fs::path root = fs::temp_directory_path() / ("fp4serve_digest_" + std::to_string(::getpid()));
  fs::remove_all(root);
  run("synth --preset tiny --seed 5 --out " + (root / "a_bf16").string());
  run("synth --preset tiny --seed 6 --out " + (root / "b_bf16").string());
  run("quantize --in " + (root / "a_bf16").string() + " --out " + (root / "a").string());
  run("quantize --in " + (root / "b_bf16").string() + " --out " + (root / "b").string());

  std::string a = run("digest " + (root / "a").string()).substr(0, 27);  // "checkpoint " + 16 hex digits
  EXPECT_EQ(a, run("digest " + (root / "a").string()).substr(0, 27));
  EXPECT_NE(a, run("digest " + (root / "b").string()).substr(0, 27));
  for (const char* layout : {"cutlass", "trtllm"}) {
    std::string out = run("digest --load --moe-backend " + std::string(layout) + " " + (root / "a").string());
    EXPECT_NE(out.find("model      " + a.substr(11)), std::string::npos) << out;
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace fp4serve
