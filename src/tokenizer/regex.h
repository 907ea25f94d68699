// PCRE2 regex for pre-tokenizer patterns: UTF mode with Unicode properties (\p{L}), JIT-compiled, and tolerant of
// ill-formed UTF-8 (bytes that are not part of a character never match, so they fall between matches). \s and \S
// mean what they mean in HF tokenizers' Oniguruma. Thread-safe: compiled code is shared, match data per thread.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace fp4serve {

struct ByteSpan {
  size_t begin;
  size_t end;
};

// Oniguruma's Unicode \s: U+0009..U+000D, U+0085 and the separators (Zs, Zl, Zp), as the body of a class. PCRE2's
// own \s also takes U+180E, which Unicode stopped calling a space in 6.3.
inline constexpr std::string_view kWhitespaceClassBody = R"(\t-\r\x{85}\p{Z})";

// `pattern` with \s and \S spelled as kWhitespaceClassBody classes. Throws for \S inside a class, which a PCRE2
// class cannot express (no known tokenizer pattern has one). `where` names the field for errors.
std::string with_oniguruma_whitespace(std::string_view pattern, std::string_view where);

class Regex {
 public:
  // Compiles `pattern`; with `literal` the pattern text is matched verbatim. `where` names the field for errors.
  Regex(std::string_view pattern, bool literal, std::string_view where);

  // The first non-empty match starting at or after `start` (empty matches are skipped, as HF drops the empty
  // pieces they would make). Calling again from the previous match's end walks all matches left to right.
  std::optional<ByteSpan> find(std::string_view text, size_t start) const;

 private:
  std::shared_ptr<void> code_;  // pcre2_code_8, freed by pcre2_code_free
};

}  // namespace fp4serve
