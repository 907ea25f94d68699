// UTF-8 decoding by the well-formed byte table (Unicode Table 3-7); see utf8.h for the error policy.
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

// For a lead byte: the total sequence length and the allowed range of the first continuation byte (the
// narrower ranges exclude overlong forms, surrogates and code points above U+10FFFF). Length 0: not a lead byte.
struct LeadByte {
  uint8_t length;
  uint8_t second_min;
  uint8_t second_max;
};

LeadByte classify_lead(uint8_t byte) {
  if (byte < 0x80) return {1, 0, 0};
  if (byte >= 0xC2 && byte <= 0xDF) return {2, 0x80, 0xBF};
  if (byte == 0xE0) return {3, 0xA0, 0xBF};
  if (byte == 0xED) return {3, 0x80, 0x9F};
  if (byte >= 0xE1 && byte <= 0xEF) return {3, 0x80, 0xBF};
  if (byte == 0xF0) return {4, 0x90, 0xBF};
  if (byte >= 0xF1 && byte <= 0xF3) return {4, 0x80, 0xBF};
  if (byte == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

Utf8Char utf8_next(std::string_view text, size_t pos) {
  const auto lead = static_cast<uint8_t>(text[pos]);
  const LeadByte info = classify_lead(lead);
  if (info.length == 1) return {lead, 1};
  if (info.length == 0) return {kUtf8Invalid, 1};
  int32_t code_point = lead & (0xFF >> (info.length + 1));
  for (size_t k = 1; k < info.length; ++k) {
    if (pos + k >= text.size()) return {kUtf8Truncated, k};
    const auto byte = static_cast<uint8_t>(text[pos + k]);
    const uint8_t lo = k == 1 ? info.second_min : 0x80;
    const uint8_t hi = k == 1 ? info.second_max : 0xBF;
    if (byte < lo || byte > hi) return {kUtf8Invalid, k};
    code_point = (code_point << 6) | (byte & 0x3F);
  }
  return {code_point, info.length};
}

Utf8Char utf8_prev(std::string_view text, size_t end) {
  // A character is at most 4 bytes: try the starts end-1 .. end-4 and keep the one that decodes exactly to end.
  for (size_t back = 1; back <= 4 && back <= end; ++back) {
    const auto byte = static_cast<uint8_t>(text[end - back]);
    if ((byte & 0xC0) == 0x80) continue;  // a continuation byte cannot start a character
    const Utf8Char c = utf8_next(text.substr(0, end), end - back);
    if (c.code_point >= 0 && c.length == back) return c;
    break;
  }
  return {kUtf8Invalid, 1};
}

void append_utf8(std::string& out, char32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

size_t append_utf8_lossy(std::string& out, std::string_view bytes, bool end_of_stream) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    // Fast path: copy a run of ASCII in one go.
    size_t ascii_end = pos;
    while (ascii_end < bytes.size() && static_cast<uint8_t>(bytes[ascii_end]) < 0x80) ++ascii_end;
    out.append(bytes.substr(pos, ascii_end - pos));
    pos = ascii_end;
    if (pos == bytes.size()) break;

    const Utf8Char c = utf8_next(bytes, pos);
    if (c.code_point == kUtf8Truncated && !end_of_stream) return pos;
    if (c.code_point < 0) {
      append_utf8(out, U'\uFFFD');
    } else {
      out.append(bytes.substr(pos, c.length));
    }
    pos += c.length;
  }
  return pos;
}

std::string to_valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_utf8_lossy(out, bytes, /*end_of_stream=*/true);
  return out;
}

}  // namespace fp4serve
