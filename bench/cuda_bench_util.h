// Timing helpers of the CUDA benchmarks: checked CUDA and cuBLAS calls, device allocation, the median time of one launch over CUDA
// graph replays, and the device-to-device copy bandwidth that kernels are compared against (read + write bytes).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace fp4serve::bench {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}
inline void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": " + cublasGetStatusString(status));
}

template <typename T>
T* device_alloc(size_t count) {
  void* p = nullptr;
  check(cudaMalloc(&p, count * sizeof(T)), "cudaMalloc");
  return static_cast<T*>(p);
}

inline constexpr int kTimedReplays = 7;

// Median time of one launch in us: `launch(i)` for i in [0, launches) is captured once as a graph and replayed
// kTimedReplays times.
inline double median_graph_us(cudaStream_t stream, int launches, const std::function<void(int)>& launch) {
  launch(0);  // outside the capture: first-use setup (function attributes, workspaces)
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  for (int i = 0; i < launches; ++i) launch(i);
  check(cudaStreamEndCapture(stream, &graph), "end capture");
  check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  check(cudaGraphLaunch(exec, stream), "graph warm-up");
  std::vector<double> times;
  for (int r = 0; r < kTimedReplays; ++r) {
    check(cudaEventRecord(start, stream), "record");
    check(cudaGraphLaunch(exec, stream), "graph launch");
    check(cudaEventRecord(stop, stream), "record");
    check(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    times.push_back(ms * 1000.0 / launches);
  }
  check(cudaEventDestroy(start), "event");
  check(cudaEventDestroy(stop), "event");
  check(cudaGraphExecDestroy(exec), "graph");
  check(cudaGraphDestroy(graph), "graph");
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// GB/s of a 1 GiB device-to-device copy, counting the bytes read and written.
inline double copy_bandwidth_gbs(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  uint8_t* a = device_alloc<uint8_t>(bytes);
  uint8_t* b = device_alloc<uint8_t>(bytes);
  check(cudaMemsetAsync(a, 1, bytes, stream), "memset");
  const double us = median_graph_us(
      stream, 4, [&](int) { check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream), "copy"); });
  check(cudaFree(a), "free");
  check(cudaFree(b), "free");
  return 2.0 * static_cast<double>(bytes) / us / 1e3;
}

}  // namespace fp4serve::bench
