#include "kernels/device.h"

#include <gtest/gtest.h>

namespace fp4serve {

TEST(CudaDevice, ReportsADeviceWhenOneIsPresent) {
  if (cuda_device_count() == 0)
    GTEST_SKIP() << "no CUDA device on this machine (built with CUDA: " << (cuda_built() ? "yes" : "no")
                 << "); GPU tests run on the device machine";
  EXPECT_FALSE(cuda_device_name(0).empty());
}

}  // namespace fp4serve
