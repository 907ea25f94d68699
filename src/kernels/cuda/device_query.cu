#include <stdexcept>
#include <string>

#include "common/error.h"
#include "kernels/cuda/cuda_check.cuh"

namespace fp4serve::cuda {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ") in " +
              call + " at " + file + ":" + std::to_string(line));
}

int device_count() {
  int count = 0;
  // No driver or no GPU is a normal situation on CPU machines: report 0 and clear the sticky error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  FP4_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

}  // namespace fp4serve::cuda
