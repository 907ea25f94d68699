// BPE merging (see bpe.h). Symbols live in a vector linked as a list; candidate merges sit in a min-heap keyed
// by (rank, position) and are re-validated when popped, since a neighbour may have merged meanwhile.
#include "tokenizer/bpe.h"

#include <algorithm>
#include <mutex>
#include <shared_mutex>

#include "common/error.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/utf8.h"

namespace fp4serve {

// Words up to kMaxCachedWordBytes are remembered; the whole cache is dropped when it reaches kCapacity entries
// (a cheap bound that keeps the hot words of the current traffic).
struct BpeModel::WordCache {
  static constexpr size_t kCapacity = 1 << 16;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, StringViewHash, std::equal_to<>> words;
};

BpeModel::BpeModel() : cache_(std::make_unique<WordCache>()) {}
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

namespace {

// A merge line is "left right" (one space) or a [left, right] pair.
std::pair<std::string, std::string> parse_merge(const nlohmann::json& merge, std::string_view where) {
  if (merge.is_string()) {
    const std::string& line = merge.get_ref<const std::string&>();
    const size_t space = line.find(' ');
    FP4_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos,
              "{}: merge \"{}\" must be two tokens separated by one space", where, line);
    return {line.substr(0, space), line.substr(space + 1)};
  }
  FP4_CHECK(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(),
            "{}: merge {} must be \"a b\" or [\"a\", \"b\"]", where, merge.dump());
  return {merge[0].get<std::string>(), merge[1].get<std::string>()};
}

std::string describe_character(std::string_view character) {
  const Utf8Char c = utf8_next(character, 0);
  if (c.code_point >= 0) return fmt::format("U+{:04X} \"{}\"", c.code_point, character);
  return fmt::format("byte 0x{:02X} (not valid UTF-8)", static_cast<uint8_t>(character[0]));
}

}  // namespace

BpeModel BpeModel::from_json(const nlohmann::json& spec, std::string_view where) {
  const std::string& type = component_type(spec, where);
  FP4_CHECK(type == "BPE", "{}: model type \"{}\" is not supported (fp4serve reads BPE)", where, type);
  require_neutral(spec, "dropout", 0.0, where);
  require_neutral(spec, "continuing_subword_prefix", "", where);
  require_neutral(spec, "end_of_word_suffix", "", where);
  require_neutral(spec, "byte_fallback", false, where);

  BpeModel model;
  const auto vocab = spec.find("vocab");
  FP4_CHECK(vocab != spec.end() && vocab->is_object(), "{}: field \"vocab\" must be an object token -> id", where);
  model.vocab_.reserve(vocab->size());
  for (const auto& [token, id] : vocab->items()) {
    FP4_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX,
              "{}.vocab: token \"{}\" has id {}, expected a non-negative 32-bit integer", where, token, id.dump());
    model.vocab_.emplace(token, id.get<int32_t>());
  }

  const auto merges = spec.find("merges");
  FP4_CHECK(merges != spec.end() && merges->is_array(), "{}: field \"merges\" must be an array", where);
  model.merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const std::string merge_where = fmt::format("{}.merges[{}]", where, rank);
    const auto [left, right] = parse_merge((*merges)[rank], merge_where);
    const auto left_id = model.token_to_id(left);
    const auto right_id = model.token_to_id(right);
    const auto merged_id = model.token_to_id(left + right);
    FP4_CHECK(left_id && right_id && merged_id, "{}: merge \"{} {}\" uses a token missing from the vocab", merge_where,
              left, right);
    // The first occurrence of a pair wins, as its rank is the lower.
    model.merges_.try_emplace(pair_key(*left_id, *right_id), MergeResult{static_cast<int32_t>(rank), *merged_id});
  }

  const auto unk = spec.find("unk_token");
  if (unk != spec.end() && !unk->is_null()) {
    FP4_CHECK(unk->is_string(), "{}: field \"unk_token\" must be a string or null", where);
    model.unk_id_ = model.token_to_id(unk->get<std::string>());
    FP4_CHECK(model.unk_id_.has_value(), "{}: unk_token \"{}\" is not in the vocab", where, unk->get<std::string>());
  }
  model.fuse_unk_ = optional_bool(spec, "fuse_unk", false, where);
  model.ignore_merges_ = optional_bool(spec, "ignore_merges", false, where);
  return model;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto id = token_to_id(word)) {
      ids.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= WordCache::kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_->mutex);
    const auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  merge_word(word, ids);
  if (cacheable) {
    std::unique_lock lock(cache_->mutex);
    if (cache_->words.size() >= WordCache::kCapacity) cache_->words.clear();
    cache_->words.try_emplace(std::string(word), ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;  // index of the previous live symbol, -1 at the start
    int32_t next;  // index of the next live symbol, -1 at the end
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;  // index of the left symbol
    int32_t merged_id;
    bool operator>(const Candidate& other) const { return rank != other.rank ? rank > other.rank : pos > other.pos; }
  };

  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = utf8_next(word, pos).length;
    const std::string_view character = word.substr(pos, length);
    pos += length;
    std::optional<int32_t> id = token_to_id(character);
    if (!id) {
      FP4_CHECK(unk_id_.has_value(),
                "no token for character {} and the BPE model has no unk_token: the tokenizer's vocab does not "
                "cover this input",
                describe_character(character));
      if (fuse_unk_ && !symbols.empty() && symbols.back().id == *unk_id_) continue;
      id = unk_id_;
    }
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({*id, index - 1, -1, true});
    if (index > 0) symbols[index - 1].next = index;
  }

  std::vector<Candidate> heap;
  auto push_candidate = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, it->second.merged_id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>{});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_candidate(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale if either side changed since the candidate was pushed.
    const auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_candidate(left.prev);
    push_candidate(top.pos);
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.alive) ids.push_back(symbol.id);
  }
}

}  // namespace fp4serve
