#include "common/base64.h"

#include "common/error.h"

namespace fp4serve {

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int sextet_of(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::string base64_encode(std::span<const uint8_t> bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t group = uint32_t{bytes[i]} << 16;
    if (i + 1 < bytes.size()) group |= uint32_t{bytes[i + 1]} << 8;
    if (i + 2 < bytes.size()) group |= uint32_t{bytes[i + 2]};
    for (size_t k = 0; k < 4; ++k) out += i + k <= bytes.size() ? kAlphabet[(group >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

std::vector<uint8_t> base64_decode(std::string_view text, std::string_view what) {
  FP4_CHECK(text.size() % 4 == 0, "{}: base64 text of {} characters; its length must be a multiple of 4", what,
            text.size());
  size_t padding = 0;
  while (padding < 2 && padding < text.size() && text[text.size() - 1 - padding] == '=') ++padding;
  std::vector<uint8_t> bytes;
  bytes.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    uint32_t group = 0;
    for (size_t k = 0; k < 4; ++k) {
      const size_t at = i + k;
      const bool is_padding = at >= text.size() - padding;
      const int sextet = is_padding ? 0 : sextet_of(text[at]);
      FP4_CHECK(sextet >= 0, "{}: character {} of the base64 text is '{}', outside the base64 alphabet", what, at,
                text[at]);
      group = group << 6 | static_cast<uint32_t>(sextet);
    }
    for (size_t k = 0; k < 3; ++k) bytes.push_back(static_cast<uint8_t>(group >> (16 - 8 * k)));
  }
  bytes.resize(bytes.size() - padding);
  return bytes;
}

}  // namespace fp4serve
