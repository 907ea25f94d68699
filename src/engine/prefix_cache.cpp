#include "engine/prefix_cache.h"

#include <algorithm>

#include "io/xxhash64.h"

namespace fp4serve {

PrefixCache::PrefixCache(PageAllocator& pages, std::string_view weight_version) : pages_(pages) {
  set_weight_version(weight_version);
}

PrefixCache::~PrefixCache() { clear(); }

void PrefixCache::set_weight_version(std::string_view weight_version) {
  version_key_ = xxh64({reinterpret_cast<const uint8_t*>(weight_version.data()), weight_version.size()}, 0);
}

uint64_t PrefixCache::key_of(uint64_t parent_key, std::span<const int32_t> page_tokens) const {
  return xxh64({reinterpret_cast<const uint8_t*>(page_tokens.data()), page_tokens.size_bytes()}, parent_key);
}

const PrefixCache::Entry* PrefixCache::find(uint64_t key, uint64_t parent_key,
                                            std::span<const int32_t> page_tokens) const {
  const auto it = entries_.find(key);
  if (it == entries_.end() || it->second.parent_key != parent_key ||
      !std::equal(page_tokens.begin(), page_tokens.end(), it->second.tokens.begin(), it->second.tokens.end()))
    return nullptr;
  return &it->second;
}

std::vector<int32_t> PrefixCache::match(std::span<const int32_t> tokens, int64_t max_tokens) {
  const int64_t page_size = pages_.page_size();
  const int64_t n_pages = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size())) / page_size;
  std::vector<int32_t> hits;
  uint64_t parent_key = version_key_;
  ++clock_;
  for (int64_t i = 0; i < n_pages; ++i) {
    const std::span<const int32_t> page_tokens = tokens.subspan(i * page_size, page_size);
    const uint64_t key = key_of(parent_key, page_tokens);
    const Entry* entry = find(key, parent_key, page_tokens);
    if (!entry) break;
    entries_.at(key).last_use = clock_;
    pages_.retain(entry->page);
    hits.push_back(entry->page);
    parent_key = key;
  }
  return hits;
}

void PrefixCache::insert(std::span<const int32_t> tokens, std::span<const int32_t> pages, int64_t n_computed) {
  const int64_t page_size = pages_.page_size();
  uint64_t parent_key = version_key_;
  ++clock_;
  for (int64_t i = 0; i < n_computed / page_size; ++i) {
    const std::span<const int32_t> page_tokens = tokens.subspan(i * page_size, page_size);
    const uint64_t key = key_of(parent_key, page_tokens);
    const auto [it, inserted] =
        entries_.try_emplace(key, Entry{pages[i], parent_key, {page_tokens.begin(), page_tokens.end()}, clock_});
    if (inserted) pages_.retain(pages[i]);
    it->second.last_use = clock_;  // a colliding key keeps its page: equal keys with other tokens are never hit
    parent_key = key;
  }
}

bool PrefixCache::make_free(int64_t n_pages) {
  if (pages_.n_free_pages() >= n_pages) return true;
  std::vector<std::pair<uint64_t, uint64_t>> evictable;  // (last use, key) of pages only the cache holds
  for (const auto& [key, entry] : entries_)
    if (pages_.ref_count(entry.page) == 1) evictable.emplace_back(entry.last_use, key);
  std::sort(evictable.begin(), evictable.end());
  for (const auto& [last_use, key] : evictable) {
    if (pages_.n_free_pages() >= n_pages) break;
    pages_.release(entries_.at(key).page);
    entries_.erase(key);
  }
  return pages_.n_free_pages() >= n_pages;
}

void PrefixCache::clear() {
  for (const auto& [key, entry] : entries_) pages_.release(entry.page);
  entries_.clear();
}

}  // namespace fp4serve
