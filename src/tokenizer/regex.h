// PCRE2 regex for pre-tokenizer patterns: UTF mode with Unicode properties (\p{L}, \s by Unicode), JIT-compiled,
// and tolerant of ill-formed UTF-8 (bytes that are not part of a character never match, so they fall between
// matches). Matching is thread-safe: the compiled code is shared read-only, match data is per thread.
#pragma once
#include <memory>
#include <optional>
#include <string_view>

namespace fp4serve {

struct ByteSpan {
  size_t begin;
  size_t end;
};

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
