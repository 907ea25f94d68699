// Added-token matching with a byte trie (see added_tokens.h). Word characters and whitespace follow Rust's regex
// \w and \s (Unicode), which HF uses for single_word, lstrip and rstrip.
#include "tokenizer/added_tokens.h"

#include <unicode/uchar.h>

#include <algorithm>

#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

bool is_word_character(int32_t c) {
  if (c < 0) return false;
  const auto category_mask = U_GET_GC_MASK(c);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL) ||
         (category_mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

bool is_whitespace(int32_t c) { return c >= 0 && u_isUWhiteSpace(c); }

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  root_children_.fill(-1);
  trie_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& content = tokens_[t].content;
    if (content.empty()) continue;  // an empty token can never be matched
    int32_t node = 0;
    for (size_t i = 0; i < content.size(); ++i) {
      const auto byte = static_cast<uint8_t>(content[i]);
      auto& children = trie_[node].children;
      auto it = std::lower_bound(children.begin(), children.end(), std::pair<uint8_t, int32_t>{byte, -1});
      if (it != children.end() && it->first == byte) {
        node = it->second;
        continue;
      }
      const auto child = static_cast<int32_t>(trie_.size());
      children.insert(it, {byte, child});
      if (node == 0) root_children_[byte] = child;
      trie_.emplace_back();
      node = child;
    }
    if (trie_[node].token < 0) trie_[node].token = static_cast<int32_t>(t);  // duplicates: the first wins
  }
}

AddedTokenMatcher::Match AddedTokenMatcher::find(std::string_view text, size_t from, bool allow_special) const {
  for (size_t begin = from; begin < text.size(); ++begin) {
    Match longest{begin, begin, nullptr};
    int32_t node = root_children_[static_cast<uint8_t>(text[begin])];
    size_t end = begin + 1;  // the text consumed to reach `node`
    while (node >= 0) {
      const int32_t token = trie_[node].token;
      if (token >= 0 && (allow_special || !tokens_[token].special)) longest = {begin, end, &tokens_[token]};
      if (end == text.size()) break;
      const auto& children = trie_[node].children;
      const auto byte = static_cast<uint8_t>(text[end]);
      const auto it = std::lower_bound(children.begin(), children.end(), std::pair<uint8_t, int32_t>{byte, -1});
      node = it != children.end() && it->first == byte ? it->second : -1;
      ++end;
    }
    if (longest.token != nullptr) return longest;
  }
  return {text.size(), text.size(), nullptr};
}

void AddedTokenMatcher::split(std::string_view text, bool allow_special, std::vector<TextSegment>& segments) const {
  size_t plain_begin = 0;  // start of the text not yet assigned to a segment
  size_t search_from = 0;
  while (!tokens_.empty()) {
    const Match match = find(text, search_from, allow_special);
    if (match.token == nullptr) break;
    search_from = match.end;
    size_t begin = match.begin;
    size_t end = match.end;
    if (match.token->single_word) {
      const bool word_before = begin > 0 && is_word_character(utf8_prev(text, begin).code_point);
      const bool word_after = end < text.size() && is_word_character(utf8_next(text, end).code_point);
      if (word_before || word_after) continue;
    }
    if (match.token->lstrip) {
      // Never reach back into the previous token's segment.
      while (begin > plain_begin) {
        const Utf8Char c = utf8_prev(text, begin);
        if (!is_whitespace(c.code_point) || begin - plain_begin < c.length) break;
        begin -= c.length;
      }
    }
    if (match.token->rstrip) {
      while (end < text.size()) {
        const Utf8Char c = utf8_next(text, end);
        if (!is_whitespace(c.code_point)) break;
        end += c.length;
      }
      search_from = end;
    }
    if (plain_begin < begin) segments.push_back({plain_begin, begin, -1});
    segments.push_back({begin, end, match.token->id});
    plain_begin = end;
  }
  if (plain_begin < text.size()) segments.push_back({plain_begin, text.size(), -1});
}

}  // namespace fp4serve
