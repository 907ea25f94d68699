// The oracle corpus: hand-written texts per category, ill-formed UTF-8 byte strings, 10k random strings and chat
// conversations, all deterministic (fixed seeds, integer-only generators), so the JS oracle's answer can be
// cached by the corpus digest. Texts are raw bytes; only the "invalid_utf8" category holds ill-formed UTF-8.
// JS's \s is not HF's (Oniguruma's): JS takes U+FEFF and not U+0085 (NEL). The corpus holds neither, nor code
// points assigned after Unicode 14; tests/tokenizer pins those cases against Oniguruma's documented classes.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace fp4serve::test {

struct CorpusText {
  std::string category;  // "english", "code", "chinese", ..., "invalid_utf8", "random"
  std::string bytes;
};

struct CorpusChat {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = false;
  std::optional<bool> enable_thinking;  // nullopt: left undefined in the template, as a caller that omits it
};

inline constexpr size_t kRandomTexts = 10000;

std::vector<CorpusText> build_corpus_texts();
std::vector<CorpusChat> build_corpus_chats();

}  // namespace fp4serve::test
