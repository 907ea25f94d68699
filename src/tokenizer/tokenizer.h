// HF tokenizer.json (the subset Qwen3, Llama-3 and GPT-2 use) plus tokenizer_config.json's special tokens.
// encode: added tokens on the raw text -> normalizer -> normalized added tokens -> pre-tokenizer -> BPE ->
// post-processor. Any unsupported component is refused at load with an error naming it. All const methods are
// thread-safe (encode may run on many threads; the BPE word cache is locked internally).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"

namespace fp4serve {

// Ids must be below this: the decode table has an entry per id, so one huge id in a tokenizer.json would otherwise
// allocate gigabytes. The largest vocabularies in use have about 262k ids.
inline constexpr int32_t kMaxVocabSize = 1 << 21;

struct EncodeOptions {
  bool allow_special = true;       // special-token text in the input maps to the special id (HF's default)
  bool add_special_tokens = true;  // apply the post_processor template, e.g. Llama-3's BOS (Qwen3 adds none)
};

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json, and DIR/tokenizer_config.json and DIR/generation_config.json when present.
  static Tokenizer from_files(const std::filesystem::path& model_dir);
  // `tokenizer_config` and `generation_config` may be null. `source` names tokenizer.json in errors.
  static Tokenizer from_json(const nlohmann::json& tokenizer_json, const nlohmann::json& tokenizer_config = nullptr,
                             const nlohmann::json& generation_config = nullptr,
                             std::string_view source = "tokenizer.json");

  // Any bytes are accepted: ill-formed UTF-8 is kept byte for byte (byte-level models round-trip it).
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;

  // Ids with no token (gaps, or beyond the vocab such as padded logits) decode to nothing, as in HF.
  // decode() returns valid UTF-8 (ill-formed bytes become U+FFFD); decode_bytes() returns the raw bytes.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  std::string decode_bytes(std::span<const int32_t> ids, bool skip_special = false) const;

  // Appends one token's bytes as decode_bytes() does for it when `after_token` tokens were emitted before it
  // (a null decoder joins tokens with a space, as HF does). Returns false when the id is skipped.
  bool append_token_bytes(int32_t id, bool skip_special, bool after_token, std::string& out) const;

  int32_t vocab_size() const { return static_cast<int32_t>(entries_.size()); }
  std::optional<int32_t> token_id(std::string_view token) const;  // added tokens first, then the model vocab
  std::optional<std::string_view> token_text(int32_t id) const;   // the vocab spelling
  bool is_special(int32_t id) const;

  // From tokenizer_config.json (nullopt when not set there).
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  std::optional<int32_t> pad_id() const { return pad_id_; }
  // Ids that end generation: eos_id plus generation_config.json's eos_token_id (one id or a list).
  const std::vector<int32_t>& stop_ids() const { return stop_ids_; }

 private:
  enum class Decoder { kNone, kByteLevel };
  struct TokenEntry {
    std::string text;     // vocab spelling ("" for an id with no token)
    std::string decoded;  // bytes it decodes to
    bool exists = false;
    bool special = false;
  };

  explicit Tokenizer(BpeModel model) : model_(std::move(model)) {}
  static Tokenizer load(const nlohmann::json& tokenizer_json, const nlohmann::json& tokenizer_config,
                        const nlohmann::json& generation_config, std::string_view source);
  void load_post_processor(const nlohmann::json& spec, std::string_view where);
  void load_config(const nlohmann::json& tokenizer_config, const nlohmann::json& generation_config);
  void encode_plain(std::string_view text, bool allow_special, std::vector<int32_t>& ids) const;

  BpeModel model_;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  Decoder decoder_ = Decoder::kNone;
  TokenIdMap added_token_ids_;            // content -> id
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized == false, matched on the raw text
  AddedTokenMatcher normalized_matcher_;  // the others, matched on normalized text
  std::vector<int32_t> prefix_ids_;       // post_processor template around the text (add_special_tokens)
  std::vector<int32_t> suffix_ids_;
  std::vector<TokenEntry> entries_;  // by id
  std::optional<int32_t> bos_id_, eos_id_, pad_id_;
  std::vector<int32_t> stop_ids_;
};

}  // namespace fp4serve
