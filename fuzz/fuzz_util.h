// What the libFuzzer targets share: an invariant check that aborts (so libFuzzer records the input), the rule that
// bad input may only end in fp4serve::Error with a message (any other exception escapes and is a finding, as are
// crashes, sanitizer reports, leaks and timeouts), and the bundled demo model's tokenizer and chat template.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "common/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

#define FUZZ_EXPECT(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "fuzz invariant broken: %s: %s\n", #cond,                           \
                   fmt::format(__VA_ARGS__).c_str());                                          \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

namespace fp4serve::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `parse_and_check`; an Error is the accepted answer to bad input, but it must say what is wrong.
template <typename Fn>
void allow_error(Fn&& parse_and_check) {
  try {
    parse_and_check();
  } catch (const Error& e) {
    FUZZ_EXPECT(std::string_view(e.what()).size() > 0, "an Error without a message");
  }
}

inline bool is_valid_utf8(std::string_view text) { return to_valid_utf8(text) == text; }

// The demo model the README runs (models/qwen3-moe-arith-b-nvfp4): byte-level BPE with NFC and Qwen's split regex.
inline constexpr const char* kBundledModelDir = FP4SERVE_SOURCE_DIR "/models/qwen3-moe-arith-b-nvfp4";

inline const Tokenizer& bundled_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::from_files(kBundledModelDir);
  return tokenizer;
}

inline const std::optional<ChatTemplate>& bundled_chat_template() {
  static const std::optional<ChatTemplate> chat_template = ChatTemplate::from_model_dir(kBundledModelDir);
  return chat_template;
}

}  // namespace fp4serve::fuzz
