#include "engine/routing_table.h"

#include <algorithm>

#include "common/error.h"

namespace fp4serve {

RoutingTable::RoutingTable(int64_t n_pages, int64_t page_size, int64_t n_layers, int64_t top_k)
    : page_size_(page_size),
      n_layers_(n_layers),
      top_k_(top_k),
      ids_(static_cast<size_t>(n_pages * page_size * n_layers * top_k), -1) {}

int64_t RoutingTable::slot(std::span<const int32_t> pages, int64_t position) const {
  const size_t page = static_cast<size_t>(position / page_size_);
  FP4_CHECK(position >= 0 && page < pages.size(), "routing table: position {} lies outside the sequence's {} pages",
            position, pages.size());
  return int64_t{pages[page]} * page_size_ + position % page_size_;
}

void RoutingTable::record(int layer, std::span<const int64_t> slots, const int32_t* ids) {
  const int64_t row_size = n_layers_ * top_k_;
  for (size_t m = 0; m < slots.size(); ++m)
    std::copy_n(ids + static_cast<int64_t>(m) * top_k_, top_k_, ids_.begin() + slots[m] * row_size + layer * top_k_);
}

std::vector<int32_t> RoutingTable::gather(std::span<const int32_t> pages, int64_t begin, int64_t end) const {
  const int64_t row_size = n_layers_ * top_k_;
  std::vector<int32_t> rows;
  rows.reserve(static_cast<size_t>(std::max<int64_t>(end - begin, 0) * row_size));
  for (int64_t position = begin; position < end; ++position) {
    const auto first = ids_.begin() + slot(pages, position) * row_size;
    rows.insert(rows.end(), first, first + row_size);
  }
  return rows;
}

}  // namespace fp4serve
