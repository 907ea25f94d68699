// Added tokens (tokenizer.json "added_tokens") are found in text before pre-tokenization, as HF does: at each
// position the longest token wins, the leftmost match first; single_word needs no word character on either side,
// lstrip / rstrip take the adjacent whitespace into the token. Special tokens are skipped when !allow_special.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fp4serve {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;  // matched on normalized text (else on the raw input)
};

// A span of text: either plain text to pre-tokenize (token_id < 0) or one added token.
struct TextSegment {
  size_t begin;
  size_t end;
  int32_t token_id;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  bool empty() const { return tokens_.empty(); }

  // Splits `text` into segments covering it in order (plain segments are never empty).
  void split(std::string_view text, bool allow_special, std::vector<TextSegment>& segments) const;

 private:
  struct Match {
    size_t begin;
    size_t end;
    const AddedToken* token;  // into tokens_
  };
  struct TrieNode {
    std::vector<std::pair<uint8_t, int32_t>> children;  // byte -> node index, sorted by byte
    int32_t token = -1;                                 // index into tokens_ of the token ending here
  };

  // The leftmost-longest match starting at or after `from`, or token == nullptr.
  Match find(std::string_view text, size_t from, bool allow_special) const;

  std::vector<AddedToken> tokens_;
  std::vector<TrieNode> trie_;              // trie_[0] is the root
  std::array<int32_t, 256> root_children_;  // root's children by first byte, -1 when none
};

}  // namespace fp4serve
