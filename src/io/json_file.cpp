#include "io/json_file.h"

#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

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

namespace {

// A first, DOM-less pass over the text: nesting depth, keys seen twice in one object, syntax. (nlohmann's parser
// callback would do the same while building the DOM, but it rescans the parent object at every nested object's end:
// quadratic in a safetensors header's tensor count, 20 s for a 48-layer MoE checkpoint.)
class JsonChecks final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit JsonChecks(std::string_view source) : source_(source) {}
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    enter();
    open_objects_.emplace_back();
    return true;
  }
  bool key(string_t& key) override {
    if (!open_objects_.back().insert(key).second)
      fail("{}: duplicate key '{}' in a JSON object (each key must appear once)", source_, key);
    return true;
  }
  bool end_object() override {
    open_objects_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override {
    enter();
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  // Also out_of_range, for a number such as 1e999.
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    fail("{}: malformed JSON: {}", source_, e.what());
  }

 private:
  void enter() {
    if (depth_++ >= kMaxJsonDepth)
      fail("{}: JSON nested deeper than {} levels (refused: nlohmann recurses once per level)", source_,
           kMaxJsonDepth);
  }
  std::string_view source_;
  int depth_ = 0;
  std::vector<std::set<std::string>> open_objects_;  // one key set per open object
};

}  // namespace

nlohmann::json parse_json_text(std::string_view text, std::string_view source) {
  JsonChecks checks(source);
  nlohmann::json::sax_parse(text.begin(), text.end(), &checks);
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // the checks passed the same text: not expected
    fail("{}: malformed JSON: {}", source, e.what());
  }
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
