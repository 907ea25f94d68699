// PCRE2 regex for pre-tokenizer patterns: UTF mode with Unicode properties (\p{L}, \s by Unicode), JIT-compiled,
// and tolerant of ill-formed UTF-8 (bytes that are not part of a character never match, so they fall between
// matches). Matching is thread-safe: the compiled code is shared read-only, match data is per thread.
#pragma once
#include <memory>
#include <string_view>
#include <vector>

namespace fp4serve {

struct ByteSpan {
  size_t begin;
  size_t end;
};

class Regex {
 public:
  // Compiles `pattern`; with `literal` the pattern text is matched verbatim. `where` names the field for errors.
  Regex(std::string_view pattern, bool literal, std::string_view where);

  // Appends every non-empty, non-overlapping match, left to right (empty matches are skipped, as HF drops the
  // empty pieces they would make).
  void find_all(std::string_view text, std::vector<ByteSpan>& matches) const;

 private:
  std::shared_ptr<void> code_;  // pcre2_code_8, freed by pcre2_code_free
};

}  // namespace fp4serve
