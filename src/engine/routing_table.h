// Routing replay's record: the top-k expert ids every KV slot's token was routed to at each layer (host memory,
// int32 [n_slots, n_layers, top_k], slot = page * page_size + offset), written with the slot's keys and values.
// So a page shared through the prefix cache carries the routing computed with its KV, under the same weights, and
// a recomputed page (preemption, retraction) carries the recomputed routing. Layers without experts hold -1.
// Not thread-safe: the engine thread owns it.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace fp4serve {

class RoutingTable {
 public:
  RoutingTable(int64_t n_pages, int64_t page_size, int64_t n_layers, int64_t top_k);

  int64_t n_layers() const { return n_layers_; }
  int64_t top_k() const { return top_k_; }
  // The slot of `position` in a sequence whose page table is `pages`.
  int64_t slot(std::span<const int32_t> pages, int64_t position) const;
  // ids [slots.size(), top_k]: row m was computed for slots[m] at `layer`.
  void record(int layer, std::span<const int64_t> slots, const int32_t* ids);
  // [end - begin, n_layers, top_k] for positions [begin, end) of a sequence (its pages must cover them).
  std::vector<int32_t> gather(std::span<const int32_t> pages, int64_t begin, int64_t end) const;

 private:
  int64_t page_size_, n_layers_, top_k_;
  std::vector<int32_t> ids_;  // [n_pages * page_size, n_layers, top_k]
};

}  // namespace fp4serve
