// The GPU MoE layer against a float64 CPU reference of qwen3-moe.md's MoE with the bf16 storage points of
// kernels/cpu/moe_experts.h (g, u, silu, act, each expert output, y). Router inputs are drawn on a grid (x in 2^-6
// steps, router weights in 2^-6 steps) so every logit is exact in fp32 and its bf16 rounding is the reference's:
// routing must then match exactly (ids; weights to 1e-5), ties included (duplicated router rows: the lower expert
// index wins). Expert weights are random NVFP4 codes and scales (zero and subnormal scales included) in both layouts.
// Every expert that the reference does not route to gets NaN block scales on the device, so reading one would show.
// Every case runs on both expert-GEMM paths, Auto and the batch-invariant mode (--deterministic); token counts on both
// sides of kMoeFastRoutingMaxTokens (64) take the fused routing kernel or the cuBLAS one (the batch-invariant mode: the
// fused kernel's GEMV in chunks). Outputs and workspace are poisoned; a second run must be bitwise identical.
#include <gtest/gtest.h>

#include "kernels/device.h"

#ifdef FP4SERVE_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "cuda_test_support.h"
#include "format/bf16.h"
#include "format/e2m1.h"
#include "format/e4m3.h"
#include "format/layout.h"
#include "kernels/cuda/moe_layer.h"
#include "quant/nvfp4_layout.h"
#endif

namespace fp4serve::test {
namespace {

#ifndef FP4SERVE_HAVE_CUDA
TEST(MoeLayerCuda, NeedsTheCudaBackend) { GTEST_SKIP() << "built without the CUDA backend (FP4SERVE_CUDA=OFF)"; }
#else

// Normwise relative error of y: bf16 storage of every intermediate is shared with the reference, so what remains is
// fp32-vs-float64 accumulation and the rare bf16 rounding flip it causes (measured 0 to 3e-5 on an H100).
constexpr double kNormRelative = 1e-3;

struct MoeCase {
  const char* name;
  int64_t n_experts, top_k, hidden, intermediate, m;
  WeightLayout layout;
  bool norm_topk_prob;
  bool tied_router;  // pairs of experts with identical router rows
};

const MoeCase kCases[] = {
    // Qwen3-30B-A3B: decode, a small batch (many experts without tokens), TRT-LLM layout.
    {"qwen3_m1", 128, 8, 2048, 768, 1, WeightLayout::Cutlass, true, false},
    {"qwen3_m16_trtllm", 128, 8, 2048, 768, 16, WeightLayout::Trtllm, true, false},
    // A reduced shape for a full batch of 256 tokens (keeps the float64 reference fast).
    {"reduced_m256", 64, 8, 512, 256, 256, WeightLayout::Cutlass, true, false},
    {"ties_m16_trtllm", 16, 4, 256, 128, 16, WeightLayout::Trtllm, true, true},
    // Odd: K = 16 * 3 and 16 * 5 (half 32-element chunks), few experts, no renormalization.
    {"odd_m7", 5, 3, 48, 80, 7, WeightLayout::Cutlass, false, false},
    {"odd_ties_m33", 6, 2, 80, 48, 33, WeightLayout::Cutlass, true, true},
    // H = 4096 (kMoeMaxK): two k-steps per warp with four token tiles.
    {"wide_m20_trtllm", 4, 2, 4096, 64, 20, WeightLayout::Trtllm, true, false},
    // The fused routing kernel's last token count (bit 63 of its token masks) and the first on cuBLAS + two kernels.
    {"reduced_m64", 64, 8, 512, 256, 64, WeightLayout::Cutlass, true, false},
    {"reduced_m65_trtllm", 64, 8, 512, 256, 65, WeightLayout::Trtllm, true, false},
    // kMoeMaxExperts and kMoeMaxTopK with ties: every thread of the fused kernel's expert scan owns an expert.
    {"max_experts_ties_m3", 256, 16, 64, 32, 3, WeightLayout::Cutlass, true, true},
    {"single_expert_m5", 1, 1, 32, 16, 5, WeightLayout::Cutlass, true, false},
};

struct ExpertPath {
  const char* name;
  cuda::MoeExpertGemm gemm;
  bool batch_invariant = false;  // MoeLayerArgs::batch_invariant (--deterministic)
};
const ExpertPath kPaths[] = {{"layer kernels", cuda::MoeExpertGemm::LayerKernels},
                             {"grouped GEMM", cuda::MoeExpertGemm::GroupedGemm},
                             {"auto", cuda::MoeExpertGemm::Auto},
                             {"batch invariant", cuda::MoeExpertGemm::Auto, true}};

struct HostMoe {
  std::vector<bf16_bits> router;                  // [E, H]
  std::vector<uint8_t> w13_packed, w13_scales;    // [E, 2I, H/2], [E, 2I, H/16] linear
  std::vector<uint8_t> w2_packed, w2_scales;      // [E, H, I/2], [E, H, I/16]
  std::vector<float> g1, g2;                      // [E, 2], [E]
};

uint8_t random_scale_code(Random& random) {
  const int64_t pick = below(random, 64);
  if (pick == 0) return 0x00;                                  // zero scale: the block dequantizes to zeros
  if (pick == 1) return static_cast<uint8_t>(1 + below(random, 7));  // subnormal
  return static_cast<uint8_t>(0x28 + below(random, 0x20));      // 0.25 .. 3.75
}

HostMoe make_moe(const MoeCase& c, Random& random) {
  const int64_t E = c.n_experts, H = c.hidden, I = c.intermediate;
  HostMoe moe;
  moe.router.resize(E * H);
  for (auto& v : moe.router) v = float_to_bf16(static_cast<float>(below(random, 5) - 2) * 0x1p-6f);
  if (c.tied_router)
    for (int64_t e = 0; e + 3 < E; e += 4)  // expert e + 3 routes exactly like expert e + 1
      std::copy_n(moe.router.begin() + (e + 1) * H, H, moe.router.begin() + (e + 3) * H);
  auto fill = [&](std::vector<uint8_t>& packed, std::vector<uint8_t>& scales, int64_t rows, int64_t k) {
    packed.resize(E * rows * k / 2);
    for (auto& b : packed) b = static_cast<uint8_t>(random.next());
    scales.resize(E * rows * k / 16);
    for (auto& s : scales) s = random_scale_code(random);
  };
  fill(moe.w13_packed, moe.w13_scales, 2 * I, H);
  fill(moe.w2_packed, moe.w2_scales, H, I);
  // Output magnitudes O(1): a dot of K terms of |code * scale| ~ 3 and |x| ~ 1 grows like 3 * sqrt(K).
  for (int64_t i = 0; i < 2 * E; ++i)
    moe.g1.push_back((0.5f + random.uniform()) / (3.0f * std::sqrt(static_cast<float>(H))));
  for (int64_t e = 0; e < E; ++e)
    moe.g2.push_back((0.5f + random.uniform()) / (1.5f * std::sqrt(static_cast<float>(I))));
  return moe;
}

std::vector<bf16_bits> grid_activations(int64_t m, int64_t H, Random& random) {
  std::vector<bf16_bits> x(m * H);
  for (auto& v : x) v = float_to_bf16(static_cast<float>(below(random, 257) - 128) * 0x1p-6f);
  return x;
}

struct Routing {
  std::vector<int32_t> ids;     // [m, k]
  std::vector<double> weights;  // [m, k]
};

Routing reference_routing(const MoeCase& c, const HostMoe& moe, const std::vector<bf16_bits>& x) {
  const int64_t E = c.n_experts, H = c.hidden, k = c.top_k;
  Routing r;
  for (int64_t t = 0; t < c.m; ++t) {
    std::vector<double> p(E);
    for (int64_t e = 0; e < E; ++e) {
      double sum = 0.0;  // exact: products are multiples of 2^-12 far below 2^24 of them
      for (int64_t h = 0; h < H; ++h) sum += double(bf16_to_float(x[t * H + h])) * bf16_to_float(moe.router[e * H + h]);
      p[e] = bf16_to_float(float_to_bf16(static_cast<float>(sum)));
    }
    const double max_logit = *std::max_element(p.begin(), p.end());
    double total = 0.0;
    for (double& v : p) total += v = std::exp(v - max_logit);
    for (double& v : p) v /= total;
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double topk_sum = 0.0;
    for (int64_t j = 0; j < k; ++j) topk_sum += p[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      r.ids.push_back(order[j]);
      r.weights.push_back(c.norm_topk_prob ? p[order[j]] / topk_sum : p[order[j]]);
    }
  }
  return r;
}

double bf16_round(double v) { return bf16_to_float(float_to_bf16(static_cast<float>(v))); }

// Logical rows of one expert's NVFP4 matrix [rows, k] (raw checkpoint layout) as floats e2m1 * e4m3.
std::vector<float> dequantize_expert(const std::vector<uint8_t>& packed, const std::vector<uint8_t>& scales,
                                     int64_t expert, int64_t rows, int64_t k) {
  std::vector<float> w(rows * k);
  const uint8_t* p = packed.data() + expert * rows * k / 2;
  const uint8_t* s = scales.data() + expert * rows * k / 16;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < k; ++i)
      w[r * k + i] = e2m1_decode(packed_e2m1_code(p + r * k / 2, i)) * e4m3_decode(s[r * (k / 16) + i / 16]);
  return w;
}

std::vector<double> reference_layer(const MoeCase& c, const HostMoe& moe, const std::vector<bf16_bits>& x,
                                    const Routing& routing) {
  const int64_t E = c.n_experts, H = c.hidden, I = c.intermediate, k = c.top_k;
  std::vector<double> expert_out(c.m * k * H);  // per slot t * k + j
#pragma omp parallel for schedule(dynamic)
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t> slots;
    for (int64_t s = 0; s < c.m * k; ++s)
      if (routing.ids[s] == e) slots.push_back(s);
    if (slots.empty()) continue;
    const std::vector<float> w13 = dequantize_expert(moe.w13_packed, moe.w13_scales, e, 2 * I, H);
    const std::vector<float> w2 = dequantize_expert(moe.w2_packed, moe.w2_scales, e, H, I);
    std::vector<double> act(I);
    for (const int64_t slot : slots) {
      const bf16_bits* xt = x.data() + slot / k * H;
      for (int64_t i = 0; i < I; ++i) {
        double gate = 0.0, up = 0.0;
        for (int64_t h = 0; h < H; ++h) {
          gate += double(bf16_to_float(xt[h])) * w13[i * H + h];
          up += double(bf16_to_float(xt[h])) * w13[(I + i) * H + h];
        }
        const double g = bf16_round(gate * moe.g1[2 * e]), u = bf16_round(up * moe.g1[2 * e + 1]);
        act[i] = bf16_round(bf16_round(g / (1.0 + std::exp(-g))) * u);
      }
      for (int64_t h = 0; h < H; ++h) {
        double d = 0.0;
        for (int64_t i = 0; i < I; ++i) d += act[i] * w2[h * I + i];
        expert_out[slot * H + h] = bf16_round(d * moe.g2[e]);
      }
    }
  }
  std::vector<double> y(c.m * H);
  for (int64_t t = 0; t < c.m; ++t)
    for (int64_t h = 0; h < H; ++h) {
      double sum = 0.0;
      for (int64_t j = 0; j < k; ++j) sum += routing.weights[t * k + j] * expert_out[(t * k + j) * H + h];
      y[t * H + h] = bf16_round(sum);
    }
  return y;
}

// The expert stacks as the layer reads them: rows arranged for the layout, scales derived (swizzled); every expert
// outside `routed` gets NaN block scales.
struct DeviceMoe {
  DeviceBytes router, w13_packed, w13_scales, w2_packed, w2_scales, g1, g2;
  static size_t derived_bytes(const Nvfp4MatrixShape& s) {
    const SwizzledScaleShape padded = swizzled_scale_shape(s.n_rows, s.k / 16);
    return static_cast<size_t>(s.n_matrices * padded.padded_rows * padded.padded_cols);
  }
  DeviceMoe(const MoeCase& c, const HostMoe& moe, const std::set<int32_t>& routed)
      : router(moe.router.size() * 2),
        w13_packed(moe.w13_packed.size()),
        w13_scales(derived_bytes(w13_shape(c))),
        w2_packed(moe.w2_packed.size()),
        w2_scales(derived_bytes(w2_shape(c))),
        g1(moe.g1.size() * 4),
        g2(moe.g2.size() * 4) {
    router.upload(moe.router);
    g1.upload(moe.g1);
    g2.upload(moe.g2);
    upload_stack(w13_shape(c), c.layout, moe.w13_packed, moe.w13_scales, routed, w13_packed, w13_scales);
    upload_stack(w2_shape(c), c.layout, moe.w2_packed, moe.w2_scales, routed, w2_packed, w2_scales);
  }
  static Nvfp4MatrixShape w13_shape(const MoeCase& c) {
    return {"w13", c.n_experts, 2 * c.intermediate, c.hidden, true};
  }
  static Nvfp4MatrixShape w2_shape(const MoeCase& c) { return {"w2", c.n_experts, c.hidden, c.intermediate, false}; }
  static void upload_stack(const Nvfp4MatrixShape& shape, WeightLayout layout, std::vector<uint8_t> packed,
                           const std::vector<uint8_t>& raw_scales, const std::set<int32_t>& routed,
                           DeviceBytes& packed_device, DeviceBytes& scales_device) {
    arrange_weight_rows(packed.data(), shape, layout);
    std::vector<uint8_t> derived(derived_bytes(shape));
    derive_block_scales(raw_scales.data(), shape, layout, derived.data());
    const size_t per_expert = derived.size() / shape.n_matrices;
    for (int64_t e = 0; e < shape.n_matrices; ++e)
      if (!routed.count(static_cast<int32_t>(e))) std::fill_n(derived.begin() + e * per_expert, per_expert, 0x7F);
    packed_device.upload(packed);
    scales_device.upload(derived);
  }
  cuda::MoeLayerWeights weights(const MoeCase& c) const {
    const Nvfp4RowOrder w13_order = nvfp4_row_order(c.layout, true), w2_order = nvfp4_row_order(c.layout, false);
    return {.router = router.data<bf16_bits>(), .w13_packed = w13_packed.data<uint8_t>(), .w13_scales = w13_scales.data<uint8_t>(),
            .w13_row_order = w13_order, .w2_packed = w2_packed.data<uint8_t>(), .w2_scales = w2_scales.data<uint8_t>(),
            .w2_row_order = w2_order, .g1_alphas = g1.data<float>(), .g2_alphas = g2.data<float>()};
  }
};

class MoeLayerTest : public testing::TestWithParam<MoeCase> {};

TEST_P(MoeLayerTest, MatchesFloat64Reference) {
  FP4_SKIP_WITHOUT_GPU();
  const MoeCase& c = GetParam();
  Random random(std::hash<std::string>{}(c.name));
  const HostMoe moe = make_moe(c, random);
  const std::vector<bf16_bits> x = grid_activations(c.m, c.hidden, random);
  const Routing routing = reference_routing(c, moe, x);
  const std::set<int32_t> routed(routing.ids.begin(), routing.ids.end());
  const DeviceMoe device(c, moe, routed);

  const cuda::MoeLayerShape shape{.n_experts = c.n_experts, .top_k = c.top_k, .hidden = c.hidden,
                                  .intermediate = c.intermediate, .norm_topk_prob = c.norm_topk_prob,
                                  .max_tokens = c.m + 3};
  DeviceBytes workspace(cuda::moe_layer_workspace_bytes(shape) + 256), x_device(x.size() * 2),
      y_device(x.size() * 2);
  x_device.upload(x);
  void* aligned_workspace = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace.data<uint8_t>()) + 255) / 256 * 256);
  const std::vector<double> reference = reference_layer(c, moe, x, routing);
  cuda::MoeLayerContext context;
  for (const ExpertPath& path : kPaths) {
    SCOPED_TRACE(path.name);
    std::vector<bf16_bits> first_run;
    for (int run = 0; run < 2; ++run) {
      workspace.fill(0xFF);
      y_device.fill(0xFF);  // bf16 NaN
      cuda::moe_layer_forward(context, shape, device.weights(c),
                              {.x = x_device.data<bf16_bits>(), .m = c.m, .y = y_device.data<bf16_bits>(),
                               .workspace = aligned_workspace,
                               .workspace_bytes = cuda::moe_layer_workspace_bytes(shape), .stream = nullptr,
                               .expert_gemm = path.gemm, .batch_invariant = path.batch_invariant});
      check_cuda(cudaDeviceSynchronize(), "moe_layer_forward");
      const std::vector<bf16_bits> y = y_device.download<bf16_bits>();
      if (run == 1) {
        EXPECT_EQ(y, first_run) << "a second run differs: the layer is not deterministic";
        break;
      }
      first_run = y;

      const cuda::MoeRouting device_routing = cuda::moe_layer_routing(shape, aligned_workspace);
      std::vector<int32_t> ids(c.m * c.top_k);
      std::vector<float> weights(c.m * c.top_k);
      check_cuda(cudaMemcpy(ids.data(), device_routing.topk_ids, ids.size() * 4, cudaMemcpyDeviceToHost), "ids");
      check_cuda(cudaMemcpy(weights.data(), device_routing.topk_weights, weights.size() * 4, cudaMemcpyDeviceToHost),
                 "w");
      ASSERT_EQ(ids, routing.ids) << "top-k experts differ from the float64 reference";
      for (size_t i = 0; i < weights.size(); ++i)
        EXPECT_NEAR(weights[i], routing.weights[i], 1e-5 * routing.weights[i]) << "topk_weights[" << i << "]";

      double error_squares = 0.0, reference_squares = 0.0;
      for (size_t i = 0; i < y.size(); ++i) {
        const double got = bf16_to_float(y[i]), error = got - reference[i];
        ASSERT_FALSE(std::isnan(got)) << "y[" << i << "] is NaN: not written, or an unrouted expert was read";
        error_squares += error * error;
        reference_squares += reference[i] * reference[i];
      }
      const double relative = std::sqrt(error_squares / reference_squares);
      std::printf("[ moe ] %s (%s): normwise relative error %.3g\n", c.name, path.name, relative);
      EXPECT_LE(relative, kNormRelative);
      EXPECT_GT(reference_squares, 0.0);
    }
  }
  EXPECT_TRUE(y_device.guards_intact() && workspace.guards_intact());
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeLayerTest, testing::ValuesIn(kCases),
                         [](const testing::TestParamInfo<MoeCase>& info) { return std::string(info.param.name); });

// MoeLayerArgs::batch_invariant (--deterministic): a token's output and routing in a batch of 100 (past the fused
// routing kernel's 64 tokens) are bitwise those of the token run alone.
TEST(MoeLayerCuda, BatchInvariantTokensGetTheBitsOfTheirSingleRuns) {
  FP4_SKIP_WITHOUT_GPU();
  const MoeCase c{"invariant", 64, 8, 512, 256, 100, WeightLayout::Cutlass, true, false};
  Random random(23);
  const HostMoe moe = make_moe(c, random);
  const std::vector<bf16_bits> x = grid_activations(c.m, c.hidden, random);
  const Routing routing = reference_routing(c, moe, x);
  const DeviceMoe device(c, moe, std::set<int32_t>(routing.ids.begin(), routing.ids.end()));
  const cuda::MoeLayerShape shape{.n_experts = c.n_experts, .top_k = c.top_k, .hidden = c.hidden,
                                  .intermediate = c.intermediate, .norm_topk_prob = c.norm_topk_prob,
                                  .max_tokens = c.m};
  DeviceBytes workspace(cuda::moe_layer_workspace_bytes(shape) + 256), x_device(x.size() * 2),
      y_device(x.size() * 2);
  void* aligned_workspace =
      reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace.data<uint8_t>()) + 255) / 256 * 256);
  cuda::MoeLayerContext context;
  struct Output {
    std::vector<bf16_bits> y;
    std::vector<int32_t> ids;
  };
  // Runs tokens [first, first + m) of x from the start of the device buffers.
  auto run = [&](int64_t first, int64_t m) {
    check_cuda(cudaMemcpy(x_device.data<bf16_bits>(), x.data() + first * c.hidden, m * c.hidden * 2,
                          cudaMemcpyHostToDevice), "x");
    y_device.fill(0xFF);
    cuda::moe_layer_forward(context, shape, device.weights(c),
                            {.x = x_device.data<bf16_bits>(), .m = m, .y = y_device.data<bf16_bits>(),
                             .workspace = aligned_workspace,
                             .workspace_bytes = cuda::moe_layer_workspace_bytes(shape), .stream = nullptr,
                             .batch_invariant = true});
    check_cuda(cudaDeviceSynchronize(), "moe_layer_forward");
    Output out{std::vector<bf16_bits>(m * c.hidden), std::vector<int32_t>(m * c.top_k)};
    check_cuda(cudaMemcpy(out.y.data(), y_device.data<bf16_bits>(), out.y.size() * 2, cudaMemcpyDeviceToHost), "y");
    const cuda::MoeRouting device_routing = cuda::moe_layer_routing(shape, aligned_workspace);
    check_cuda(cudaMemcpy(out.ids.data(), device_routing.topk_ids, out.ids.size() * 4, cudaMemcpyDeviceToHost),
               "ids");
    return out;
  };
  const Output batch = run(0, c.m);
  EXPECT_EQ(batch.ids, routing.ids);
  for (int64_t t : {int64_t{0}, int64_t{37}, int64_t{64}, int64_t{99}}) {
    const Output alone = run(t, 1);
    EXPECT_TRUE(std::equal(alone.y.begin(), alone.y.end(), batch.y.begin() + t * c.hidden))
        << "token " << t << ": output differs from its single run";
    EXPECT_TRUE(std::equal(alone.ids.begin(), alone.ids.end(), batch.ids.begin() + t * c.top_k))
        << "token " << t << ": routing differs from its single run";
  }
}

// What lets the engine capture the layer: no allocation or synchronization inside a forward, and the fused routing
// kernel's counters back at zero after every launch (a replay that found them dirty would leave the routing unwritten).
TEST(MoeLayerCuda, GraphReplaysMatchDirectRuns) {
  FP4_SKIP_WITHOUT_GPU();
  for (const int64_t m : {int64_t{16}, int64_t{100}}) {  // fused routing; cuBLAS + two routing kernels
    const MoeCase c{"graph", 16, 4, 256, 128, m, WeightLayout::Cutlass, true, false};
    Random random(static_cast<uint64_t>(7 + m));
    const HostMoe moe = make_moe(c, random);
    const std::vector<bf16_bits> x = grid_activations(c.m, c.hidden, random);
    const Routing routing = reference_routing(c, moe, x);
    const DeviceMoe device(c, moe, std::set<int32_t>(routing.ids.begin(), routing.ids.end()));
    const cuda::MoeLayerShape shape{.n_experts = c.n_experts, .top_k = c.top_k, .hidden = c.hidden,
                                    .intermediate = c.intermediate, .norm_topk_prob = true, .max_tokens = m};
    DeviceBytes workspace(cuda::moe_layer_workspace_bytes(shape)), x_device(x.size() * 2), y_device(x.size() * 2);
    x_device.upload(x);
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    cuda::MoeLayerContext context;
    for (const ExpertPath& path : kPaths) {
      SCOPED_TRACE(std::string(path.name) + ", m = " + std::to_string(m));
      const cuda::MoeLayerArgs args{.x = x_device.data<bf16_bits>(), .m = m, .y = y_device.data<bf16_bits>(),
                                    .workspace = workspace.data<uint8_t>(), .workspace_bytes = workspace.size(),
                                    .stream = stream, .expert_gemm = path.gemm};
      cuda::moe_layer_forward(context, shape, device.weights(c), args);
      check_cuda(cudaStreamSynchronize(stream), "direct run");
      const std::vector<bf16_bits> direct = y_device.download<bf16_bits>();
      ASSERT_TRUE(std::none_of(direct.begin(), direct.end(), [](bf16_bits v) { return std::isnan(bf16_to_float(v)); }))
          << "the direct run left NaN in y";
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
      cuda::moe_layer_forward(context, shape, device.weights(c), args);
      check_cuda(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture (the forward must not allocate or sync)");
      check_cuda(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
      for (int replay = 0; replay < 2; ++replay) {
        workspace.fill(0xFF);
        y_device.fill(0xFF);
        check_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        check_cuda(cudaStreamSynchronize(stream), "replay");
        EXPECT_EQ(y_device.download<bf16_bits>(), direct) << "replay " << replay << " differs from the direct run";
      }
      check_cuda(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
      check_cuda(cudaGraphDestroy(graph), "cudaGraphDestroy");
    }
    check_cuda(cudaStreamDestroy(stream), "cudaStreamDestroy");
  }
}

TEST(MoeLayerCuda, ZeroTokensWritesNothing) {
  FP4_SKIP_WITHOUT_GPU();
  const cuda::MoeLayerShape shape{.n_experts = 4, .top_k = 2, .hidden = 32, .intermediate = 16,
                                  .norm_topk_prob = true, .max_tokens = 1};
  DeviceBytes workspace(cuda::moe_layer_workspace_bytes(shape)), y(64);
  y.fill(0x11);
  const auto* fake = reinterpret_cast<const uint8_t*>(uintptr_t{0x10000});
  cuda::MoeLayerContext context;
  cuda::moe_layer_forward(context, shape,
                          {.router = reinterpret_cast<const bf16_bits*>(fake), .w13_packed = fake, .w13_scales = fake,
                           .w2_packed = fake, .w2_scales = fake, .g1_alphas = reinterpret_cast<const float*>(fake),
                           .g2_alphas = reinterpret_cast<const float*>(fake)},
                          {.x = nullptr, .m = 0, .y = nullptr, .workspace = workspace.data<uint8_t>(),
                           .workspace_bytes = workspace.size(), .stream = nullptr});
  check_cuda(cudaDeviceSynchronize(), "sync");
  EXPECT_EQ(y.download<uint8_t>(), std::vector<uint8_t>(64, 0x11));
}

// Rejected on the host before any launch: no GPU needed.
TEST(MoeLayerCuda, RejectsBadArgumentsNamingTheField) {
  const cuda::MoeLayerShape good{.n_experts = 8, .top_k = 2, .hidden = 64, .intermediate = 32,
                                 .norm_topk_prob = true, .max_tokens = 4};
  cuda::MoeLayerShape shape = good;
  shape.top_k = 9;
  expect_error_naming([&] { cuda::moe_layer_workspace_bytes(shape); }, "shape.top_k = 9");
  shape = good;
  shape.hidden = 24;
  expect_error_naming([&] { cuda::moe_layer_workspace_bytes(shape); }, "shape.hidden = 24");
  shape = good;
  shape.n_experts = 300;
  expect_error_naming([&] { cuda::moe_layer_workspace_bytes(shape); }, "shape.n_experts = 300");

  const auto* fake = reinterpret_cast<const uint8_t*>(uintptr_t{0x10000});
  cuda::MoeLayerWeights weights{.router = reinterpret_cast<const bf16_bits*>(fake), .w13_packed = fake,
                                .w13_scales = fake, .w2_packed = fake, .w2_scales = fake,
                                .g1_alphas = reinterpret_cast<const float*>(fake),
                                .g2_alphas = reinterpret_cast<const float*>(fake)};
  cuda::MoeLayerArgs args{.x = reinterpret_cast<const bf16_bits*>(fake), .m = 5,
                          .y = reinterpret_cast<bf16_bits*>(uintptr_t{0x20000}),
                          .workspace = reinterpret_cast<void*>(uintptr_t{0x40000}),
                          .workspace_bytes = cuda::moe_layer_workspace_bytes(good), .stream = nullptr};
  cuda::MoeLayerContext context;
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "m = 5 tokens exceeds");
  args.m = 4;
  args.workspace_bytes = 100;
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "workspace must be");
  args.workspace_bytes = cuda::moe_layer_workspace_bytes(good);
  weights.g2_alphas = nullptr;
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "weights.g2_alphas");
  weights.g2_alphas = reinterpret_cast<const float*>(fake);
  weights.w2_row_order = Nvfp4RowOrder::GatedShuffled;
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "weights.w2_row_order");
  weights.w2_row_order = Nvfp4RowOrder::Linear;
  weights.router = reinterpret_cast<const bf16_bits*>(fake + 2);  // the fused routing kernel reads 16-byte vectors
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "weights.router");
  weights.router = reinterpret_cast<const bf16_bits*>(fake);
  args.expert_gemm = static_cast<cuda::MoeExpertGemm>(7);
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "args.expert_gemm = 7");
  args.expert_gemm = cuda::MoeExpertGemm::LayerKernels;
  args.batch_invariant = true;
  expect_error_naming([&] { cuda::moe_layer_forward(context, good, weights, args); }, "args.batch_invariant");
}

#endif  // FP4SERVE_HAVE_CUDA

}  // namespace
}  // namespace fp4serve::test
