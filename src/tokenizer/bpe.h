// tokenizer.json "model" of type BPE: vocab (token -> id), merges ranked by their order, ignore_merges, unk_token
// (with fuse_unk). A word is split into characters and the lowest-rank adjacent pair is merged until none is left
// (ties: leftmost first), with a heap over a linked list so long words cost O(n log n). Thread-safe: encode_word
// may run on several threads at once (the word cache takes a reader/writer lock).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fp4serve {

// Hash for heterogeneous lookup of std::string keys by std::string_view.
struct StringViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenIdMap = std::unordered_map<std::string, int32_t, StringViewHash, std::equal_to<>>;

class BpeModel {
 public:
  // `spec` is the "model" object; `where` names it in errors.
  static BpeModel from_json(const nlohmann::json& spec, std::string_view where);
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // Appends the ids of one pre-tokenized word (spelled in the vocabulary's alphabet). A character with no token
  // maps to unk_token, or throws when the model has none.
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const TokenIdMap& vocab() const { return vocab_; }
  std::optional<int32_t> unk_id() const { return unk_id_; }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t merged_id;
  };
  struct WordCache;

  BpeModel();
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  TokenIdMap vocab_;
  std::unordered_map<uint64_t, MergeResult> merges_;  // pair_key(left id, right id) -> rank and merged token
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace fp4serve
