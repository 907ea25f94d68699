// Typed reads of tokenizer.json / tokenizer_config.json fields. Every error names the path of the field
// (`where`, e.g. "tokenizer.json: model") so a user can find it; absent optional fields take their HF default.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "common/error.h"

namespace fp4serve {

inline bool optional_bool(const nlohmann::json& object, const std::string& key, bool fallback, std::string_view where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  FP4_CHECK(it->is_boolean(), "{}: field \"{}\" must be a boolean, got {}", where, key, it->dump());
  return it->get<bool>();
}

inline const std::string& required_string(const nlohmann::json& object, const std::string& key,
                                          std::string_view where) {
  const auto it = object.find(key);
  FP4_CHECK(it != object.end() && it->is_string(), "{}: field \"{}\" must be a string", where, key);
  return it->get_ref<const std::string&>();
}

// The "type" tag of a component object ("BPE", "ByteLevel", ...).
inline const std::string& component_type(const nlohmann::json& component, std::string_view where) {
  FP4_CHECK(component.is_object(), "{}: expected an object with a \"type\" field, got {}", where, component.dump());
  return required_string(component, "type", where);
}

// A field that must hold its no-op value for our subset (null, or a value equal to `neutral`).
inline void require_neutral(const nlohmann::json& object, const std::string& key, const nlohmann::json& neutral,
                            std::string_view where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null() || *it == neutral) return;
  fail("{}: field \"{}\" = {} is not supported (only {} or null)", where, key, it->dump(), neutral.dump());
}

}  // namespace fp4serve
