#include "tensor/memory_arena.h"

#include <algorithm>

#include "common/error.h"
#include "tensor/cuda_memory.h"

namespace fp4serve {

size_t MemoryArena::block_bytes(size_t nbytes) {
  return (std::max<size_t>(nbytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
}

std::shared_ptr<MemoryArena> MemoryArena::create(Device device, size_t capacity) {
  return std::shared_ptr<MemoryArena>(new MemoryArena(device, capacity));
}

MemoryArena::~MemoryArena() = default;

MemoryArena::HostCopy::~HostCopy() {
  if (device == Device::CUDA)
    cuda::pinned_host_free(data);
  else
    delete[] data;
}

std::shared_ptr<Storage> MemoryArena::allocate(size_t nbytes) {
  FP4_CHECK(!released(), "cannot allocate {} bytes: the memory arena is released; resume it first", nbytes);
  const size_t size = block_bytes(nbytes);
  size_t offset = end_;
  const auto fit = std::find_if(free_blocks_.begin(), free_blocks_.end(),
                                [size](const auto& block) { return block.second >= size; });
  if (fit != free_blocks_.end()) {
    offset = fit->first;
    if (fit->second > size) free_blocks_.emplace(offset + size, fit->second - size);
    free_blocks_.erase(fit);
  } else {
    FP4_CHECK(end_ + size <= range_.capacity(), "memory arena on {} exhausted: {} bytes wanted, {} of {} in use",
              device_name(device()), nbytes, end_, range_.capacity());
    range_.commit(end_ + size);
    end_ += size;
  }
  used_ += size;
  uint8_t* data = range_.base() + offset;
  fill_zero(device(), data, size);  // a reused block holds its previous owner's bytes
  auto storage = std::shared_ptr<Storage>(new Storage(device(), data, nbytes));
  storage->arena_ = shared_from_this();
  return storage;
}

void MemoryArena::free_block(const uint8_t* data, size_t nbytes) {
  size_t offset = static_cast<size_t>(data - range_.base());
  size_t size = block_bytes(nbytes);
  used_ -= size;
  auto next = free_blocks_.lower_bound(offset);
  if (next != free_blocks_.end() && next->first == offset + size) {
    size += next->second;
    next = free_blocks_.erase(next);
  }
  if (next != free_blocks_.begin()) {
    auto previous = std::prev(next);
    if (previous->first + previous->second == offset) {
      offset = previous->first;
      size += previous->second;
      free_blocks_.erase(previous);
    }
  }
  if (offset + size == end_)
    end_ = offset;  // the top of the arena: later blocks grow from here again
  else
    free_blocks_.emplace(offset, size);
}

void MemoryArena::release(bool keep_contents) {
  if (released()) return;
  if (keep_contents && end_ > 0) {
    auto copy = std::unique_ptr<HostCopy>(new HostCopy{
        .device = device(),
        .data = static_cast<uint8_t*>(device() == Device::CUDA ? cuda::pinned_host_alloc(end_) : new uint8_t[end_]),
        .nbytes = end_});
    copy_bytes(Device::CPU, copy->data, device(), range_.base(), end_);
    offloaded_ = std::move(copy);
  }
  range_.release();
}

void MemoryArena::resume() {
  if (!released()) return;
  range_.resume();
  if (offloaded_) {
    copy_bytes(device(), range_.base(), Device::CPU, offloaded_->data, offloaded_->nbytes);
    offloaded_.reset();
  }
}

}  // namespace fp4serve
