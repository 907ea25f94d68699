// UTF-8 decoding that never throws: ill-formed input is reported per "maximal subpart" (Unicode ch. 3, the
// practice Rust's from_utf8_lossy and the WHATWG decoder follow), so each ill-formed run becomes one U+FFFD.
// A sequence cut off by the end of the buffer is reported separately, so streaming callers can hold it back.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fp4serve {

inline constexpr int32_t kUtf8Invalid = -1;    // an ill-formed maximal subpart of `length` bytes
inline constexpr int32_t kUtf8Truncated = -2;  // a well-formed prefix cut off by the end of the buffer

struct Utf8Char {
  int32_t code_point;  // >= 0, or kUtf8Invalid / kUtf8Truncated
  size_t length;       // bytes consumed, >= 1 whenever pos < text.size()
};

// Decodes the character starting at text[pos] (pos < text.size()).
Utf8Char utf8_next(std::string_view text, size_t pos);

// Decodes the character ending just before text[end] (end > 0); an ill-formed byte decodes as kUtf8Invalid of
// length 1.
Utf8Char utf8_prev(std::string_view text, size_t end);

// Appends the UTF-8 encoding of a valid scalar value.
void append_utf8(std::string& out, char32_t code_point);

// Appends `bytes` to `out` as valid UTF-8, each ill-formed subpart replaced by U+FFFD. When `end_of_stream` is
// false a truncated sequence at the end is not consumed; returns the number of bytes consumed.
size_t append_utf8_lossy(std::string& out, std::string_view bytes, bool end_of_stream);

// Whole-buffer convenience for append_utf8_lossy(..., end_of_stream = true).
std::string to_valid_utf8(std::string_view bytes);

}  // namespace fp4serve
