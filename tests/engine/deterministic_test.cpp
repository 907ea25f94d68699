// --deterministic on the CPU (README "Deterministic inference"), in every activation mode: every request of random
// batches, chunkings, prefix-cache states, preemptions and a reload is bitwise its single run
// (tests/support/batch_invariance.h). The CPU kernels are batch-invariant whether or not the flag is set; the
// large-batch session runs on every core and the rest on one thread, so the thread count is varied too.
#include <gtest/gtest.h>

#include "support/batch_invariance.h"

namespace fp4serve::test {
namespace {

class DeterministicTest : public ::testing::TestWithParam<ActQuant> {};

// Each mode serves large batches, one chunk size (the modes alternate between them) and a preempting session.
TEST_P(DeterministicTest, EveryRequestIsBitwiseItsSingleRunInAnyBatchChunkingAndCacheState) {
  using namespace batch_invariance;
  const SessionConfig& chunked = GetParam() == ActQuant::Static ? kPageChunks : kTinyChunks;
  check_sessions({.act_quant = GetParam(), .deterministic = true}, {kLargeBatches, chunked, kPreempting},
                 /*expect_invariant=*/true);
}

INSTANTIATE_TEST_SUITE_P(ActQuant, DeterministicTest,
                         ::testing::Values(ActQuant::None, ActQuant::Static, ActQuant::PerToken),
                         [](const ::testing::TestParamInfo<ActQuant>& info) {
                           std::string name(act_quant_name(info.param));  // "per-token": not a test name
                           std::erase(name, '-');
                           return name;
                         });

}  // namespace
}  // namespace fp4serve::test
