// GPU post-processing against the CPU layouts (quant/nvfp4_layout.h over format/layout.h), bit for bit: packed-row
// arrangement and derived block scales for the CUTLASS layout and the TRT-LLM layout (plain and gated), in place
// (same device pointer afterwards) with scratches of one and of two matrices (several passes, a partial last one),
// padded scales out of place with the padding poisoned first; the MoE and linear alpha derivations; bad arguments.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "format/layout.h"
#include "kernels/cuda/nvfp4_postprocess.h"
#include "quant/nvfp4_layout.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(PostprocessCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

std::vector<uint8_t> random_bytes(size_t n, Random& random) {
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(random.next());
  return out;
}

struct LayoutCase {
  const char* name;
  Nvfp4MatrixShape shape;
  WeightLayout layout;
};

// E = 3 matrices each. 128 x 2048 aliases (scales [128, 128]); 96 x 48 pads both ways and has 24-byte rows (the
// byte path of the row scatter); Qwen3-30B-A3B's w13 shape (gated, 1536 x 2048) and w2 (2048 x 768).
std::vector<LayoutCase> layout_cases() {
  std::vector<LayoutCase> cases;
  for (const WeightLayout layout : {WeightLayout::Cutlass, WeightLayout::Trtllm}) {
    const bool trtllm = layout == WeightLayout::Trtllm;
    cases.push_back({trtllm ? "aliasing_trtllm" : "aliasing_cutlass", {"w.aliasing", 3, 128, 2048, false}, layout});
    cases.push_back({trtllm ? "padded_trtllm" : "padded_cutlass", {"w.padded", 3, 96, 48, false}, layout});
    cases.push_back({trtllm ? "w13_trtllm" : "w13_cutlass", {"experts.w13_weight", 3, 1536, 2048, true}, layout});
    cases.push_back({trtllm ? "w2_trtllm" : "w2_cutlass", {"experts.w2_weight", 3, 2048, 768, false}, layout});
  }
  cases.push_back({"gated_padded_trtllm", {"experts.w13_weight", 3, 64, 48, true}, WeightLayout::Trtllm});
  return cases;
}

class PostprocessLayoutTest : public testing::TestWithParam<LayoutCase> {};

TEST_P(PostprocessLayoutTest, ArrangesRowsAndDerivesScalesLikeTheCpu) {
  FP4_SKIP_WITHOUT_GPU();
  const LayoutCase& c = GetParam();
  const Nvfp4MatrixShape& shape = c.shape;
  const Nvfp4RowOrder order = nvfp4_row_order(c.layout, shape.gated);
  Random random(std::hash<std::string>{}(c.name));
  const ByteMatrixShape packed_shape{shape.n_matrices, shape.n_rows, shape.k / 2, shape.name};
  const ByteMatrixShape scale_shape{shape.n_matrices, shape.n_rows, shape.k / 16, shape.name};

  for (const int64_t scratch_matrices : {1, 2}) {
    SCOPED_TRACE("scratch of " + std::to_string(scratch_matrices) + " matrices");
    // Packed rows, in place.
    const std::vector<uint8_t> raw_packed = random_bytes(shape.n_matrices * shape.n_rows * shape.k / 2, random);
    std::vector<uint8_t> expected_packed = raw_packed;
    arrange_weight_rows(expected_packed.data(), shape, c.layout);
    DeviceBytes packed(raw_packed.size());
    packed.upload(raw_packed);
    DeviceBytes scratch(scratch_matrices * cuda::nvfp4_postprocess_scratch_bytes(packed_shape));
    scratch.fill(0x11);
    cuda::arrange_rows_cuda(packed.data<uint8_t>(), packed_shape, order, {scratch.data<uint8_t>(), scratch.size()}, nullptr);
    check_cuda(cudaDeviceSynchronize(), "arrange_rows_cuda");
    EXPECT_EQ(packed.download<uint8_t>(), expected_packed);
    EXPECT_TRUE(packed.guards_intact() && scratch.guards_intact());

    // Block scales: in place when the swizzle keeps the shape, else into a poisoned separate buffer.
    const std::vector<uint8_t> raw_scales = random_bytes(shape.n_matrices * shape.n_rows * shape.k / 16, random);
    const Shape derived_shape = derived_scale_shape(shape);
    size_t derived_bytes = 1;
    for (const int64_t d : derived_shape) derived_bytes *= static_cast<size_t>(d);
    std::vector<uint8_t> expected_scales(derived_bytes);
    derive_block_scales(raw_scales.data(), shape, c.layout, expected_scales.data());
    DeviceBytes scale_scratch(scratch_matrices * cuda::nvfp4_postprocess_scratch_bytes(scale_shape));
    DeviceBytes raw(raw_scales.size());
    raw.upload(raw_scales);
    if (swizzle_preserves_shape(shape.n_rows, shape.k / 16)) {
      cuda::derive_block_scales_cuda(raw.data<uint8_t>(), scale_shape, order, raw.data<uint8_t>(),
                                     {scale_scratch.data<uint8_t>(), scale_scratch.size()}, nullptr);
      check_cuda(cudaDeviceSynchronize(), "derive_block_scales_cuda in place");
      EXPECT_EQ(raw.download<uint8_t>(), expected_scales);
    } else {
      DeviceBytes derived(derived_bytes);
      derived.fill(0x7F);
      cuda::derive_block_scales_cuda(raw.data<uint8_t>(), scale_shape, order, derived.data<uint8_t>(), {}, nullptr);
      check_cuda(cudaDeviceSynchronize(), "derive_block_scales_cuda");
      EXPECT_EQ(derived.download<uint8_t>(), expected_scales);
      EXPECT_TRUE(derived.guards_intact());
    }
    EXPECT_TRUE(raw.guards_intact() && scale_scratch.guards_intact());
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PostprocessLayoutTest, testing::ValuesIn(layout_cases()),
                         [](const testing::TestParamInfo<LayoutCase>& info) { return std::string(info.param.name); });

std::vector<float> random_scales(size_t n, Random& random) {
  std::vector<float> out(n);
  for (auto& v : out) v = std::exp2(-12.0f * random.uniform()) * (1.0f + random.uniform());
  return out;
}

// The MoE alphas as quant/nvfp4_moe.cpp defines them (spec 2): static input scales reduce to their max.
TEST(PostprocessCuda, MoeAlphasMatchTheLoaderBitForBit) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(21);
  for (const bool static_activations : {true, false}) {
    const int64_t E = 37;
    const std::vector<float> w13_s2 = random_scales(2 * E, random), w13_in = random_scales(2 * E, random);
    const std::vector<float> w2_s2 = random_scales(E, random), w2_in = random_scales(E, random);
    float w13_reduced = 1.0f, w2_reduced = 1.0f;
    if (static_activations) {
      w13_reduced = *std::max_element(w13_in.begin(), w13_in.end());
      w2_reduced = *std::max_element(w2_in.begin(), w2_in.end());
    }
    const float w2_quant = 1.0f / w2_reduced;
    std::vector<float> g1(2 * E), g2(E), scale_c(2 * E);
    for (int64_t i = 0; i < 2 * E; ++i) {
      g1[i] = w13_reduced * w13_s2[i];
      scale_c[i] = w2_quant * g1[i];
    }
    for (int64_t e = 0; e < E; ++e) g2[e] = w2_reduced * w2_s2[e];

    DeviceBytes d_w13_s2(8 * E), d_w13_in(8 * E), d_w2_s2(4 * E), d_w2_in(4 * E), scalars(16), d_g1(8 * E),
        d_g2(4 * E), d_c(8 * E);
    d_w13_s2.upload(w13_s2);
    d_w13_in.upload(w13_in);
    d_w2_s2.upload(w2_s2);
    d_w2_in.upload(w2_in);
    for (DeviceBytes* b : {&scalars, &d_g1, &d_g2, &d_c}) b->fill(0xFF);
    float* s = scalars.data<float>();
    cuda::derive_moe_alphas_cuda({.n_experts = E, .static_activations = static_activations,
                                  .w13_weight_scale_2 = d_w13_s2.data<float>(), .w13_input_scale = d_w13_in.data<float>(),
                                  .w2_weight_scale_2 = d_w2_s2.data<float>(), .w2_input_scale = d_w2_in.data<float>(),
                                  .w13_input_scale_reduced = s, .w2_input_scale_reduced = s + 1,
                                  .w13_input_scale_quant = s + 2, .w2_input_scale_quant = s + 3,
                                  .g1_alphas = d_g1.data<float>(), .g2_alphas = d_g2.data<float>(),
                                  .g1_scale_c = d_c.data<float>(), .stream = nullptr});
    check_cuda(cudaDeviceSynchronize(), "derive_moe_alphas_cuda");
    EXPECT_EQ(scalars.download<float>(), (std::vector<float>{w13_reduced, w2_reduced, 1.0f / w13_reduced, w2_quant}));
    EXPECT_EQ(d_g1.download<float>(), g1);
    EXPECT_EQ(d_g2.download<float>(), g2);
    EXPECT_EQ(d_c.download<float>(), scale_c);
  }
}

TEST(PostprocessCuda, LinearAlphasMatchTheLoaderBitForBit) {
  FP4_SKIP_WITHOUT_GPU();
  Random random(22);
  for (const bool static_activations : {true, false}) {
    const std::vector<float> s2 = random_scales(3, random), input = random_scales(3, random);
    std::vector<float> alpha(3), inverse(3);
    for (size_t i = 0; i < 3; ++i) {
      const float a = static_activations ? input[i] : 1.0f;
      alpha[i] = a * s2[i];
      inverse[i] = 1.0f / a;
    }
    DeviceBytes d_s2(12), d_in(12), d_alpha(12), d_inverse(12);
    d_s2.upload(s2);
    d_in.upload(input);
    d_alpha.fill(0xFF);
    d_inverse.fill(0xFF);
    cuda::derive_linear_alphas_cuda(d_s2.data<float>(), d_in.data<float>(), 3, static_activations,
                                    d_alpha.data<float>(), d_inverse.data<float>(), nullptr);
    check_cuda(cudaDeviceSynchronize(), "derive_linear_alphas_cuda");
    EXPECT_EQ(d_alpha.download<float>(), alpha);
    EXPECT_EQ(d_inverse.download<float>(), inverse);
  }
}

// Rejected on the host before any launch: no GPU needed.
TEST(PostprocessCuda, RejectsBadArgumentsNamingTheTensor) {
  auto* fake = reinterpret_cast<uint8_t*>(uintptr_t{0x10000});
  const ByteMatrixShape padded{2, 96, 3, "layers.0.w2_weight_scale"};
  expect_error_naming([&] { cuda::derive_block_scales_cuda(fake, padded, Nvfp4RowOrder::Linear, fake, {fake, 1 << 20},
                                                           nullptr); },
                      "layers.0.w2_weight_scale': scales [96, 3] swizzle to the padded [128, 4]");
  const ByteMatrixShape odd_rows{2, 48, 64, "layers.0.w13_weight"};
  expect_error_naming([&] { cuda::arrange_rows_cuda(fake, odd_rows, Nvfp4RowOrder::Shuffled, {fake, 1 << 20}, nullptr); },
                      "N % 32 == 0");
  const ByteMatrixShape rows{2, 64, 64, "layers.0.w13_weight"};
  expect_error_naming([&] { cuda::arrange_rows_cuda(fake, rows, Nvfp4RowOrder::Shuffled, {fake, 100}, nullptr); },
                      "the scratch holds 100 bytes");
  const ByteMatrixShape aliasing{1, 128, 4, "s"};
  expect_error_naming([&] { cuda::derive_block_scales_cuda(fake, aliasing, Nvfp4RowOrder::Linear, fake + 8, {},
                                                           nullptr); },
                      "overlap");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
