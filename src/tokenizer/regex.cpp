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

Regex::Regex(std::string_view pattern, bool literal, std::string_view where) {
  // PCRE2_LITERAL rejects PCRE2_UCP (a literal has no character classes to interpret).
  uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error_code,
                                   &error_offset, nullptr);
  FP4_CHECK(code != nullptr, "{}: cannot compile regex \"{}\" at offset {}: {}", where, pattern, error_offset,
            pcre2_message(error_code));
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
