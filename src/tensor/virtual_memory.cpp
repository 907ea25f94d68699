#include "tensor/virtual_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "tensor/cuda_memory.h"

namespace fp4serve {

namespace {

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

size_t host_page_size() { return static_cast<size_t>(sysconf(_SC_PAGE_SIZE)); }

// PROT_NONE and MAP_NORESERVE: address space only, no memory and no commit charge.
constexpr int kReservedProtection = PROT_NONE;
constexpr int kReservedFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

}  // namespace

size_t device_memory_bytes(Device device) {
  if (device == Device::CUDA) return cuda::device_memory_info().total_bytes;
  return static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * host_page_size();
}

VirtualMemoryRange::VirtualMemoryRange(Device device, size_t capacity) : device_(device) {
  granularity_ = device == Device::CPU ? host_page_size() : cuda::vm_granularity();
  capacity_ = round_up(capacity == 0 ? 1 : capacity, granularity_);
  if (device == Device::CPU) {
    void* base = mmap(nullptr, capacity_, kReservedProtection, kReservedFlags, -1, 0);
    FP4_CHECK(base != MAP_FAILED, "cannot reserve {} bytes of address space: {}", capacity_, std::strerror(errno));
    base_ = static_cast<uint8_t*>(base);
  } else {
    base_ = static_cast<uint8_t*>(cuda::vm_reserve(capacity_));
  }
}

VirtualMemoryRange::~VirtualMemoryRange() {
  if (device_ == Device::CPU) {
    munmap(base_, capacity_);
    return;
  }
  try {
    release();
  } catch (const std::exception&) {
    // A device that failed already: the reservation is still given back below.
  }
  cuda::vm_free_reservation(base_, capacity_);
}

void VirtualMemoryRange::back(size_t offset, size_t bytes) {
  if (bytes == 0) return;
  if (device_ == Device::CPU) {
    // Untouched anonymous pages read zero; they take memory only once written.
    FP4_CHECK(mprotect(base_ + offset, bytes, PROT_READ | PROT_WRITE) == 0, "cannot commit {} bytes of host memory: {}",
              bytes, std::strerror(errno));
    return;
  }
  const uint64_t handle = cuda::vm_map_new(base_ + offset, bytes);
  chunks_.push_back({.offset = offset, .bytes = bytes, .handle = handle});
  cuda::memset_zero_sync(base_ + offset, bytes);  // new physical memory holds whatever it held before
}

void VirtualMemoryRange::commit(size_t nbytes) {
  FP4_CHECK(!released_, "cannot commit memory in a released range; resume it first");
  FP4_CHECK(nbytes <= capacity_, "cannot commit {} bytes in a range of {} reserved bytes", nbytes, capacity_);
  const size_t target = round_up(nbytes, granularity_);
  if (target <= committed_) return;
  back(committed_, target - committed_);
  committed_ = target;
}

// CPU: mapping fresh PROT_NONE pages over the range with MAP_FIXED drops its pages and their commit charge in one
// call, and the range never stops being mapped, so no other mmap can take the addresses in between. madvise
// (MADV_DONTNEED) + mprotect(PROT_NONE) frees the pages too, but in two steps and keeping the commit charge.
void VirtualMemoryRange::release() {
  if (released_) return;
  if (device_ == Device::CPU) {
    if (committed_ > 0)
      FP4_CHECK(mmap(base_, committed_, kReservedProtection, kReservedFlags | MAP_FIXED, -1, 0) == base_,
                "cannot release {} bytes of host memory: {}", committed_, std::strerror(errno));
  } else {
    while (!chunks_.empty()) {
      const PhysicalChunk& chunk = chunks_.back();
      cuda::vm_unmap(base_ + chunk.offset, chunk.bytes, chunk.handle);
      chunks_.pop_back();
    }
  }
  released_ = true;
}

void VirtualMemoryRange::resume() {
  if (!released_) return;
  try {
    back(0, committed_);
  } catch (const std::exception&) {
    // Out of device memory, say: stay released, with nothing half mapped, so that resume() can be tried again.
    released_ = false;
    release();
    throw;
  }
  released_ = false;
}

}  // namespace fp4serve
