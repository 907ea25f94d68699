// Every CUDA runtime / cuBLAS return code is checked; a failure throws fp4serve::Error naming the call and place.
// (fmt's compile-time format checks do not build under nvcc, so .cu files report through this plain function.)
#pragma once
#include <cuda_runtime.h>

namespace fp4serve::cuda {
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);
}  // namespace fp4serve::cuda

#define FP4_CUDA_CHECK(call)                                                                  \
  do {                                                                                         \
    cudaError_t fp4_status_ = (call);                                                          \
    if (fp4_status_ != cudaSuccess)                                                            \
      ::fp4serve::cuda::throw_cuda_error(fp4_status_, #call, __FILE__, __LINE__);              \
  } while (0)
