// Loading tokenizer.json / tokenizer_config.json and the encode / decode pipelines (see tokenizer.h).
#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "common/error.h"
#include "io/json_text.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

AddedToken parse_added_token(const nlohmann::json& spec, int64_t id, std::string_view where) {
  FP4_CHECK(spec.is_object(), "{}: expected an object, got {}", where, spec.dump());
  FP4_CHECK(id >= 0 && id < INT32_MAX, "{}: id {} must be a non-negative 32-bit integer", where, id);
  const bool special = optional_bool(spec, "special", false, where);
  return AddedToken{.id = static_cast<int32_t>(id),
                    .content = required_string(spec, "content", where),
                    .special = special,
                    .single_word = optional_bool(spec, "single_word", false, where),
                    .lstrip = optional_bool(spec, "lstrip", false, where),
                    .rstrip = optional_bool(spec, "rstrip", false, where),
                    .normalized = optional_bool(spec, "normalized", !special, where)};
}

// tokenizer.json "added_tokens" merged with tokenizer_config.json "added_tokens_decoder" (which may list more).
std::vector<AddedToken> collect_added_tokens(const nlohmann::json& tokenizer_json,
                                             const nlohmann::json& tokenizer_config, std::string_view source) {
  std::vector<AddedToken> tokens;
  const auto list = tokenizer_json.find("added_tokens");
  if (list != tokenizer_json.end() && !list->is_null()) {
    FP4_CHECK(list->is_array(), "{}: field \"added_tokens\" must be an array", source);
    for (size_t i = 0; i < list->size(); ++i) {
      const std::string where = fmt::format("{}: added_tokens[{}]", source, i);
      const auto id = (*list)[i].find("id");
      FP4_CHECK(id != (*list)[i].end() && id->is_number_integer(), "{}: field \"id\" must be an integer", where);
      tokens.push_back(parse_added_token((*list)[i], id->get<int64_t>(), where));
    }
  }
  if (!tokenizer_config.is_object()) return tokens;
  const auto decoder = tokenizer_config.find("added_tokens_decoder");
  if (decoder == tokenizer_config.end() || decoder->is_null()) return tokens;
  FP4_CHECK(decoder->is_object(), "tokenizer_config.json: \"added_tokens_decoder\" must be an object id -> token");
  for (const auto& [key, spec] : decoder->items()) {
    const std::string where = fmt::format("tokenizer_config.json: added_tokens_decoder[\"{}\"]", key);
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(key, &used);
      FP4_CHECK(used == key.size(), "{}: key must be a token id", where);
    } catch (const std::logic_error&) {
      fail("{}: key must be a token id", where);
    }
    AddedToken token = parse_added_token(spec, id, where);
    const auto same_id = std::find_if(tokens.begin(), tokens.end(), [&](const AddedToken& t) { return t.id == id; });
    if (same_id == tokens.end()) {
      tokens.push_back(std::move(token));
    } else {
      FP4_CHECK(same_id->content == token.content, "{}: content \"{}\" differs from {}'s \"{}\" for id {}", where,
                token.content, source, same_id->content, id);
    }
  }
  return tokens;
}

// A special-token field of tokenizer_config.json: a string, {"content": ...}, or null.
std::optional<std::string> config_token(const nlohmann::json& config, const std::string& key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  fail("tokenizer_config.json: field \"{}\" must be a string, {{\"content\": ...}} or null, got {}", key, it->dump());
}

}  // namespace

Tokenizer Tokenizer::from_files(const std::filesystem::path& model_dir) {
  const auto tokenizer_path = model_dir / "tokenizer.json";
  FP4_CHECK(std::filesystem::exists(tokenizer_path), "{} not found: a model directory needs an HF tokenizer.json",
            tokenizer_path.string());
  const auto config_path = model_dir / "tokenizer_config.json";
  const auto generation_path = model_dir / "generation_config.json";
  const nlohmann::json config = std::filesystem::exists(config_path) ? read_json_file(config_path) : nullptr;
  const nlohmann::json generation =
      std::filesystem::exists(generation_path) ? read_json_file(generation_path) : nullptr;
  return from_json(read_json_file(tokenizer_path), config, generation, tokenizer_path.string());
}

Tokenizer Tokenizer::from_json(const nlohmann::json& tokenizer_json, const nlohmann::json& tokenizer_config,
                               const nlohmann::json& generation_config, std::string_view source) {
  try {
    return load(tokenizer_json, tokenizer_config, generation_config, source);
  } catch (const nlohmann::json::exception& e) {
    // A field of an unexpected JSON type that the explicit checks in load() did not anticipate.
    fail("{} / tokenizer_config.json / generation_config.json: malformed field: {}", source, e.what());
  }
}

Tokenizer Tokenizer::load(const nlohmann::json& tokenizer_json, const nlohmann::json& tokenizer_config,
                          const nlohmann::json& generation_config, std::string_view source) {
  FP4_CHECK(tokenizer_json.is_object(), "{}: expected a JSON object", source);
  require_neutral(tokenizer_json, "truncation", nullptr, source);
  require_neutral(tokenizer_json, "padding", nullptr, source);
  const auto field = [&](const char* key) { return tokenizer_json.value(key, nlohmann::json()); };
  FP4_CHECK(tokenizer_json.contains("model"), "{}: field \"model\" is missing", source);

  Tokenizer tokenizer(BpeModel::from_json(tokenizer_json["model"], fmt::format("{}: model", source)));
  tokenizer.normalizer_ = Normalizer::from_json(field("normalizer"), fmt::format("{}: normalizer", source));
  tokenizer.pre_tokenizer_ = PreTokenizer::from_json(field("pre_tokenizer"), fmt::format("{}: pre_tokenizer", source));

  const nlohmann::json decoder = field("decoder");
  if (!decoder.is_null()) {
    const std::string where = fmt::format("{}: decoder", source);
    const std::string& type = component_type(decoder, where);
    FP4_CHECK(type == "ByteLevel", "{}: decoder type \"{}\" is not supported (fp4serve reads ByteLevel)", where, type);
    tokenizer.decoder_ = Decoder::kByteLevel;
  }

  // Ids: the model vocab, then added tokens (which take precedence for their id and content).
  int32_t vocab_size = 0;
  for (const auto& [text, id] : tokenizer.model_.vocab()) vocab_size = std::max(vocab_size, id + 1);
  std::vector<AddedToken> added = collect_added_tokens(tokenizer_json, tokenizer_config, source);
  for (const AddedToken& token : added) vocab_size = std::max(vocab_size, token.id + 1);
  FP4_CHECK(vocab_size <= kMaxVocabSize, "{}: token id {} is too large: ids must be below {} (the table has one "
            "entry per id)", source, vocab_size - 1, kMaxVocabSize);
  tokenizer.entries_.resize(static_cast<size_t>(vocab_size));
  for (const auto& [text, id] : tokenizer.model_.vocab()) {
    TokenEntry& entry = tokenizer.entries_[id];
    entry.text = text;
    entry.exists = true;
    std::optional<std::string> bytes;
    if (tokenizer.decoder_ == Decoder::kByteLevel) bytes = byte_level_to_bytes(text);
    // HF's ByteLevel decoder keeps a token with characters outside the alphabet as its raw UTF-8.
    entry.decoded = bytes ? std::move(*bytes) : text;
  }
  std::vector<AddedToken> raw_tokens;
  std::vector<AddedToken> normalized_tokens;
  for (AddedToken& token : added) {
    TokenEntry& entry = tokenizer.entries_[token.id];
    entry = {.text = token.content, .decoded = token.content, .exists = true, .special = token.special};
    tokenizer.added_token_ids_.insert_or_assign(token.content, token.id);
    if (token.normalized) token.content = tokenizer.normalizer_.apply(token.content);
    (token.normalized ? normalized_tokens : raw_tokens).push_back(token);
  }
  tokenizer.raw_matcher_ = AddedTokenMatcher(std::move(raw_tokens));
  tokenizer.normalized_matcher_ = AddedTokenMatcher(std::move(normalized_tokens));

  tokenizer.load_post_processor(field("post_processor"), fmt::format("{}: post_processor", source));
  tokenizer.load_config(tokenizer_config, generation_config);
  return tokenizer;
}

void Tokenizer::load_post_processor(const nlohmann::json& spec, std::string_view where) {
  if (spec.is_null()) return;
  const std::string& type = component_type(spec, where);
  if (type == "ByteLevel") return;  // it only adjusts offsets, which we do not report
  if (type == "Sequence") {
    const auto it = spec.find("processors");
    FP4_CHECK(it != spec.end() && it->is_array(), "{}: Sequence needs a \"processors\" array", where);
    for (size_t i = 0; i < it->size(); ++i) load_post_processor((*it)[i], fmt::format("{}.processors[{}]", where, i));
    return;
  }
  FP4_CHECK(type == "TemplateProcessing",
            "{}: post_processor type \"{}\" is not supported (fp4serve reads ByteLevel, TemplateProcessing, "
            "Sequence)",
            where, type);
  FP4_CHECK(prefix_ids_.empty() && suffix_ids_.empty(), "{}: only one TemplateProcessing is supported", where);
  const auto single = spec.find("single");
  FP4_CHECK(single != spec.end() && single->is_array(), "{}: TemplateProcessing needs a \"single\" array", where);
  bool seen_text = false;
  for (const nlohmann::json& piece : *single) {
    if (piece.contains("Sequence")) {
      FP4_CHECK(!seen_text && piece["Sequence"].value("id", "") == "A",
                "{}: the single template must hold sequence A exactly once, got {}", where, single->dump());
      seen_text = true;
      continue;
    }
    FP4_CHECK(piece.contains("SpecialToken") && piece["SpecialToken"].contains("id"),
              "{}: template piece {} is neither SpecialToken nor Sequence", where, piece.dump());
    const std::string name = piece["SpecialToken"]["id"].get<std::string>();
    const nlohmann::json ids = spec.value("special_tokens", nlohmann::json::object())
                                   .value(name, nlohmann::json())
                                   .value("ids", nlohmann::json());
    FP4_CHECK(ids.is_array(), "{}: special_tokens[\"{}\"].ids is missing", where, name);
    for (const auto& id : ids) {
      FP4_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < vocab_size(),
                "{}: special_tokens[\"{}\"].ids holds {}, which is not a token id of this vocabulary", where, name,
                id.dump());
      (seen_text ? suffix_ids_ : prefix_ids_).push_back(id.get<int32_t>());
    }
  }
  FP4_CHECK(seen_text, "{}: the single template has no sequence A", where);
}

void Tokenizer::load_config(const nlohmann::json& tokenizer_config, const nlohmann::json& generation_config) {
  if (tokenizer_config.is_object()) {
    const auto resolve = [&](const char* key) -> std::optional<int32_t> {
      const std::optional<std::string> text = config_token(tokenizer_config, key);
      if (!text) return std::nullopt;
      const std::optional<int32_t> id = token_id(*text);
      FP4_CHECK(id.has_value(), "tokenizer_config.json: {} \"{}\" is not a token of tokenizer.json", key, *text);
      return id;
    };
    bos_id_ = resolve("bos_token");
    eos_id_ = resolve("eos_token");
    pad_id_ = resolve("pad_token");
  }
  if (eos_id_) stop_ids_.push_back(*eos_id_);
  if (!generation_config.is_object() || !generation_config.contains("eos_token_id")) return;
  const nlohmann::json& eos = generation_config["eos_token_id"];
  const nlohmann::json eos_list = eos.is_array() ? eos : nlohmann::json::array({eos});
  for (const nlohmann::json& id : eos_list) {
    if (id.is_null()) continue;
    FP4_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < vocab_size(),
              "generation_config.json: eos_token_id {} is not a token id below the vocab size {}", id.dump(),
              vocab_size());
    if (std::find(stop_ids_.begin(), stop_ids_.end(), id.get<int32_t>()) == stop_ids_.end()) {
      stop_ids_.push_back(id.get<int32_t>());
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + prefix_ids_.size() + suffix_ids_.size());
  if (options.add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<TextSegment> segments;
  raw_matcher_.split(text, options.allow_special, segments);
  for (const TextSegment& segment : segments) {
    if (segment.token_id >= 0) {
      ids.push_back(segment.token_id);
    } else {
      encode_plain(text.substr(segment.begin, segment.end - segment.begin), options.allow_special, ids);
    }
  }
  if (options.add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

void Tokenizer::encode_plain(std::string_view text, bool allow_special, std::vector<int32_t>& ids) const {
  std::string normalized_storage;
  std::string_view normalized = text;
  if (!normalizer_.is_identity()) {
    normalized_storage = normalizer_.apply(text);
    normalized = normalized_storage;
  }
  std::vector<TextSegment> segments;
  normalized_matcher_.split(normalized, allow_special, segments);
  const PreTokenizer::PieceSink encode_piece = [&](std::string_view piece) { model_.encode_word(piece, ids); };
  for (const TextSegment& segment : segments) {
    if (segment.token_id >= 0) {
      ids.push_back(segment.token_id);
    } else {
      pre_tokenizer_.split(normalized.substr(segment.begin, segment.end - segment.begin), encode_piece);
    }
  }
}

bool Tokenizer::append_token_bytes(int32_t id, bool skip_special, bool after_token, std::string& out) const {
  if (id < 0 || id >= vocab_size()) return false;
  const TokenEntry& entry = entries_[id];
  if (!entry.exists || (skip_special && entry.special)) return false;
  if (after_token && decoder_ == Decoder::kNone) out += ' ';
  out += entry.decoded;
  return true;
}

std::string Tokenizer::decode_bytes(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  bool after_token = false;
  for (int32_t id : ids) after_token |= append_token_bytes(id, skip_special, after_token, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  return to_valid_utf8(decode_bytes(ids, skip_special));
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  const auto it = added_token_ids_.find(token);
  if (it != added_token_ids_.end()) return it->second;
  return model_.token_to_id(token);
}

std::optional<std::string_view> Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !entries_[id].exists) return std::nullopt;
  return entries_[id].text;
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && entries_[id].special; }

}  // namespace fp4serve
