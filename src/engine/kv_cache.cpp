#include "engine/kv_cache.h"

#include "common/error.h"

namespace fp4serve {

size_t KvCacheGeometry::bytes_per_token() const {
  return static_cast<size_t>(2 * n_layers * n_kv_heads * head_dim) * dtype_size(DType::BF16);
}

namespace {
int64_t pages_for_budget(int64_t token_budget, int64_t page_size) {
  FP4_CHECK(token_budget > 0 && page_size > 0, "KV cache: token budget {} and page size {} must be positive",
            token_budget, page_size);
  return (token_budget + page_size - 1) / page_size;
}
}  // namespace

KvCache::KvCache(const KvCacheGeometry& geometry, int64_t token_budget, int64_t page_size, Device device)
    : pages_(pages_for_budget(token_budget, page_size), page_size) {
  const Shape shape{geometry.n_layers, pages_.n_pages(), page_size, geometry.n_kv_heads, geometry.head_dim};
  const size_t tensor_bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(DType::BF16);
  memory_ = MemoryArena::create(device, 2 * MemoryArena::block_bytes(tensor_bytes));
  tensors_.k = Tensor::empty(shape, DType::BF16, *memory_);
  tensors_.v = Tensor::empty(shape, DType::BF16, *memory_);
}

}  // namespace fp4serve
