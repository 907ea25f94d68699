// Tables for the GPT-2 byte-level alphabet, built once (see byte_level.h for the mapping).
#include "tokenizer/byte_level.h"

#include <algorithm>
#include <array>

#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

constexpr char32_t kAlphabetEnd = 256 + 68;  // every mapped code point is below this

struct ByteLevelTables {
  std::array<char32_t, 256> code_point{};
  std::array<std::array<char, 2>, 256> spelling{};  // UTF-8 of code_point[byte] (all below U+0800)
  std::array<uint8_t, 256> spelling_length{};
  std::array<int16_t, kAlphabetEnd> byte{};  // -1 where no byte maps

  ByteLevelTables() {
    byte.fill(-1);
    char32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      code_point[b] = printable ? static_cast<char32_t>(b) : next_extra++;
      byte[code_point[b]] = static_cast<int16_t>(b);
      std::string utf8;
      append_utf8(utf8, code_point[b]);
      spelling_length[b] = static_cast<uint8_t>(utf8.size());
      std::copy(utf8.begin(), utf8.end(), spelling[b].begin());
    }
  }
};

const ByteLevelTables& tables() {
  static const ByteLevelTables instance;
  return instance;
}

}  // namespace

char32_t byte_to_code_point(uint8_t byte) { return tables().code_point[byte]; }

std::optional<uint8_t> code_point_to_byte(char32_t code_point) {
  if (code_point >= kAlphabetEnd || tables().byte[code_point] < 0) return std::nullopt;
  return static_cast<uint8_t>(tables().byte[code_point]);
}

void append_byte_level(std::string& out, std::string_view bytes) {
  const ByteLevelTables& t = tables();
  for (char c : bytes) {
    const auto b = static_cast<uint8_t>(c);
    out.append(t.spelling[b].data(), t.spelling_length[b]);
  }
}

std::optional<std::string> byte_level_to_bytes(std::string_view text) {
  std::string bytes;
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = utf8_next(text, pos);
    if (c.code_point < 0) return std::nullopt;
    const std::optional<uint8_t> byte = code_point_to_byte(static_cast<char32_t>(c.code_point));
    if (!byte) return std::nullopt;
    bytes += static_cast<char>(*byte);
    pos += c.length;
  }
  return bytes;
}

}  // namespace fp4serve
