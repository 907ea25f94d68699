// Shared helpers of the GPU kernel tests: a device buffer fenced by guard bytes (catches writes past either end),
// a fixed-seed generator, and the skip used on machines without a GPU.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/device.h"

namespace fp4serve::test {

#define FP4_SKIP_WITHOUT_GPU()  \
  if (cuda_device_count() == 0) \
  GTEST_SKIP() << "no CUDA device on this machine; GPU kernel tests run on the device machine"

inline void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(status));
}

class DeviceBytes {
 public:
  static constexpr size_t kGuard = 256;
  static constexpr uint8_t kGuardPattern = 0x5A;
  explicit DeviceBytes(size_t bytes) : bytes_(bytes) {
    cuda_ok(cudaMalloc(&base_, bytes + 2 * kGuard), "cudaMalloc");
    cuda_ok(cudaMemset(base_, kGuardPattern, bytes + 2 * kGuard), "cudaMemset");
  }
  ~DeviceBytes() { cudaFree(base_); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;

  template <typename T = uint8_t>
  T* get() const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(base_) + kGuard);
  }
  size_t size() const { return bytes_; }
  template <typename T>
  void upload(const std::vector<T>& host) {
    EXPECT_EQ(host.size() * sizeof(T), bytes_);
    cuda_ok(cudaMemcpy(get(), host.data(), bytes_, cudaMemcpyHostToDevice), "upload");
  }
  template <typename T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    cuda_ok(cudaMemcpy(host.data(), get(), bytes_, cudaMemcpyDeviceToHost), "download");
    return host;
  }
  void poison(uint8_t byte) { cuda_ok(cudaMemset(get(), byte, bytes_), "poison"); }
  bool guards_intact() const {
    std::vector<uint8_t> guard(kGuard);
    for (const uint8_t* start : {static_cast<const uint8_t*>(base_), static_cast<const uint8_t*>(get() + bytes_)}) {
      cuda_ok(cudaMemcpy(guard.data(), start, kGuard, cudaMemcpyDeviceToHost), "guard download");
      if (std::any_of(guard.begin(), guard.end(), [](uint8_t b) { return b != kGuardPattern; })) return false;
    }
    return true;
  }

 private:
  void* base_ = nullptr;
  size_t bytes_;
};

// splitmix64.
class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
  float uniform() { return static_cast<float>(next() >> 40) * 0x1p-24f; }  // [0, 1)
  float normal() { return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f; }

 private:
  uint64_t state_;
};

// Expects `call` to throw fp4serve::Error whose message contains `needle`.
template <typename Call>
void expect_error_naming(Call&& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "accepted; expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace fp4serve::test
