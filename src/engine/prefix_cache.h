// Reuse of prompt prefixes across requests, by whole KV pages: a full page is keyed by a chain hash of every token
// up to its end (XXH64 of its tokens seeded with the previous page's key; the first page's seed is the hash of the
// weight version), so a hit on page i means the same weights and tokens [0, (i + 1) * page_size), hence the same
// KV: a prefix cached under one weight version is never matched under another. Hits are verified against the
// stored tokens. The cache holds one
// reference on each cached page; pages held only by the cache are evicted least recently used first when the
// allocator runs short. Only pages whose every position is computed are cached, so a shared page is never written.
// Not thread-safe: the engine thread owns it.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/page_allocator.h"

namespace fp4serve {

class PrefixCache {
 public:
  PrefixCache(PageAllocator& pages, std::string_view weight_version);
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The cached pages holding the longest run of whole pages that starts `tokens` and spans at most max_tokens
  // tokens. Each returned page is retained once more: the caller owns that reference.
  std::vector<int32_t> match(std::span<const int32_t> tokens, int64_t max_tokens);
  // Caches the whole pages among the first n_computed positions of a sequence (tokens and its page table).
  void insert(std::span<const int32_t> tokens, std::span<const int32_t> pages, int64_t n_computed);
  // Evicts pages held only by the cache until n_pages pages are free or nothing more can be evicted; returns
  // whether n_pages are free.
  bool make_free(int64_t n_pages);
  // Releases every cached page (the pages sequences still hold stay theirs).
  void clear();
  // Later matches and inserts are under these weights; pages cached under others stay until evicted or cleared.
  void set_weight_version(std::string_view weight_version);

  int64_t n_cached_pages() const { return static_cast<int64_t>(entries_.size()); }

 private:
  struct Entry {
    int32_t page;
    uint64_t parent_key;          // the previous page's key (version_key_ for the first page)
    std::vector<int32_t> tokens;  // [page_size], to verify hits
    uint64_t last_use;
  };
  uint64_t key_of(uint64_t parent_key, std::span<const int32_t> page_tokens) const;
  const Entry* find(uint64_t key, uint64_t parent_key, std::span<const int32_t> page_tokens) const;

  PageAllocator& pages_;
  uint64_t version_key_ = 0;                     // the first page's parent key
  std::unordered_map<uint64_t, Entry> entries_;  // by key
  uint64_t clock_ = 0;                           // ticks at each match / insert, for LRU
};

}  // namespace fp4serve
