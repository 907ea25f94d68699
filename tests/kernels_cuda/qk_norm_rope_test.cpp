// Fused q/k-norm + RoPE on the GPU against the CPU's two steps (rmsnorm_cpu per head, then rope_neox_cpu), in place
// on views into a fused q|k|v row: v and the other columns must stay bit-identical. Positions include 0, page-sized
// steps and ones far out (40000, where fp32 angles would lose the digits the double angle keeps). Fresh random data
// per case; buffers fenced by guard bytes.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "format/bf16.h"
#include "gpu_ops_test_util.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/qk_norm_rope.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(QkNormRopeCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

// One bf16 step of the normalized value can move the rotated pair by a step of either input: relative to the head's
// scale (about 1 after the norm), not to the possibly cancelling output.
constexpr double kRelative = 0x1p-6, kAbsolute = 0x1p-7;

struct Config {
  int64_t n_heads, n_kv_heads, head_dim;
  double theta;
};
// Qwen3-30B-A3B (32 q / 4 kv heads, 128, theta 1e6); a small model with head_dim 64 and theta 1e4.
const Config kConfigs[] = {{32, 4, 128, 1e6}, {8, 2, 64, 1e4}};

// Runs both backends on n_tokens rows of a fused q|k|v buffer and compares q and k; v must be untouched.
void expect_matches_cpu(const Config& c, const std::vector<int32_t>& positions, Random& random) {
  const int64_t n_tokens = static_cast<int64_t>(positions.size()), d = c.head_dim;
  const int64_t q_size = c.n_heads * d, kv_size = c.n_kv_heads * d, stride = q_size + 2 * kv_size;
  std::vector<bf16_bits> qkv(static_cast<size_t>(n_tokens * stride)), q_weight(d), k_weight(d);
  for (auto& x : qkv) x = float_to_bf16(3.0f * random.normal());
  for (auto& x : q_weight) x = float_to_bf16(1.0f + 0.3f * random.normal());
  for (auto& x : k_weight) x = float_to_bf16(1.0f + 0.3f * random.normal());

  std::vector<float> q(static_cast<size_t>(n_tokens * q_size)), k(static_cast<size_t>(n_tokens * kv_size));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t i = 0; i < q_size; ++i) q[t * q_size + i] = bf16_to_float(qkv[t * stride + i]);
    for (int64_t i = 0; i < kv_size; ++i) k[t * kv_size + i] = bf16_to_float(qkv[t * stride + q_size + i]);
  }
  const float eps = 1e-6f;
  rmsnorm_cpu(q.data(), q_weight.data(), n_tokens * c.n_heads, d, eps, q.data());
  rmsnorm_cpu(k.data(), k_weight.data(), n_tokens * c.n_kv_heads, d, eps, k.data());
  rope_neox_cpu(q.data(), positions.data(), n_tokens, c.n_heads, d, c.theta);
  rope_neox_cpu(k.data(), positions.data(), n_tokens, c.n_kv_heads, d, c.theta);

  DeviceBytes rows(qkv.size() * 2), qw(q_weight.size() * 2), kw(k_weight.size() * 2), pos(positions.size() * 4);
  rows.upload(qkv);
  qw.upload(q_weight);
  kw.upload(k_weight);
  pos.upload(positions);
  bf16_bits* base = rows.data<bf16_bits>();
  cuda::qk_norm_rope_cuda({.q = base,
                           .q_row_stride = stride,
                           .n_heads = c.n_heads,
                           .k = base + q_size,
                           .k_row_stride = stride,
                           .n_kv_heads = c.n_kv_heads,
                           .head_dim = d,
                           .q_norm_weight = qw.data<bf16_bits>(),
                           .k_norm_weight = kw.data<bf16_bits>(),
                           .positions = pos.data<int32_t>(),
                           .n_tokens = n_tokens,
                           .eps = eps,
                           .theta = c.theta});
  check_cuda(cudaDeviceSynchronize(), "qk_norm_rope");
  EXPECT_TRUE(rows.guards_intact());
  const std::vector<bf16_bits> got = rows.download<bf16_bits>();
  std::vector<bf16_bits> got_q, got_k;
  for (int64_t t = 0; t < n_tokens; ++t) {
    got_q.insert(got_q.end(), got.begin() + t * stride, got.begin() + t * stride + q_size);
    got_k.insert(got_k.end(), got.begin() + t * stride + q_size, got.begin() + t * stride + q_size + kv_size);
    for (int64_t i = q_size + kv_size; i < stride; ++i)
      ASSERT_EQ(got[t * stride + i], qkv[t * stride + i]) << "v of token " << t << " was modified";
  }
  const std::string what = "heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) + " dim " +
                           std::to_string(d) + ", " + std::to_string(n_tokens) + " tokens";
  const int64_t different = expect_bf16_near(got_q, q, kRelative, kAbsolute, what + " (q)") +
                            expect_bf16_near(got_k, k, kRelative, kAbsolute, what + " (k)");
  EXPECT_LE(different, static_cast<int64_t>(q.size() + k.size()) / 100 + 2) << what;
}

TEST(QkNormRopeCuda, MatchesCpuNormThenRope) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(31);
  for (const Config& config : kConfigs) {
    expect_matches_cpu(config, {0}, random);
    expect_matches_cpu(config, {40000}, random);
    std::vector<int32_t> positions = {0, 1, 15, 16, 17, 1000, 32767, 40959};
    for (int i = 0; i < 120; ++i) positions.push_back(static_cast<int32_t>(below(random, 41000)));
    expect_matches_cpu(config, positions, random);
  }
}

TEST(QkNormRopeCuda, RejectsBadArgumentsNamingTheField) {
  FP4_SKIP_WITHOUT_GPU();
  DeviceBytes buffer(4096);
  bf16_bits* p = buffer.data<bf16_bits>();
  const int32_t* positions = buffer.data<int32_t>();
  cuda::QkNormRopeArgs args{.q = p,
                            .q_row_stride = 256,
                            .n_heads = 1,
                            .k = p,
                            .k_row_stride = 128,
                            .n_kv_heads = 1,
                            .head_dim = 128,
                            .q_norm_weight = p,
                            .k_norm_weight = p,
                            .positions = positions,
                            .n_tokens = 1,
                            .eps = 1e-6f,
                            .theta = 1e6};
  auto run = [&] { cuda::qk_norm_rope_cuda(args); };
  args.head_dim = 130 * 2;
  expect_error_naming(run, "head_dim = 260");
  args.head_dim = 128;
  args.q_row_stride = 100;
  expect_error_naming(run, "q_row_stride = 100");
  args.q_row_stride = 256;
  args.theta = 0.0;
  expect_error_naming(run, "theta = 0");
  args.theta = 1e6;
  args.positions = nullptr;
  expect_error_naming(run, "positions");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
