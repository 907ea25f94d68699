// The few CUDA runtime and driver calls the tensor layer needs, behind a plain C++ interface (implemented in
// cuda_memory.cu; a CPU-only build gets versions that refuse with a clear error).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fp4serve::cuda {

void* device_alloc_zeroed(size_t nbytes);
void device_free(void* ptr) noexcept;
enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };
void memcpy_sync(void* dst, const void* src, size_t nbytes, CopyKind kind);
void memset_zero_sync(void* dst, size_t nbytes);

// Page-locked host memory (fast, asynchronous-capable copies to and from the device).
void* pinned_host_alloc(size_t nbytes);
void pinned_host_free(void* ptr) noexcept;

// Host-to-device copies through `n_buffers` page-locked buffers of `buffer_bytes`, on a stream of its own: the
// caller fills buffer() (e.g. reads a file into it) while the earlier buffers' copies run, then upload() enqueues it
// and moves on to the next buffer, waiting first for that buffer's previous copy. finish() (and the destructor) wait
// for every copy. The weight loader streams checkpoints to the GPU this way (double-buffered, bounded).
class PinnedUploader {
 public:
  PinnedUploader(size_t buffer_bytes, int n_buffers);
  ~PinnedUploader();
  PinnedUploader(const PinnedUploader&) = delete;
  PinnedUploader& operator=(const PinnedUploader&) = delete;

  uint8_t* buffer();  // buffer_bytes() writable bytes, not being copied from
  size_t buffer_bytes() const { return buffer_bytes_; }
  void upload(void* device_dst, size_t nbytes);  // the first nbytes (<= buffer_bytes()) of buffer()
  void finish();

 private:
  struct Slot;
  void release() noexcept;
  size_t buffer_bytes_;
  Slot* slots_;
  int n_slots_, current_ = 0;
  void* stream_ = nullptr;
};

// cudaMemGetInfo of the current device.
struct DeviceMemoryInfo {
  size_t free_bytes;
  size_t total_bytes;
};
DeviceMemoryInfo device_memory_info();

// CUDA IPC: another process's device allocation (the 64-byte cudaIpcMemHandle_t it exported), mapped into this
// process on the current device (cudaIpcMemLazyEnablePeerAccess) until ipc_close(base).
inline constexpr size_t kIpcHandleBytes = 64;
void* ipc_open(const uint8_t* handle);
void ipc_close(void* base);

// The virtual memory management API of the driver (reached through the runtime's entry point, so nothing links
// libcuda), for tensor/virtual_memory.h. Sizes and addresses must be multiples of vm_granularity().
size_t vm_granularity();                                  // of device memory on the current device
void* vm_reserve(size_t nbytes);                          // an address range with nothing mapped
void vm_free_reservation(void* base, size_t nbytes) noexcept;
uint64_t vm_map_new(void* at, size_t nbytes);             // new physical memory mapped read/write at `at`; its handle
void vm_unmap(void* at, size_t nbytes, uint64_t handle);  // unmapped, and its physical memory freed

}  // namespace fp4serve::cuda
