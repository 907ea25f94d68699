#include "kernels/cuda/cuda_check.cuh"
#include "tensor/cuda_memory.h"

namespace fp4serve::cuda {

void* device_alloc_zeroed(size_t nbytes) {
  void* ptr = nullptr;
  FP4_CUDA_CHECK(cudaMalloc(&ptr, nbytes == 0 ? 1 : nbytes));
  FP4_CUDA_CHECK(cudaMemset(ptr, 0, nbytes));
  return ptr;
}

void device_free(void* ptr) noexcept { cudaFree(ptr); }

void memcpy_sync(void* dst, const void* src, size_t nbytes, CopyKind kind) {
  cudaMemcpyKind k = kind == CopyKind::HostToDevice   ? cudaMemcpyHostToDevice
                     : kind == CopyKind::DeviceToHost ? cudaMemcpyDeviceToHost
                                                      : cudaMemcpyDeviceToDevice;
  FP4_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, k));
}

void memset_zero_sync(void* dst, size_t nbytes) { FP4_CUDA_CHECK(cudaMemset(dst, 0, nbytes)); }

}  // namespace fp4serve::cuda
