#include "tensor/storage.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "common/error.h"
#include "tensor/cuda_memory.h"
#include "tensor/memory_arena.h"

namespace fp4serve {

#ifndef FP4SERVE_HAVE_CUDA
namespace cuda {
// CPU-only build: every CUDA request is refused with the reason.
[[noreturn]] static void no_cuda() { fail("this fp4serve was built without CUDA; rebuild where nvcc is available"); }
void* device_alloc_zeroed(size_t) { no_cuda(); }
void device_free(void*) noexcept {}
void memcpy_sync(void*, const void*, size_t, CopyKind) { no_cuda(); }
void memset_zero_sync(void*, size_t) { no_cuda(); }
void* pinned_host_alloc(size_t) { no_cuda(); }
void pinned_host_free(void*) noexcept {}
PinnedUploader::PinnedUploader(size_t, int) { no_cuda(); }
PinnedUploader::~PinnedUploader() = default;
uint8_t* PinnedUploader::buffer() { no_cuda(); }
void PinnedUploader::upload(void*, size_t) { no_cuda(); }
void PinnedUploader::finish() { no_cuda(); }
DeviceMemoryInfo device_memory_info() { no_cuda(); }
void* ipc_open(const uint8_t*) { no_cuda(); }
void ipc_close(void*) { no_cuda(); }
size_t vm_granularity() { no_cuda(); }
void* vm_reserve(size_t) { no_cuda(); }
void vm_free_reservation(void*, size_t) noexcept {}
uint64_t vm_map_new(void*, size_t) { no_cuda(); }
void vm_unmap(void*, size_t, uint64_t) { no_cuda(); }
}  // namespace cuda
#endif

std::string_view device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

namespace {
constexpr size_t kHostAlignment = 64;  // a cache line / AVX-512 vector
}

std::shared_ptr<Storage> Storage::allocate(Device device, size_t nbytes) {
  uint8_t* data = nullptr;
  if (device == Device::CPU) {
    size_t rounded = (nbytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    data = static_cast<uint8_t*>(std::aligned_alloc(kHostAlignment, rounded == 0 ? kHostAlignment : rounded));
    if (data == nullptr) fail("out of host memory allocating {} bytes", nbytes);
    std::memset(data, 0, rounded);
  } else {
    data = static_cast<uint8_t*>(cuda::device_alloc_zeroed(nbytes));
  }
  return std::shared_ptr<Storage>(new Storage(device, data, nbytes));
}

Storage::~Storage() {
  if (arena_)
    arena_->free_block(data_, nbytes_);
  else if (device_ == Device::CPU)
    std::free(data_);
  else
    cuda::device_free(data_);
}

void copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device == Device::CPU && src_device == Device::CPU) {
    std::memmove(dst, src, nbytes);
    return;
  }
  auto kind = dst_device == Device::CPU   ? cuda::CopyKind::DeviceToHost
              : src_device == Device::CPU ? cuda::CopyKind::HostToDevice
                                          : cuda::CopyKind::DeviceToDevice;
  cuda::memcpy_sync(dst, src, nbytes, kind);
}

void fill_zero(Device device, void* dst, size_t nbytes) {
  if (device == Device::CPU)
    std::memset(dst, 0, nbytes);
  else
    cuda::memset_zero_sync(dst, nbytes);
}

}  // namespace fp4serve
