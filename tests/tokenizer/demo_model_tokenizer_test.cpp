// The trained demo model's tokenizer (tools/train_demo: HF `tokenizers` BPE in Qwen's layout) encodes exactly as
// HF did: models/arith-tokenizer-check.jsonl holds HF's ids for held-out chat prompts and solutions, recorded by
// train.py on the machine that trained it. Skipped until the trained model is installed (tools/train_demo/install.sh).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "tokenizer/tokenizer.h"

namespace fp4serve {
namespace {

namespace fs = std::filesystem;

TEST(DemoModelTokenizer, EncodesAndDecodesAsHfTokenizers) {
  const fs::path models = fs::path(FP4SERVE_SOURCE_DIR) / "models";
  const fs::path model = models / "qwen3-moe-arith-b-nvfp4";
  const fs::path check = models / "arith-tokenizer-check.jsonl";
  if (!fs::exists(model / "tokenizer.json") || !fs::exists(check))
    GTEST_SKIP() << "the trained demo model is not installed (" << model << ")";
  const Tokenizer tokenizer = Tokenizer::from_files(model);
  std::ifstream in(check);
  int cases = 0;
  for (std::string line; std::getline(in, line); ++cases) {
    const nlohmann::json row = nlohmann::json::parse(line);
    const std::string text = row["text"];
    const std::vector<int32_t> hf_ids = row["ids"];
    EXPECT_EQ(tokenizer.encode(text), hf_ids) << text;
    EXPECT_EQ(tokenizer.decode(hf_ids), text);
  }
  EXPECT_GT(cases, 0);
}

}  // namespace
}  // namespace fp4serve
