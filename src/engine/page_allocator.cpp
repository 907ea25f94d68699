#include "engine/page_allocator.h"

#include "common/error.h"

namespace fp4serve {

PageAllocator::PageAllocator(int64_t n_pages, int64_t page_size) : page_size_(page_size) {
  FP4_CHECK(n_pages > 0 && n_pages <= INT32_MAX, "KV cache: {} pages requested; need 1 to {}", n_pages, INT32_MAX);
  FP4_CHECK(page_size > 0, "KV cache: page size {} must be positive", page_size);
  ref_counts_.assign(static_cast<size_t>(n_pages), 0);
  for (int64_t p = 0; p < n_pages; ++p) free_pages_.push_back(static_cast<int32_t>(p));
}

bool PageAllocator::can_allocate(int64_t n_tokens) const {
  return n_tokens >= 0 && pages_for(n_tokens) <= n_free_pages();
}

void PageAllocator::allocate(PageTable& table, int64_t n_tokens) {
  FP4_CHECK(table.pages.empty() && table.n_tokens == 0, "KV cache: allocate on a sequence that already holds {} pages",
            table.pages.size());
  FP4_CHECK(can_allocate(n_tokens), "KV cache: {} tokens need {} pages but {} are free (check can_allocate first)",
            n_tokens, pages_for(n_tokens), n_free_pages());
  for (int64_t i = 0; i < pages_for(n_tokens); ++i) table.pages.push_back(take_page());
  table.n_tokens = n_tokens;
}

bool PageAllocator::can_append(const PageTable& table, int64_t n_new_tokens) const {
  const int64_t needed = pages_for(table.n_tokens + n_new_tokens) - static_cast<int64_t>(table.pages.size());
  return n_new_tokens >= 0 && needed <= n_free_pages();
}

void PageAllocator::append(PageTable& table, int64_t n_new_tokens) {
  FP4_CHECK(can_append(table, n_new_tokens),
            "KV cache: appending {} tokens to a sequence of {} needs more pages than the {} free (check can_append "
            "first)",
            n_new_tokens, table.n_tokens, n_free_pages());
  table.n_tokens += n_new_tokens;
  while (static_cast<int64_t>(table.pages.size()) < pages_for(table.n_tokens)) table.pages.push_back(take_page());
}

void PageAllocator::free(PageTable& table) {
  for (int32_t page : table.pages) release(page);
  table.pages.clear();
  table.n_tokens = 0;
}

void PageAllocator::retain(int32_t page) {
  check_page(page);
  FP4_CHECK(ref_counts_[page] > 0, "KV cache: retain of page {}, which is free", page);
  ++ref_counts_[page];
}

void PageAllocator::release(int32_t page) {
  check_page(page);
  FP4_CHECK(ref_counts_[page] > 0, "KV cache: page {} released more often than held", page);
  if (--ref_counts_[page] == 0) free_pages_.push_back(page);
}

int32_t PageAllocator::ref_count(int32_t page) const {
  check_page(page);
  return ref_counts_[page];
}

void PageAllocator::check_page(int32_t page) const {
  FP4_CHECK(page >= 0 && page < n_pages(), "KV cache: page {} out of range [0, {})", page, n_pages());
}

int32_t PageAllocator::take_page() {
  const int32_t page = free_pages_.front();
  free_pages_.pop_front();
  ref_counts_[page] = 1;
  return page;
}

}  // namespace fp4serve
