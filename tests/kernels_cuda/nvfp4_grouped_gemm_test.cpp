// Grouped NVFP4 GEMM (MoE experts) against the float64 reference of each expert's rows: uneven groups, empty experts
// (first, middle, last), fewer rows than max_rows (the rest of y stays untouched), every tile configuration, w13 with
// two alphas per expert in the gated-shuffled order, w2 with one, and an odd shape (n % 32 != 0, K = 16 * odd).
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "kernels/cuda/nvfp4_grouped_gemm.h"
#include "kernels/cuda/nvfp4_kernels.h"
#include "tests/kernels_cuda/nvfp4_test_util.h"
#endif

namespace fp4serve {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(Nvfp4GroupedGemmCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend"; }
#else
using namespace fp4serve::test;

#define SKIP_WITHOUT_GPU()                                                                         \
  if (cuda_device_count() == 0)                                                                    \
  GTEST_SKIP() << "no CUDA device on this machine; the NVFP4 GEMM tests run on the device machine"

struct GroupedCase {
  std::string name;
  int64_t n, k;
  int64_t alphas_per_expert;
  Nvfp4RowOrder order;
  std::vector<int32_t> rows_per_expert;
  int64_t spare_rows;              // max_rows - total rows
  cuda::Nvfp4FusedConfig config;   // token_tiles == 0: the public entry point's choice
};

std::string grouped_case_name(const testing::TestParamInfo<GroupedCase>& info) {
  const GroupedCase& c = info.param;
  return c.name + (c.config.token_tiles == 0 ? std::string("_auto")
                                             : "_t" + std::to_string(c.config.token_tiles) + "w" +
                                                   std::to_string(c.config.warps_n) + "r" +
                                                   std::to_string(c.config.row_tiles));
}

class Nvfp4GroupedGemmTest : public testing::TestWithParam<GroupedCase> {};

TEST_P(Nvfp4GroupedGemmTest, EachExpertMatchesFloat64Reference) {
  SKIP_WITHOUT_GPU();
  const GroupedCase& c = GetParam();
  Random random(std::hash<std::string>{}(grouped_case_name({c, 0})));
  const auto n_experts = static_cast<int64_t>(c.rows_per_expert.size());
  std::vector<HostWeight> weights;
  std::vector<uint8_t> packed, scales;
  std::vector<float> alphas;
  for (int64_t e = 0; e < n_experts; ++e) {
    const float stddev = 0.01f * static_cast<float>(e + 1);
    weights.push_back(c.alphas_per_expert == 2 ? make_weight(c.k, {{c.n / 2, stddev}, {c.n / 2, 2 * stddev}}, random)
                                               : make_weight(c.k, {{c.n, stddev}}, random));
    const DeviceLayout layout = device_layout(weights.back(), c.order);
    packed.insert(packed.end(), layout.packed.begin(), layout.packed.end());
    scales.insert(scales.end(), layout.scales.begin(), layout.scales.end());
    for (const cuda::Nvfp4AlphaRange& range : weights.back().alphas) alphas.push_back(range.alpha);
  }
  std::vector<int32_t> offsets = {0};
  for (int32_t rows : c.rows_per_expert) offsets.push_back(offsets.back() + rows);
  const int64_t max_rows = offsets.back() + c.spare_rows;
  const std::vector<bf16_bits> x = random_activations(max_rows, c.k, random);

  GuardedBuffer packed_d(packed.size()), scales_d(scales.size()), alphas_d(alphas.size() * sizeof(float)),
      offsets_d(offsets.size() * sizeof(int32_t)), x_d(x.size() * sizeof(bf16_bits)),
      y_d(static_cast<size_t>(max_rows * c.n) * sizeof(bf16_bits));
  packed_d.upload(packed.data());
  scales_d.upload(scales.data());
  alphas_d.upload(alphas.data());
  offsets_d.upload(offsets.data());
  x_d.upload(x.data());
  y_d.fill(0xFF);  // bf16 NaN

  cuda::Nvfp4GroupedGemmArgs args;
  args.x = x_d.data<bf16_bits>();
  args.max_rows = max_rows;
  args.expert_offsets = offsets_d.data<int32_t>();
  args.n_experts = n_experts;
  args.packed = packed_d.data<uint8_t>();
  args.block_scales = scales_d.data<uint8_t>();
  args.n = c.n;
  args.k = c.k;
  args.row_order = c.order;
  args.alphas = alphas_d.data<float>();
  args.alphas_per_expert = c.alphas_per_expert;
  args.y = y_d.data<bf16_bits>();
  cuda::Nvfp4GemmContext context;
  if (c.config.token_tiles == 0) {
    cuda::nvfp4_grouped_gemm_w4a16(context, args);
  } else {
    cuda::launch_nvfp4_grouped({args.x, static_cast<int32_t>(max_rows), args.expert_offsets,
                                static_cast<int32_t>(n_experts), args.packed, args.block_scales,
                                static_cast<int32_t>(c.n), static_cast<int32_t>(c.k), c.order, args.alphas,
                                static_cast<int32_t>(c.alphas_per_expert), args.y, nullptr},
                               c.config);
  }
  check_cuda(cudaDeviceSynchronize(), "grouped kernel");
  std::vector<bf16_bits> y(static_cast<size_t>(max_rows * c.n));
  y_d.download(y.data());
  EXPECT_TRUE(y_d.guards_intact()) << "the kernel wrote outside y";

  for (int64_t e = 0; e < n_experts; ++e) {
    std::vector<int64_t> rows;
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) rows.push_back(r);
    if (!rows.empty())
      expect_rows_match_reference(weights[e], x.data(), y.data(), rows, "expert " + std::to_string(e));
  }
  for (int64_t i = offsets.back() * c.n; i < max_rows * c.n; ++i)
    if (y[i] != 0xFFFF) {
      ADD_FAILURE() << "y row " << i / c.n << " past the last expert's rows was written";
      break;
    }
}

std::vector<GroupedCase> grouped_cases() {
  // Uneven groups with empty experts first, in the middle and last; a decode-like batch (8 experts of 1 row each
  // among 32); a prefill-like one with groups larger than a token tile.
  const std::vector<int32_t> uneven = {0, 5, 17, 0, 0, 1, 70, 9, 0};
  std::vector<int32_t> decode(32, 0);
  for (int e : {1, 4, 5, 11, 20, 21, 30, 31}) decode[e] = 1;
  const std::vector<int32_t> prefill = {130, 64, 0, 200, 3};
  // More experts than one warp's pass over the offsets covers (4 per lane): busy experts on both sides of 128 and 256.
  std::vector<int32_t> many(300, 0);
  for (const auto& [e, rows] : std::vector<std::pair<int, int32_t>>{{3, 2}, {127, 1}, {128, 9}, {200, 1}, {299, 4}})
    many[e] = rows;
  std::vector<GroupedCase> cases;
  // {token_tiles, warps_n, k_splits, row_tiles}; token_tiles 0: the public entry point.
  for (const cuda::Nvfp4FusedConfig config :
       {cuda::Nvfp4FusedConfig{0, 0, 1, 1}, cuda::Nvfp4FusedConfig{1, 2, 1, 1}, cuda::Nvfp4FusedConfig{2, 4, 1, 1},
        cuda::Nvfp4FusedConfig{4, 8, 1, 1}, cuda::Nvfp4FusedConfig{8, 8, 1, 1}, cuda::Nvfp4FusedConfig{8, 2, 1, 1},
        cuda::Nvfp4FusedConfig{1, 2, 1, 2}, cuda::Nvfp4FusedConfig{2, 8, 1, 2}, cuda::Nvfp4FusedConfig{8, 4, 1, 2}}) {
    cases.push_back({"w13_gated_uneven", 256, 256, 2, Nvfp4RowOrder::GatedShuffled, uneven, 7, config});
    cases.push_back({"w2_uneven", 256, 112, 1, Nvfp4RowOrder::Linear, uneven, 0, config});
    cases.push_back({"odd_uneven", 72, 48, 2, Nvfp4RowOrder::Linear, uneven, 3, config});
  }
  for (const cuda::Nvfp4FusedConfig config :
       {cuda::Nvfp4FusedConfig{0, 0, 1, 1}, cuda::Nvfp4FusedConfig{1, 8, 1, 1}, cuda::Nvfp4FusedConfig{1, 4, 1, 2}}) {
    cases.push_back({"w13_decode", 256, 256, 2, Nvfp4RowOrder::GatedShuffled, decode, 0, config});
    cases.push_back({"w2_shuffled_prefill", 128, 192, 1, Nvfp4RowOrder::Shuffled, prefill, 40, config});
    cases.push_back({"w2_many_experts", 64, 64, 1, Nvfp4RowOrder::Linear, many, 5, config});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Experts, Nvfp4GroupedGemmTest, testing::ValuesIn(grouped_cases()), grouped_case_name);

class Nvfp4GroupedGemmArgumentTest : public testing::Test {
 protected:
  void expect_rejected(const cuda::Nvfp4GroupedGemmArgs& args, const std::string& expected) {
    try {
      cuda::nvfp4_grouped_gemm_w4a16(context_, args);
      ADD_FAILURE() << "accepted; expected an error mentioning '" << expected << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
  static cuda::Nvfp4GroupedGemmArgs valid_args() {
    cuda::Nvfp4GroupedGemmArgs args;  // pointers are never dereferenced: rejected first
    args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x10000});
    args.max_rows = 16;
    args.expert_offsets = reinterpret_cast<const int32_t*>(uintptr_t{0x20000});
    args.n_experts = 4;
    args.packed = reinterpret_cast<const uint8_t*>(uintptr_t{0x30000});
    args.block_scales = reinterpret_cast<const uint8_t*>(uintptr_t{0x40000});
    args.n = 256;
    args.k = 128;
    args.alphas = reinterpret_cast<const float*>(uintptr_t{0x50000});
    args.y = reinterpret_cast<bf16_bits*>(uintptr_t{0x60000});
    return args;
  }
  cuda::Nvfp4GemmContext context_;
};

TEST_F(Nvfp4GroupedGemmArgumentTest, RejectsBadShapesAndPointers) {
  auto args = valid_args();
  args.k = 40;
  expect_rejected(args, "k = 40");
  args = valid_args();
  args.alphas_per_expert = 3;
  expect_rejected(args, "alphas_per_expert = 3");
  args = valid_args();
  args.n = 48;
  args.row_order = Nvfp4RowOrder::Shuffled;
  expect_rejected(args, "n % 32 == 0");
  args = valid_args();
  args.expert_offsets = nullptr;
  expect_rejected(args, "expert_offsets");
  args = valid_args();
  args.x = reinterpret_cast<const bf16_bits*>(uintptr_t{0x10008});
  expect_rejected(args, "x must be");
  args = valid_args();
  args.n_experts = 0;
  expect_rejected(args, "n_experts = 0");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve
