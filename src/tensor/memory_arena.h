// Storage blocks carved out of one VirtualMemoryRange (virtual_memory.h): every block keeps its address for its
// lifetime, and the physical memory of all of them can be given back at once and re-created at the same addresses
// (the weights and the KV cache of a server colocated with an RL trainer; engine.h). Blocks are 256-byte aligned,
// like cudaMalloc's, and zero-filled; freed blocks are reused first-fit, neighbours merged.
// Not thread-safe: the engine thread owns the arenas of its model and KV cache.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

#include "tensor/storage.h"
#include "tensor/virtual_memory.h"

namespace fp4serve {

class MemoryArena : public std::enable_shared_from_this<MemoryArena> {
 public:
  static constexpr size_t kAlignment = 256;
  static size_t block_bytes(size_t nbytes);  // the arena bytes a block of nbytes takes (alignment included)
  // Reserves `capacity` bytes of addresses on `device`; memory is committed as blocks are allocated.
  static std::shared_ptr<MemoryArena> create(Device device, size_t capacity);
  ~MemoryArena();

  Device device() const { return range_.device(); }
  // A zero-filled block of nbytes. Throws when the arena is released or its capacity is exhausted.
  std::shared_ptr<Storage> allocate(size_t nbytes);
  bool holds(const Storage& storage) const { return storage.arena_.get() == this; }
  size_t used_bytes() const { return used_; }                        // in live blocks, alignment included
  size_t committed_bytes() const { return range_.committed_bytes(); }  // backed (or backed again by resume())
  const VirtualMemoryRange& range() const { return range_; }

  // Gives every block's physical memory back; the blocks keep their addresses, which fault until resume().
  // With keep_contents the bytes are first copied to host memory (pinned for CUDA) and resume() copies them back;
  // without, resume() gives zeros. A second release does nothing (the first one's keep_contents holds).
  void release(bool keep_contents);
  void resume();
  bool released() const { return range_.released(); }

 private:
  friend class Storage;
  MemoryArena(Device device, size_t capacity) : range_(device, capacity) {}
  void free_block(const uint8_t* data, size_t nbytes);  // by ~Storage

  // The bytes of a released arena, kept on the host until resume().
  struct HostCopy {
    Device device;  // of the arena: CUDA copies live in pinned memory
    uint8_t* data;
    size_t nbytes;
    ~HostCopy();
  };

  VirtualMemoryRange range_;
  std::map<size_t, size_t> free_blocks_;  // offset -> bytes, below end_
  size_t end_ = 0;                        // blocks lie in [0, end_)
  size_t used_ = 0;
  std::unique_ptr<HostCopy> offloaded_;
};

}  // namespace fp4serve
