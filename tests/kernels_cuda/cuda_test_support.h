// Helpers of the MoE, activation-quantization and post-processing GPU tests, on top of nvfp4_test_util.h's guarded
// buffers and generator: the skip used on machines without a GPU, buffers that move std::vectors, bounded integers,
// and the check that an error message names the field at fault.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/device.h"
#include "nvfp4_test_util.h"
#include "support/skip_without_gpu.h"

namespace fp4serve::test {

// A guarded buffer that knows its size and moves whole std::vectors.
class DeviceBytes : public GuardedBuffer {
 public:
  explicit DeviceBytes(size_t bytes) : GuardedBuffer(bytes), bytes_(bytes) {}
  size_t size() const { return bytes_; }
  template <typename T>
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size() * sizeof(T), bytes_);
    GuardedBuffer::upload(host.data());
  }
  template <typename T>
  std::vector<T> download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    GuardedBuffer::download(host.data());
    return host;
  }

 private:
  size_t bytes_;
};

inline int64_t below(Random& random, int64_t n) { return static_cast<int64_t>(random.next() % static_cast<uint64_t>(n)); }

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
