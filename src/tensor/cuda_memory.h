// The few CUDA runtime calls the tensor layer needs, behind a plain C++ interface (implemented in
// cuda_memory.cu; a CPU-only build gets versions that refuse with a clear error).
#pragma once
#include <cstddef>

namespace fp4serve::cuda {

void* device_alloc_zeroed(size_t nbytes);
void device_free(void* ptr) noexcept;
enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };
void memcpy_sync(void* dst, const void* src, size_t nbytes, CopyKind kind);
void memset_zero_sync(void* dst, size_t nbytes);

}  // namespace fp4serve::cuda
