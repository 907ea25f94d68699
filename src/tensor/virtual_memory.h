// A reserved virtual address range whose physical backing can be dropped and re-created at the same addresses, so
// that memory handed back to the OS or the driver (an RL trainer colocated on the device needs it between rollouts)
// comes back where every pointer into it, and every captured CUDA graph, still points.
// CPU: mmap(PROT_NONE, MAP_NORESERVE) reserves; mprotect(READ|WRITE) commits; release maps fresh PROT_NONE pages
// over the range with MAP_FIXED (see virtual_memory.cpp for why not madvise). CUDA: cuMemAddressReserve reserves;
// cuMemCreate + cuMemMap + cuMemSetAccess commit; release is cuMemUnmap + cuMemRelease with the reservation kept.
// Backed bytes always start at base() and grow by whole granules. Not thread-safe (one owner).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/storage.h"

namespace fp4serve {

class VirtualMemoryRange {
 public:
  // Reserves `capacity` bytes (rounded up to the granularity); nothing is backed yet. Throws naming the size when
  // the address space cannot be reserved.
  VirtualMemoryRange(Device device, size_t capacity);
  ~VirtualMemoryRange();
  VirtualMemoryRange(const VirtualMemoryRange&) = delete;
  VirtualMemoryRange& operator=(const VirtualMemoryRange&) = delete;

  Device device() const { return device_; }
  uint8_t* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  size_t granularity() const { return granularity_; }
  // Bytes from base() that are backed (or, while released, that resume() backs again).
  size_t committed_bytes() const { return committed_; }
  bool released() const { return released_; }

  // Backs [base, base + nbytes rounded up to the granularity); bytes not backed before read zero. Throws when
  // nbytes exceeds the capacity, the memory is not there, or the range is released.
  void commit(size_t nbytes);
  // Gives the backing memory back (to the OS or the driver) and returns once it is free; the addresses stay
  // reserved, and touching them faults until resume(). A second release does nothing.
  void release();
  // Backs the committed bytes again at the same addresses, zero-filled. Does nothing unless released.
  void resume();

 private:
  void back(size_t offset, size_t bytes);  // [base + offset, + bytes): new, zeroed memory

  struct PhysicalChunk {  // CUDA: one cuMemCreate allocation mapped at base + offset
    size_t offset;
    size_t bytes;
    uint64_t handle;
  };
  Device device_;
  uint8_t* base_ = nullptr;
  size_t capacity_ = 0;
  size_t granularity_ = 0;
  size_t committed_ = 0;
  bool released_ = false;
  std::vector<PhysicalChunk> chunks_;
};

// Bytes of memory the device has in all (host RAM for the CPU): the most any range on it could ever back.
size_t device_memory_bytes(Device device);

}  // namespace fp4serve
