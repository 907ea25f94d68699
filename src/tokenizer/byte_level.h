// GPT-2 byte-level alphabet: every byte maps to one printable code point (bytes 33..126, 161..172, 174..255 map
// to themselves, the other 68 to 256 + n in increasing byte order), so any byte string is a string of vocabulary
// characters. The mapping is a bijection between the 256 bytes and those 256 code points.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fp4serve {

// The code point that stands for `byte`.
char32_t byte_to_code_point(uint8_t byte);

// The byte a code point stands for, or nullopt for code points outside the alphabet.
std::optional<uint8_t> code_point_to_byte(char32_t code_point);

// Appends the byte-level spelling (UTF-8 of the mapped code points) of arbitrary bytes.
void append_byte_level(std::string& out, std::string_view bytes);

// The bytes a byte-level string spells, or nullopt if it holds a character outside the alphabet (or is not
// valid UTF-8).
std::optional<std::string> byte_level_to_bytes(std::string_view text);

}  // namespace fp4serve
