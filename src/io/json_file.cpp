#include "io/json_file.h"

#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "common/error.h"

namespace fp4serve {

namespace {

const nlohmann::json* find_field(const nlohmann::json& object, std::string_view field, std::string_view source) {
  FP4_CHECK(object.is_object(), "{}: expected a JSON object holding '{}', got {}", source, field,
            json_type_name(object));
  auto it = object.find(field);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

const nlohmann::json& require_field(const nlohmann::json& object, std::string_view field, std::string_view source) {
  const nlohmann::json* value = find_field(object, field, source);
  FP4_CHECK(value != nullptr, "{}: required field '{}' is missing (or null)", source, field);
  return *value;
}

int64_t as_int(const nlohmann::json& value, std::string_view field, std::string_view source) {
  FP4_CHECK(value.is_number_integer(), "{}: field '{}' must be an integer, got {} {}", source, field,
            json_type_name(value), value.dump());
  if (value.is_number_unsigned())
    FP4_CHECK(value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              "{}: field '{}' = {} is too large", source, field, value.dump());
  return value.get<int64_t>();
}

double as_number(const nlohmann::json& value, std::string_view field, std::string_view source) {
  FP4_CHECK(value.is_number(), "{}: field '{}' must be a number, got {} {}", source, field, json_type_name(value),
            value.dump());
  return value.get<double>();
}

bool as_bool(const nlohmann::json& value, std::string_view field, std::string_view source) {
  FP4_CHECK(value.is_boolean(), "{}: field '{}' must be true or false, got {} {}", source, field,
            json_type_name(value), value.dump());
  return value.get<bool>();
}

std::string as_string(const nlohmann::json& value, std::string_view field, std::string_view source) {
  FP4_CHECK(value.is_string(), "{}: field '{}' must be a string, got {} {}", source, field, json_type_name(value),
            value.dump());
  return value.get<std::string>();
}

template <typename Json>
void write_text_file_atomically(const std::filesystem::path& path, const Json& value) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    FP4_CHECK(out.good(), "{}: cannot create file (check that the directory exists and is writable)", tmp.string());
    out << value.dump(2) << '\n';
    out.flush();
    FP4_CHECK(out.good(), "{}: write failed (disk full?)", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  FP4_CHECK(!ec, "{}: cannot rename {} into place: {}", path.string(), tmp.string(), ec.message());
}

}  // namespace

std::string_view json_type_name(const nlohmann::json& value) {
  if (value.is_number_integer()) return "integer";
  if (value.is_number()) return "number";
  return value.type_name();
}

nlohmann::json parse_json_text(std::string_view text, std::string_view source) {
  // One key set per open object: a key seen twice in the same object is a duplicate.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate_key;
  auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxJsonDepth)
      fail("{}: JSON nested deeper than {} levels (refused: nlohmann recurses once per level)", source,
           kMaxJsonDepth);
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && duplicate_key.empty()) duplicate_key = key;
    }
    return true;
  };
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text.begin(), text.end(), on_event);
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for a number such as 1e999
    fail("{}: malformed JSON: {}", source, e.what());
  }
  FP4_CHECK(duplicate_key.empty(), "{}: duplicate key '{}' in a JSON object (each key must appear once)", source,
            duplicate_key);
  return value;
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  FP4_CHECK(in.good(), "{}: cannot open file", path.string());
  std::stringstream text;
  text << in.rdbuf();
  FP4_CHECK(!in.bad(), "{}: read failed", path.string());
  return parse_json_text(text.str(), path.string());
}

void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& value) {
  write_text_file_atomically(path, value);
}
void write_json_file(const std::filesystem::path& path, const nlohmann::json& value) {
  write_text_file_atomically(path, value);
}

int64_t required_int(const nlohmann::json& object, std::string_view field, std::string_view source) {
  return as_int(require_field(object, field, source), field, source);
}
double required_number(const nlohmann::json& object, std::string_view field, std::string_view source) {
  return as_number(require_field(object, field, source), field, source);
}
bool required_bool(const nlohmann::json& object, std::string_view field, std::string_view source) {
  return as_bool(require_field(object, field, source), field, source);
}
std::string required_string(const nlohmann::json& object, std::string_view field, std::string_view source) {
  return as_string(require_field(object, field, source), field, source);
}

std::optional<int64_t> optional_int(const nlohmann::json& object, std::string_view field, std::string_view source) {
  const nlohmann::json* value = find_field(object, field, source);
  if (value == nullptr) return std::nullopt;
  return as_int(*value, field, source);
}
std::optional<double> optional_number(const nlohmann::json& object, std::string_view field,
                                      std::string_view source) {
  const nlohmann::json* value = find_field(object, field, source);
  if (value == nullptr) return std::nullopt;
  return as_number(*value, field, source);
}
std::optional<bool> optional_bool(const nlohmann::json& object, std::string_view field, std::string_view source) {
  const nlohmann::json* value = find_field(object, field, source);
  if (value == nullptr) return std::nullopt;
  return as_bool(*value, field, source);
}
std::optional<std::string> optional_string(const nlohmann::json& object, std::string_view field,
                                           std::string_view source) {
  const nlohmann::json* value = find_field(object, field, source);
  if (value == nullptr) return std::nullopt;
  return as_string(*value, field, source);
}

std::vector<std::string> optional_string_list(const nlohmann::json& object, std::string_view field,
                                              std::string_view source) {
  const nlohmann::json* value = find_field(object, field, source);
  if (value == nullptr) return {};
  FP4_CHECK(value->is_array(), "{}: field '{}' must be a list of strings, got {}", source, field,
            json_type_name(*value));
  std::vector<std::string> items;
  for (size_t i = 0; i < value->size(); ++i)
    items.push_back(as_string((*value)[i], fmt::format("{}[{}]", field, i), source));
  return items;
}

}  // namespace fp4serve
