// Which compute devices this build and this machine offer. CPU code asks here instead of touching CUDA headers.
#pragma once
#include <string>
#include <string_view>

#include "tensor/storage.h"

namespace fp4serve {

bool cuda_built();            // compiled with the CUDA backend
int cuda_device_count();      // 0 when not built with CUDA or no usable GPU/driver
std::string cuda_device_name(int device);  // "" when unavailable
// A --device flag: "cpu", or "cuda" where this build and machine have a GPU; else throws naming the flag.
Device parse_device(std::string_view name);

}  // namespace fp4serve
