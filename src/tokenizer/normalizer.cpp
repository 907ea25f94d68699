// NFC through ICU's UTF-8 normalizer, with a quick "already NFC" check first (the common case copies once).
#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include "common/error.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

const icu::Normalizer2& nfc_instance() {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  FP4_CHECK(U_SUCCESS(status) && nfc != nullptr, "ICU cannot load its NFC data: {}", u_errorName(status));
  return *nfc;
}

void append_nfc_of_valid_run(std::string& out, std::string_view run) {
  const icu::Normalizer2& nfc = nfc_instance();
  UErrorCode status = U_ZERO_ERROR;
  const icu::StringPiece piece(run.data(), static_cast<int32_t>(run.size()));
  if (nfc.isNormalizedUTF8(piece, status) && U_SUCCESS(status)) {
    out.append(run);
    return;
  }
  status = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(&out);
  nfc.normalizeUTF8(0, piece, sink, nullptr, status);
  FP4_CHECK(U_SUCCESS(status), "ICU NFC normalization failed on a {}-byte text: {}", run.size(), u_errorName(status));
}

void add_normalizer(const nlohmann::json& spec, std::string_view where, bool& nfc) {
  const std::string& type = component_type(spec, where);
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence") {
    const auto it = spec.find("normalizers");
    FP4_CHECK(it != spec.end() && it->is_array(), "{}: Sequence needs a \"normalizers\" array", where);
    for (size_t i = 0; i < it->size(); ++i) add_normalizer((*it)[i], fmt::format("{}.normalizers[{}]", where, i), nfc);
  } else {
    fail("{}: normalizer type \"{}\" is not supported (fp4serve reads NFC and Sequence)", where, type);
  }
}

}  // namespace

Normalizer Normalizer::from_json(const nlohmann::json& spec, std::string_view where) {
  Normalizer normalizer;
  if (!spec.is_null()) add_normalizer(spec, where, normalizer.nfc_);
  return normalizer;
}

std::string Normalizer::apply(std::string_view text) const { return nfc_ ? nfc_normalize(text) : std::string(text); }

std::string nfc_normalize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t run_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {  // ASCII: always well-formed
      ++pos;
      continue;
    }
    const Utf8Char c = utf8_next(text, pos);
    if (c.code_point >= 0) {
      pos += c.length;
      continue;
    }
    append_nfc_of_valid_run(out, text.substr(run_begin, pos - run_begin));
    out.append(text.substr(pos, c.length));
    pos += c.length;
    run_begin = pos;
  }
  append_nfc_of_valid_run(out, text.substr(run_begin));
  return out;
}

}  // namespace fp4serve
