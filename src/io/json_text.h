// Parsing JSON text and files with the checks every reader wants (duplicate keys, nesting depth, numbers out of
// range as Error). Apart from json_file.h's typed field readers so the tokenizer, which has its own, can use it.
#pragma once
#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

namespace fp4serve {

// Deeper nesting is refused while parsing: nlohmann's parser, copy and dump recurse once per level, so a deep
// enough document (200 KB of '[' is enough) would overflow the stack. Real configs and requests nest < 10 levels.
inline constexpr int kMaxJsonDepth = 128;

// Parses a whole JSON file; rejects duplicate keys (which nlohmann would silently collapse to the last one) and
// nesting deeper than kMaxJsonDepth.
nlohmann::json read_json_file(const std::filesystem::path& path);
nlohmann::json parse_json_text(std::string_view text, std::string_view source);

}  // namespace fp4serve
