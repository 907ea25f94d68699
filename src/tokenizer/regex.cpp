// PCRE2 wrapper (see regex.h). PCRE2_MATCH_INVALID_UTF lets encode() accept arbitrary bytes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <string>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

std::string pcre2_message(int error_code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// One ovector pair is enough: we only read the overall match, whatever groups the pattern has.
pcre2_match_data* thread_match_data() {
  thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create(1, nullptr), &pcre2_match_data_free);
  return data.get();
}

}  // namespace

std::string with_oniguruma_whitespace(std::string_view pattern, std::string_view where) {
  std::string out;
  out.reserve(pattern.size());
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char escaped = pattern[++i];
      if (escaped == 's') {
        out += in_class ? std::string(kWhitespaceClassBody) : fmt::format("[{}]", kWhitespaceClassBody);
      } else if (escaped == 'S') {
        FP4_CHECK(!in_class, "{}: \\S inside a character class is not supported in regex \"{}\"", where, pattern);
        out += fmt::format("[^{}]", kWhitespaceClassBody);
      } else {
        out += c;
        out += escaped;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' first in a class (after an optional '^') is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);  // a POSIX class such as [:alpha:] inside a class
      if (end != std::string_view::npos) {
        out += pattern.substr(i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(std::string_view pattern, bool literal, std::string_view where) {
  // PCRE2_LITERAL rejects PCRE2_UCP (a literal has no character classes to interpret).
  uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const std::string compiled = literal ? std::string(pattern) : with_oniguruma_whitespace(pattern, where);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), options, &error_code,
                                   &error_offset, nullptr);
  FP4_CHECK(code != nullptr, "{}: cannot compile regex \"{}\" (as \"{}\") at offset {}: {}", where, pattern, compiled,
            error_offset, pcre2_message(error_code));
  code_ = std::shared_ptr<void>(code, [](void* p) { pcre2_code_free(static_cast<pcre2_code*>(p)); });
  // JIT is an accelerator only: pcre2_match falls back to the interpreter when it is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
}

std::optional<ByteSpan> Regex::find(std::string_view text, size_t start) const {
  auto* code = static_cast<pcre2_code*>(code_.get());
  pcre2_match_data* data = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  while (start < text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), start, 0, data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return std::nullopt;
    FP4_CHECK(rc >= 0, "regex match failed at byte {} of a {}-byte text: {}", start, text.size(), pcre2_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    if (ovector[1] > ovector[0]) return ByteSpan{ovector[0], ovector[1]};
    if (ovector[0] >= text.size()) return std::nullopt;
    start = ovector[0] + utf8_next(text, ovector[0]).length;  // step over the empty match by one character
  }
  return std::nullopt;
}

}  // namespace fp4serve
