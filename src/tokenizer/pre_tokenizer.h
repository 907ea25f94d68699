// tokenizer.json "pre_tokenizer": null, Split (Regex or String pattern, behavior Isolated or Removed, invert),
// ByteLevel (add_prefix_space, use_regex) or a Sequence of those, applied in order to every piece as HF does.
// Pieces come out in the model's alphabet: after a ByteLevel step each byte is spelled as its mapped character.
// Pieces stream to a callback one at a time, so memory stays small however long the text is.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace fp4serve {

class PreTokenizer {
 public:
  using PieceSink = std::function<void(std::string_view piece)>;

  // `spec` is the "pre_tokenizer" value (may be null); `where` names it in errors.
  static PreTokenizer from_json(const nlohmann::json& spec, std::string_view where);

  // Calls `on_piece` for each non-empty piece of `text`, in order. The view is valid during the call only.
  void split(std::string_view text, const PieceSink& on_piece) const;

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
  // Runs steps_[step..] on one piece.
  void apply(size_t step, std::string_view piece, const PieceSink& on_piece) const;
  void apply_split(size_t step, std::string_view piece, const PieceSink& on_piece) const;
  void apply_byte_level(size_t step, std::string_view piece, const PieceSink& on_piece) const;

  std::vector<Step> steps_;
};

// The GPT-2 pattern that a ByteLevel step with use_regex splits on.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace fp4serve
