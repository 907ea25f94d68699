// Storage: one owned byte buffer on one device, shared by every tensor (and every parameter name) viewing it.
// Its address never changes for its lifetime: in-place writes keep pointers that CUDA graphs captured valid. It is
// either allocated on its own or a block of a MemoryArena (memory_arena.h), whose memory can be released and
// resumed at the same addresses.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace fp4serve {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device device);

class MemoryArena;

class Storage {
 public:
  // Zero-filled, on its own. CUDA storage needs a CUDA build and a GPU, else throws.
  static std::shared_ptr<Storage> allocate(Device device, size_t nbytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  uint8_t* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  friend class MemoryArena;
  Storage(Device device, uint8_t* data, size_t nbytes) : device_(device), data_(data), nbytes_(nbytes) {}
  Device device_;
  uint8_t* data_;
  size_t nbytes_;
  std::shared_ptr<MemoryArena> arena_;  // the arena the block belongs to; null for storage on its own
};

// Byte copies between any two devices (host<->device, device<->device, host<->host). Synchronous.
void copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, size_t nbytes);
void fill_zero(Device device, void* dst, size_t nbytes);

}  // namespace fp4serve
