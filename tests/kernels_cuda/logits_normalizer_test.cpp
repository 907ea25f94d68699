// The GPU's per-row log-softmax normalizer against a float64 reference (relative error <= 1e-5 of max(1, |value|)):
// random rows of odd vocabulary sizes (1, 7, 301, 151936), rows with -inf entries, one finite logit among -inf,
// large logits (exp would overflow without the max shift), fresh data per case; and each row's value bitwise the same
// alone as in a batch of 37 rows (batch invariance). Output poisoned and fenced by guard bytes.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_test_support.h"
#include "format/bf16.h"
#include "kernels/cuda/logits_normalizer.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(LogitsNormalizerCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

std::vector<float> normalizers_on_gpu(const std::vector<bf16_bits>& logits, int64_t rows, int64_t vocab) {
  DeviceBytes logits_device(logits.size() * sizeof(bf16_bits)), out(static_cast<size_t>(rows) * sizeof(float));
  logits_device.upload(logits);
  out.fill(0xFF);  // NaN
  cuda::logits_log_normalizer_cuda(logits_device.data<bf16_bits>(), rows, vocab, out.data<float>(), nullptr);
  check_cuda(cudaDeviceSynchronize(), "log normalizer");
  EXPECT_TRUE(out.guards_intact());
  return out.download<float>();
}

double reference(const bf16_bits* row, int64_t vocab) {
  double max = -INFINITY;
  for (int64_t v = 0; v < vocab; ++v) max = std::max(max, static_cast<double>(bf16_to_float(row[v])));
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(bf16_to_float(row[v])) - max);
  return max + std::log(sum);
}

TEST(LogitsNormalizerCuda, MatchesFloat64ReferenceOnOddVocabulariesAndEdgeRows) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(2026);
  for (const int64_t vocab : {int64_t{1}, int64_t{7}, int64_t{301}, int64_t{151936}}) {
    const int64_t rows = 5;
    std::vector<bf16_bits> logits(static_cast<size_t>(rows * vocab));
    for (auto& l : logits) l = float_to_bf16(4.0f * random.normal());
    bf16_bits* row = logits.data();
    for (int64_t v = 0; v < vocab; v += 3) row[v] = float_to_bf16(-INFINITY);  // row 0: every third masked
    row[vocab - 1] = float_to_bf16(2.5f);
    row += vocab;
    for (int64_t v = 0; v < vocab; ++v) row[v] = float_to_bf16(v == vocab / 2 ? 1.0f : -INFINITY);  // row 1
    row += vocab;
    for (int64_t v = 0; v < vocab; ++v) row[v] = float_to_bf16(3000.0f + random.normal());  // row 2: large
    const std::vector<float> got = normalizers_on_gpu(logits, rows, vocab);
    for (int64_t r = 0; r < rows; ++r) {
      const double expected = reference(logits.data() + r * vocab, vocab);
      EXPECT_NEAR(got[r], expected, 1e-5 * std::max(1.0, std::abs(expected))) << "vocab " << vocab << ", row " << r;
    }
  }
}

TEST(LogitsNormalizerCuda, ARowGivesTheSameBitsAloneAsInABatch) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(77);
  const int64_t rows = 37, vocab = 151936;
  std::vector<bf16_bits> logits(static_cast<size_t>(rows * vocab));
  for (auto& l : logits) l = float_to_bf16(3.0f * random.normal());
  const std::vector<float> batched = normalizers_on_gpu(logits, rows, vocab);
  for (const int64_t r : {int64_t{0}, int64_t{17}, rows - 1}) {
    const std::vector<bf16_bits> alone(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    const float single = normalizers_on_gpu(alone, 1, vocab)[0];
    EXPECT_EQ(std::memcmp(&single, &batched[r], sizeof(float)), 0) << "row " << r;
  }
}

#endif

}  // namespace
}  // namespace fp4serve::test
