#include "kernels/device.h"

#include <string>

#include "common/error.h"

#ifdef FP4SERVE_HAVE_CUDA
namespace fp4serve::cuda {
int device_count();
std::string device_name(int device);
}  // namespace fp4serve::cuda
#endif

namespace fp4serve {

#ifdef FP4SERVE_HAVE_CUDA
bool cuda_built() { return true; }
int cuda_device_count() { return cuda::device_count(); }
std::string cuda_device_name(int device) { return cuda_device_count() > device ? cuda::device_name(device) : ""; }
#else
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_name(int) { return ""; }
#endif

Device parse_device(std::string_view name) {
  if (name == "cpu") return Device::CPU;
  FP4_CHECK(name == "cuda", "--device {}: expected cpu or cuda", name);
  FP4_CHECK(cuda_device_count() > 0, "--device cuda: {}",
            cuda_built() ? "no usable CUDA device was found" : "this build has no CUDA backend");
  return Device::CUDA;
}

}  // namespace fp4serve
