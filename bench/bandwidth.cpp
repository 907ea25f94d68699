// The GPU machine's copy bandwidths, the yardsticks of issue 8's load, reload and decode numbers: device-to-device
// (read + write bytes, what decode floors divide by), pinned and pageable host-to-device of a 1 GiB buffer (what a
// weight load from page cache can reach at best). Medians of event-timed repeats; prints a markdown table.
//   bench_bandwidth
#include <cstdio>

#ifndef FP4SERVE_HAVE_CUDA
int main() {
  std::puts("bench_bandwidth: built without the CUDA backend (FP4SERVE_CUDA=OFF); nothing to measure");
  return 0;
}
#else
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "bench/cuda_bench_util.h"

namespace fp4serve::bench {
namespace {

constexpr size_t kHostCopyBytes = size_t{1} << 30;
constexpr int kHostCopyRepeats = 5;

// GB/s of one host-to-device copy of `bytes` from `host`, the median of kHostCopyRepeats event-timed copies.
double host_to_device_gbs(const uint8_t* host, size_t bytes, cudaStream_t stream) {
  uint8_t* device = device_alloc<uint8_t>(bytes);
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream), "warm-up copy");
  std::vector<double> gbs;
  for (int r = 0; r < kHostCopyRepeats; ++r) {
    check(cudaEventRecord(start, stream), "record");
    check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream), "copy");
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    gbs.push_back(static_cast<double>(bytes) / (ms * 1e-3) / 1e9);
  }
  check(cudaEventDestroy(start), "event");
  check(cudaEventDestroy(stop), "event");
  check(cudaFree(device), "free");
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

void run() {
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "stream");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, 0), "device properties");
  const double d2d = copy_bandwidth_gbs(stream);

  uint8_t* pinned = nullptr;
  check(cudaMallocHost(&pinned, kHostCopyBytes), "cudaMallocHost");
  std::memset(pinned, 1, kHostCopyBytes);  // touched, so no page faults are timed
  const double pinned_gbs = host_to_device_gbs(pinned, kHostCopyBytes, stream);
  check(cudaFreeHost(pinned), "cudaFreeHost");
  std::vector<uint8_t> pageable(kHostCopyBytes, 1);
  const double pageable_gbs = host_to_device_gbs(pageable.data(), kHostCopyBytes, stream);
  check(cudaStreamDestroy(stream), "stream");

  std::printf("## copy bandwidth, %s\n\n", prop.name);
  std::printf("| copy | GB/s |\n|---|---|\n");
  std::printf("| device-to-device (1 GiB, read + write bytes) | %.1f |\n", d2d);
  std::printf("| pinned host-to-device (1 GiB) | %.1f |\n", pinned_gbs);
  std::printf("| pageable host-to-device (1 GiB) | %.1f |\n", pageable_gbs);
}

}  // namespace
}  // namespace fp4serve::bench

int main() {
  try {
    fp4serve::bench::run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_bandwidth: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif
