// Embedding gather on the GPU against embedding_lookup_cpu, bit for bit (a gather is exact), with repeated ids, the
// first and last rows, and ids outside the vocabulary (their rows NaN, nothing read outside the table). Output
// poisoned and fenced by guard bytes.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_test_support.h"
#include "format/bf16.h"
#include "gpu_ops_test_util.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cuda/embedding.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(EmbeddingCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

struct Gathered {
  std::vector<bf16_bits> out;
  bool guards_intact;
};

Gathered gather(const std::vector<bf16_bits>& table, int64_t vocab, int64_t hidden, const std::vector<int32_t>& ids) {
  DeviceBytes table_device(table.size() * 2), ids_device(ids.size() * 4), out(ids.size() * hidden * 2);
  table_device.upload(table);
  ids_device.upload(ids);
  out.fill(0x5a);
  cuda::embedding_lookup_cuda(table_device.data<bf16_bits>(), vocab, hidden, ids_device.data<int32_t>(),
                              static_cast<int64_t>(ids.size()), out.data<bf16_bits>(), nullptr);
  check_cuda(cudaDeviceSynchronize(), "embedding");
  return {out.download<bf16_bits>(), out.guards_intact() && table_device.guards_intact()};
}

TEST(EmbeddingCuda, MatchesCpuBitForBit) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(41);
  // A small vocabulary with Qwen3-30B-A3B's hidden size, and the narrowest supported row.
  for (const auto& [vocab, hidden] : {std::pair<int64_t, int64_t>{1000, 2048}, {37, 8}}) {
    std::vector<bf16_bits> table(static_cast<size_t>(vocab * hidden));
    for (auto& x : table) x = float_to_bf16(random.normal());
    std::vector<int32_t> ids = {0, static_cast<int32_t>(vocab - 1), 5, 5};
    for (int i = 0; i < 60; ++i) ids.push_back(static_cast<int32_t>(below(random, vocab)));
    std::vector<float> reference(ids.size() * hidden);
    embedding_lookup_cpu(table.data(), vocab, hidden, ids.data(), static_cast<int64_t>(ids.size()), reference.data());
    const Gathered got = gather(table, vocab, hidden, ids);
    EXPECT_TRUE(got.guards_intact);
    EXPECT_TRUE(widened(got.out) == reference) << "vocab " << vocab << ", hidden " << hidden;
  }
}

TEST(EmbeddingCuda, IdsOutsideTheVocabularyGiveNanRows) {
  FP4_SKIP_WITHOUT_GPU();
  const int64_t vocab = 16, hidden = 64;
  std::vector<bf16_bits> table(static_cast<size_t>(vocab * hidden));
  for (size_t i = 0; i < table.size(); ++i) table[i] = float_to_bf16(static_cast<float>(i % 251));
  const std::vector<int32_t> ids = {3, -1, 16, 1 << 30, 15};
  const Gathered got = gather(table, vocab, hidden, ids);
  EXPECT_TRUE(got.guards_intact);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t i = 0; i < hidden; ++i) {
      const float value = bf16_to_float(got.out[t * hidden + i]);
      if (ids[t] >= 0 && ids[t] < vocab)
        ASSERT_EQ(value, bf16_to_float(table[ids[t] * hidden + i])) << "token " << t;
      else
        ASSERT_TRUE(std::isnan(value)) << "token " << t << " with id " << ids[t] << ", element " << i;
    }
}

TEST(EmbeddingCuda, RejectsBadArgumentsNamingTheField) {
  FP4_SKIP_WITHOUT_GPU();
  DeviceBytes buffer(4096);
  bf16_bits* p = buffer.data<bf16_bits>();
  const int32_t* ids = buffer.data<int32_t>();
  expect_error_naming([&] { cuda::embedding_lookup_cuda(p, 4, 12, ids, 1, p, nullptr); }, "hidden = 12");
  expect_error_naming([&] { cuda::embedding_lookup_cuda(p, 0, 16, ids, 1, p, nullptr); }, "vocab = 0");
  expect_error_naming([&] { cuda::embedding_lookup_cuda(p + 1, 4, 16, ids, 1, p, nullptr); }, "table and out");
  expect_error_naming([&] { cuda::embedding_lookup_cuda(p, 4, 16, nullptr, 1, p, nullptr); }, "ids");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
