// Which compute devices this build and this machine offer. CPU code asks here instead of touching CUDA headers.
#pragma once
#include <string>

namespace fp4serve {

bool cuda_built();            // compiled with the CUDA backend
int cuda_device_count();      // 0 when not built with CUDA or no usable GPU/driver
std::string cuda_device_name(int device);  // "" when unavailable

}  // namespace fp4serve
