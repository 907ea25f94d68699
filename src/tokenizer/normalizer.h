// tokenizer.json "normalizer": null, NFC, or a Sequence of those (anything else is refused at load). NFC is
// applied to each well-formed UTF-8 run; ill-formed bytes pass through untouched so encode() accepts any bytes.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace fp4serve {

class Normalizer {
 public:
  // `spec` is the "normalizer" value (may be null); `where` names it in errors.
  static Normalizer from_json(const nlohmann::json& spec, std::string_view where);

  bool is_identity() const { return !nfc_; }
  std::string apply(std::string_view text) const;

 private:
  bool nfc_ = false;
};

// Unicode NFC of `text` (ill-formed UTF-8 bytes are kept as they are).
std::string nfc_normalize(std::string_view text);

}  // namespace fp4serve
