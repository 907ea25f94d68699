// The skip every GPU test starts with on machines without a GPU or builds without the CUDA backend (needs no CUDA
// header, so tests that only use the tensor layer's interface build without the CUDA backend too).
#pragma once
#include <gtest/gtest.h>

#include "kernels/device.h"

#define FP4_SKIP_WITHOUT_GPU()                                                                     \
  if (cuda_device_count() == 0)                                                                    \
  GTEST_SKIP() << (cuda_built() ? "no CUDA device on this machine" : "this build has no CUDA backend") \
               << "; GPU tests run on the device machine"
