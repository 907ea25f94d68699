// The CUDA backend of the releasable memory range (cuMemAddressReserve / cuMemCreate / cuMemMap): releasing a
// multi-hundred-MB range gives its memory back to the device (cudaMemGetInfo), resuming maps new memory at the same
// address, and copies and memsets work there before and after; the arena's offload keeps its bytes. Only the tensor
// layer's interface is used, so this builds (and skips) without the CUDA backend too.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "support/skip_without_gpu.h"
#include "tensor/cuda_memory.h"
#include "tensor/memory_arena.h"
#include "tensor/tensor.h"
#include "tensor/virtual_memory.h"

namespace fp4serve::test {
namespace {

constexpr size_t kRangeBytes = size_t{512} << 20;

std::vector<uint8_t> pattern(size_t bytes, uint8_t seed) {
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 20));
  return out;
}

std::vector<uint8_t> download(const uint8_t* device, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  copy_bytes(Device::CPU, out.data(), Device::CUDA, device, bytes);
  return out;
}

size_t free_device_bytes() { return cuda::device_memory_info().free_bytes; }

TEST(CudaMemoryRelease, ReleaseFreesDeviceMemoryAndResumeMapsItAtTheSameAddress) {
  FP4_SKIP_WITHOUT_GPU();
  VirtualMemoryRange range(Device::CUDA, kRangeBytes);
  uint8_t* const base = range.base();
  const size_t free_reserved = free_device_bytes();
  range.commit(kRangeBytes);
  const size_t free_committed = free_device_bytes();
  EXPECT_GE(free_reserved - free_committed, kRangeBytes);

  const std::vector<uint8_t> bytes = pattern(kRangeBytes, 5);
  copy_bytes(Device::CUDA, base, Device::CPU, bytes.data(), kRangeBytes);
  EXPECT_EQ(download(base, kRangeBytes), bytes);

  range.release();
  const size_t free_released = free_device_bytes();
  std::printf("cudaMemGetInfo free: %zu MiB reserved only, %zu MiB committed, %zu MiB released (range %zu MiB)\n",
              free_reserved >> 20, free_committed >> 20, free_released >> 20, kRangeBytes >> 20);
  EXPECT_GE(free_released - free_committed, kRangeBytes);
  range.release();  // twice: nothing happens
  EXPECT_EQ(free_device_bytes(), free_released);

  range.resume();
  EXPECT_EQ(range.base(), base);
  EXPECT_LE(free_device_bytes() + kRangeBytes, free_released + (size_t{2} << 20));
  EXPECT_EQ(download(base, kRangeBytes), std::vector<uint8_t>(kRangeBytes, 0));  // resumed memory is zeroed
  const std::vector<uint8_t> again = pattern(kRangeBytes, 11);
  copy_bytes(Device::CUDA, base, Device::CPU, again.data(), kRangeBytes);
  fill_zero(Device::CUDA, base + 4096, 4096);  // a device-side memset
  std::vector<uint8_t> expected = again;
  std::memset(expected.data() + 4096, 0, 4096);
  EXPECT_EQ(download(base, kRangeBytes), expected);
}

TEST(CudaMemoryRelease, ArenaOffloadRestoresEveryByteAtTheSameAddress) {
  FP4_SKIP_WITHOUT_GPU();
  auto arena = MemoryArena::create(Device::CUDA, size_t{256} << 20);
  Tensor weights = Tensor::empty({int64_t{200} << 20}, DType::U8, *arena);
  Tensor scales = Tensor::empty({4096}, DType::F32, *arena);
  const std::vector<uint8_t> weight_bytes = pattern(weights.nbytes(), 1);
  const std::vector<uint8_t> scale_bytes = pattern(scales.nbytes(), 2);
  copy_bytes(Device::CUDA, weights.raw(), Device::CPU, weight_bytes.data(), weights.nbytes());
  copy_bytes(Device::CUDA, scales.raw(), Device::CPU, scale_bytes.data(), scales.nbytes());
  uint8_t* const address = weights.raw();

  const size_t free_before = free_device_bytes();
  arena->release(/*keep_contents=*/true);
  EXPECT_GE(free_device_bytes() - free_before, weights.nbytes());
  arena->resume();
  EXPECT_EQ(weights.raw(), address);
  EXPECT_EQ(download(weights.raw(), weights.nbytes()), weight_bytes);
  EXPECT_EQ(download(scales.raw(), scales.nbytes()), scale_bytes);

  arena->release(/*keep_contents=*/false);
  arena->resume();
  EXPECT_EQ(download(scales.raw(), scales.nbytes()), std::vector<uint8_t>(scales.nbytes(), 0));
}

}  // namespace
}  // namespace fp4serve::test
