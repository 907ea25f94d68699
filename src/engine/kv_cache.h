// The paged KV cache: page bookkeeping (PageAllocator, no device) plus bf16 K and V storage for every layer on the
// model's device, sized from a token budget rounded up to whole pages. Storage never moves for the cache's lifetime:
// K and V are the two blocks of one MemoryArena, whose memory can be released and resumed at the same addresses.
#pragma once
#include <cstdint>
#include <memory>

#include "engine/page_allocator.h"
#include "model/forward_batch.h"
#include "tensor/memory_arena.h"

namespace fp4serve {

struct KvCacheGeometry {
  int64_t n_layers;
  int64_t n_kv_heads;
  int64_t head_dim;
  size_t bytes_per_token() const;  // K and V of every layer, bf16
};

class KvCache {
 public:
  KvCache(const KvCacheGeometry& geometry, int64_t token_budget, int64_t page_size, Device device);

  PageAllocator& pages() { return pages_; }
  const PageAllocator& pages() const { return pages_; }
  const KvCacheTensors& tensors() const { return tensors_; }
  int64_t token_capacity() const { return pages_.n_pages() * pages_.page_size(); }
  MemoryArena& memory() { return *memory_; }
  const MemoryArena& memory() const { return *memory_; }

 private:
  PageAllocator pages_;
  std::shared_ptr<MemoryArena> memory_;
  KvCacheTensors tensors_;
};

}  // namespace fp4serve
