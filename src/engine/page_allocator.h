// Pages of the KV cache as bookkeeping only (no device): a fixed number of pages of `page_size` token slots, a
// FIFO free list and a reference count per page. A page is free exactly when its count is 0. Fallible operations
// come in pairs (can_allocate / allocate, can_append / append); the second throws when the first says no.
// Not thread-safe: the engine thread owns it.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

namespace fp4serve {

// One sequence's pages: token at position p lives in pages[p / page_size], slot p % page_size.
struct PageTable {
  std::vector<int32_t> pages;
  int64_t n_tokens = 0;  // positions covered so far
};

class PageAllocator {
 public:
  PageAllocator(int64_t n_pages, int64_t page_size);

  int64_t n_pages() const { return static_cast<int64_t>(ref_counts_.size()); }
  int64_t page_size() const { return page_size_; }
  int64_t n_free_pages() const { return static_cast<int64_t>(free_pages_.size()); }
  int64_t pages_for(int64_t n_tokens) const { return (n_tokens + page_size_ - 1) / page_size_; }

  // A new sequence of n_tokens (table must be empty).
  bool can_allocate(int64_t n_tokens) const;
  void allocate(PageTable& table, int64_t n_tokens);
  // n_new_tokens more positions for an existing sequence (takes pages only when the last one is full).
  bool can_append(const PageTable& table, int64_t n_new_tokens) const;
  void append(PageTable& table, int64_t n_new_tokens);
  // Releases every page of the table (each page's count drops by one) and empties it.
  void free(PageTable& table);

  // Another holder of an allocated page (a prefix cache sharing it); release() undoes one hold.
  void retain(int32_t page);
  void release(int32_t page);
  int32_t ref_count(int32_t page) const;

 private:
  void check_page(int32_t page) const;
  int32_t take_page();

  int64_t page_size_;
  std::vector<int32_t> ref_counts_;  // [n_pages]
  std::deque<int32_t> free_pages_;
};

}  // namespace fp4serve
