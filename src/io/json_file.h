// JSON files and typed field access for config files. Every error names the file (the `source` argument) and the
// field at fault; write_json_file replaces the target atomically (temporary file, then rename).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/json_text.h"

namespace fp4serve {

// Writes `value` pretty-printed (indent 2, trailing newline) to path + ".tmp", then renames it over `path`.
void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& value);
void write_json_file(const std::filesystem::path& path, const nlohmann::json& value);

// Typed field readers for a JSON object `object` read from `source` (e.g. "model/config.json").
// required_*: missing field or wrong type -> Error. optional_*: absent or null -> nullopt; wrong type -> Error.
int64_t required_int(const nlohmann::json& object, std::string_view field, std::string_view source);
double required_number(const nlohmann::json& object, std::string_view field, std::string_view source);
bool required_bool(const nlohmann::json& object, std::string_view field, std::string_view source);
std::string required_string(const nlohmann::json& object, std::string_view field, std::string_view source);
std::optional<int64_t> optional_int(const nlohmann::json& object, std::string_view field, std::string_view source);
std::optional<double> optional_number(const nlohmann::json& object, std::string_view field, std::string_view source);
std::optional<bool> optional_bool(const nlohmann::json& object, std::string_view field, std::string_view source);
std::optional<std::string> optional_string(const nlohmann::json& object, std::string_view field,
                                           std::string_view source);
// A list of strings; absent or null -> empty.
std::vector<std::string> optional_string_list(const nlohmann::json& object, std::string_view field,
                                              std::string_view source);

// The JSON type of a value as a user reads it ("string", "integer", "number", "boolean", "array", "object", "null").
std::string_view json_type_name(const nlohmann::json& value);

}  // namespace fp4serve
