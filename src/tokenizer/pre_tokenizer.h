// tokenizer.json "pre_tokenizer": null, Split (Regex or String pattern, behavior Isolated or Removed, invert),
// ByteLevel (add_prefix_space, use_regex) or a Sequence of those, applied in order to every piece as HF does.
// Pieces come out in the model's alphabet: after a ByteLevel step each byte is spelled as its mapped character.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace fp4serve {

class PreTokenizer {
 public:
  // `spec` is the "pre_tokenizer" value (may be null); `where` names it in errors.
  static PreTokenizer from_json(const nlohmann::json& spec, std::string_view where);

  // Appends the non-empty pieces of `text` to `pieces`.
  void split(std::string_view text, std::vector<std::string>& pieces) const;

  // Whether a ByteLevel step maps bytes to the byte-level alphabet.
  bool is_byte_level() const;

 private:
  struct Step {
    enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
    // kSplit: pieces between matches are kept; matches are kept as their own pieces unless `remove_matches`.
    // `invert` swaps which spans count as matches. kByteLevel: `regex` set when use_regex.
    std::shared_ptr<const Regex> regex;
    bool remove_matches = false;
    bool invert = false;
    bool add_prefix_space = false;
  };

  void add_step(const nlohmann::json& spec, std::string_view where);
  static void apply_split(const Step& step, std::string_view piece, std::vector<std::string>& out);
  static void apply_byte_level(const Step& step, std::string_view piece, std::vector<std::string>& out);

  std::vector<Step> steps_;
};

// The GPT-2 pattern that a ByteLevel step with use_regex splits on.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace fp4serve
