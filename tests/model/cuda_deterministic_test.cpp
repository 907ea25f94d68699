// --deterministic on the GPU (README "Deterministic inference"): every request of random batches, chunkings,
// prefix-cache states, preemptions and a same-checkpoint reload is bitwise its single run on the CUDA forward
// (tests/support/batch_invariance.h; W4A16, the GPU's only NVFP4 mode). The same sessions without the flag are run
// too and their differences printed, not asserted: the fast paths make no such promise, and the number shows what the
// flag changes. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/device.h"
#include "support/batch_invariance.h"

namespace fp4serve::test {
namespace {

TEST(CudaDeterministic, EveryRequestIsBitwiseItsSingleRunInAnyBatchChunkingAndCacheState) {
  if (cuda_device_count() == 0)
    GTEST_SKIP() << "no CUDA device on this machine; the GPU determinism test runs on the device machine";
  using namespace batch_invariance;
  const std::vector<SessionConfig> sessions{kLargeBatches, kTinyChunks, kPageChunks, kPreempting};
  const QuantOptions deterministic{.act_quant = ActQuant::None, .device = Device::CUDA, .deterministic = true};
  check_sessions(deterministic, sessions, /*expect_invariant=*/true);

  QuantOptions fast = deterministic;
  fast.deterministic = false;
  const int differences = check_sessions(fast, sessions, /*expect_invariant=*/false);
  std::printf("without --deterministic: %d of %zu served results differ from their single run\n", differences,
              (sessions.size() + 1) * kRequests);
}

}  // namespace
}  // namespace fp4serve::test
