// ModelOptNvfp4MoE: create -> load raw bytes -> post-process -> apply against a float64 reference of the expert
// math (qwen3-moe.md) built from format's nvfp4_dequantize and activation fake-quant, in both layouts, on an
// aliasing shape (H=128, I=64) and a padding one (H=96, I=48); plus aliasing, addresses, reload, exact gate/up
// alphas, the reduced input scale, export and routing errors.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "common/error.h"
#include "format/act_quant.h"
#include "format/layout.h"
#include "quant/method.h"
#include "quant_test_util.h"

namespace fp4serve::test {
namespace {

using ::testing::HasSubstr;

struct MoeShape {
  const char* label;
  int64_t hidden, intermediate;
};
const MoeShape kAliasing{"H128_I64", 128, 64};  // w13 [2I=128, Kb=8], w2 [128, Kb=4]: both alias
const MoeShape kPadding{"H96_I48", 96, 48};     // w13 [96, Kb=6], w2 [96, Kb=3]: both padded
constexpr WeightLayout kLayouts[] = {WeightLayout::Cutlass, WeightLayout::Trtllm};
constexpr int64_t kExperts = 5;  // expert 4 never routed to
constexpr int64_t kTopK = 2;

struct MoeCase {
  MoESpec spec;
  TensorMap checkpoint;
  std::vector<std::array<QuantizedProjection, 3>> experts;  // gate, up, down
  std::vector<std::array<float, 3>> input_scales;           // gate, up, down
};

// Gate and up of odd experts get different weight_scale_2; input scales differ per expert.
MoeCase make_case(const MoeShape& shape) {
  MoeCase c;
  c.spec = {.name = "model.layers.1.mlp.experts",
            .checkpoint_prefix = "model.layers.1.mlp.experts",
            .n_experts = kExperts,
            .hidden = shape.hidden,
            .intermediate = shape.intermediate};
  const int64_t H = shape.hidden, I = shape.intermediate;
  for (int64_t e = 0; e < kExperts; ++e) {
    const auto seed = static_cast<uint32_t>(1000 + 10 * e);
    const float up_factor = e % 2 == 1 ? 1.5f : 1.0f;
    c.experts.push_back(
        {make_projection(I, H, seed), make_projection(I, H, seed + 1, up_factor), make_projection(H, I, seed + 2)});
    const float s = 0.002f + 0.0005f * static_cast<float>(e);
    c.input_scales.push_back({s, s, 2 * s});
    const std::string prefix = fmt::format("{}.{}.", c.spec.checkpoint_prefix, e);
    add_projection(c.checkpoint, prefix + "gate_proj", c.experts[e][0], I, H, s);
    add_projection(c.checkpoint, prefix + "up_proj", c.experts[e][1], I, H, s);
    add_projection(c.checkpoint, prefix + "down_proj", c.experts[e][2], H, I, 2 * s);
  }
  return c;
}

struct Routing {
  std::vector<int32_t> ids;    // [m, top_k], distinct per token, never expert 4
  std::vector<float> weights;  // [m, top_k]
};
Routing make_routing(int64_t m, uint32_t seed) {
  std::mt19937 rng(seed);
  Routing r;
  for (int64_t t = 0; t < m; ++t) {
    std::vector<int32_t> experts{0, 1, 2, 3};
    std::shuffle(experts.begin(), experts.end(), rng);
    const float w0 = 0.3f + 0.4f * std::uniform_real_distribution<float>(0, 1)(rng);
    r.ids.insert(r.ids.end(), {experts[0], experts[1]});
    r.weights.insert(r.weights.end(), {w0, 1.0f - w0});
  }
  return r;
}

struct LoadedMoe {
  std::unique_ptr<MoEMethod> method;
  ParameterSet params;
  Workspace ws;
};

std::unique_ptr<LoadedMoe> create_and_load(const MoeCase& c, WeightLayout layout, ActQuant mode) {
  auto l = std::make_unique<LoadedMoe>();
  l->method = make_moe_method(c.spec, true, {.layout = layout, .act_quant = mode});
  l->method->create_weights(l->params);
  std::vector<CheckpointBinding> bindings;
  l->method->bind_checkpoint(bindings);
  load_bindings(l->params, bindings, c.checkpoint);
  l->method->process_weights_after_loading(l->params);
  return l;
}

std::vector<float> apply(const MoEMethod& method, const ParameterSet& params, Workspace& ws,
                         const std::vector<float>& x, const Routing& r, int64_t m) {
  const int64_t H = method.spec().hidden;
  Tensor xt = host_tensor({m, H}, DType::F32, x);
  Tensor ids = host_tensor({m, kTopK}, DType::I32, r.ids);
  Tensor weights = host_tensor({m, kTopK}, DType::F32, r.weights);
  Tensor y = Tensor::empty({m, H}, DType::F32, Device::CPU);
  method.apply(params, xt, ids, weights, y, ws);
  return {y.data<float>(), y.data<float>() + m * H};
}
std::vector<float> apply(LoadedMoe& l, const std::vector<float>& x, const Routing& r, int64_t m) {
  return apply(*l.method, l.params, l.ws, x, r, m);
}

// What one GEMM's operand is in each mode (format/act_quant.h), for rows [m, k].
std::vector<float> operand(const std::vector<float>& x, int64_t m, int64_t k, ActQuant mode, float input_scale) {
  std::vector<float> a = x;
  if (mode == ActQuant::Static) fake_quantize_activations_static(x.data(), m, k, input_scale, a.data());
  if (mode == ActQuant::PerToken) fake_quantize_activations_per_token(x.data(), m, k, a.data());
  return a;
}

std::vector<float> dequantized(const QuantizedProjection& p, int64_t rows, int64_t k) {
  std::vector<float> w(static_cast<size_t>(rows * k));
  nvfp4_dequantize(p.packed.data(), p.scales.data(), p.weight_scale_2, rows, k, w.data());
  return w;
}

// out[r] = bf16(sum_k a[k] * w[r, k]) accumulated in float64.
std::vector<float> matvec_bf16(const std::vector<float>& a, const std::vector<float>& w, int64_t rows, int64_t k) {
  std::vector<float> out(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(a[i]) * w[r * k + i];
    out[r] = round_to_bf16(static_cast<float>(acc));
  }
  return out;
}

// qwen3-moe.md's expert math with the same bf16 rounding points, float64 sums, and the mode's fake-quant on each
// GEMM input (the reduced input scale: max over experts).
std::vector<double> reference(const MoeCase& c, const std::vector<float>& x, const Routing& r, int64_t m,
                              ActQuant mode) {
  const int64_t H = c.spec.hidden, I = c.spec.intermediate;
  float max_in13 = 0, max_in2 = 0;
  for (const auto& s : c.input_scales) max_in13 = std::max({max_in13, s[0], s[1]}), max_in2 = std::max(max_in2, s[2]);
  const auto a1 = operand(x, m, H, mode, max_in13);
  std::vector<double> y(static_cast<size_t>(m * H));
  for (int64_t t = 0; t < m; ++t) {
    std::vector<double> acc(static_cast<size_t>(H), 0.0);
    const std::vector<float> a(a1.begin() + t * H, a1.begin() + (t + 1) * H);
    for (int64_t j = 0; j < kTopK; ++j) {
      const auto& expert = c.experts[r.ids[t * kTopK + j]];
      const auto gate = matvec_bf16(a, dequantized(expert[0], I, H), I, H);
      const auto up = matvec_bf16(a, dequantized(expert[1], I, H), I, H);
      std::vector<float> act(static_cast<size_t>(I));
      for (int64_t i = 0; i < I; ++i) {
        const double silu = gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i])));
        act[i] = round_to_bf16(round_to_bf16(static_cast<float>(silu)) * up[i]);
      }
      const auto down = matvec_bf16(operand(act, 1, I, mode, max_in2), dequantized(expert[2], H, I), H, I);
      for (int64_t h = 0; h < H; ++h) acc[h] += static_cast<double>(r.weights[t * kTopK + j]) * down[h];
    }
    for (int64_t h = 0; h < H; ++h) y[t * H + h] = acc[h];
  }
  return y;
}

// Same rounding points as the kernel, so only the float64 vs fp32 sums differ: where that flips a bf16 rounding of
// an intermediate (gate/up/act/down, one ulp = 2^-8 relative), the output moves by about that much; in W4A4 modes
// such a flip can also move one activation to the neighbouring e2m1 code. Elementwise: within 2 bf16 ulps of the
// output plus a little absolute slack; overall: a small relative error.
constexpr double kRelTol = 2.0 / 256, kAbsTol = 2e-3;

TEST(Nvfp4MoE, MatchesFloat64ReferenceInEveryModeAndLayout) {
  for (const MoeShape* shape : {&kAliasing, &kPadding})
    for (ActQuant mode : {ActQuant::None, ActQuant::Static, ActQuant::PerToken})
      for (WeightLayout layout : kLayouts) {
        SCOPED_TRACE(fmt::format("{} {} {}", shape->label, act_quant_name(mode), weight_layout_name(layout)));
        const MoeCase c = make_case(*shape);
        auto l = create_and_load(c, layout, mode);
        const int64_t m = 9;
        const auto x = random_activations(m, shape->hidden, 21);
        const Routing r = make_routing(m, 22);
        const auto y = apply(*l, x, r, m);
        const auto ref = reference(c, x, r, m, mode);
        expect_close(y, ref, kRelTol, kAbsTol, "y");
        EXPECT_LT(relative_error(y, ref), mode == ActQuant::None ? 2e-3 : 1e-2);
      }
}

TEST(Nvfp4MoE, LayoutsGiveBitwiseEqualOutputs) {
  for (const MoeShape* shape : {&kAliasing, &kPadding})
    for (ActQuant mode : {ActQuant::None, ActQuant::Static, ActQuant::PerToken}) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, act_quant_name(mode)));
      const MoeCase c = make_case(*shape);
      auto cutlass = create_and_load(c, WeightLayout::Cutlass, mode);
      auto trtllm = create_and_load(c, WeightLayout::Trtllm, mode);
      const int64_t m = 19;
      const auto x = random_activations(m, shape->hidden, 23);
      const Routing r = make_routing(m, 24);
      EXPECT_EQ(apply(*cutlass, x, r, m), apply(*trtllm, x, r, m));
    }
}

// Grouping tokens by expert must not change a token's result: one token alone equals its row in a batch (whose
// experts see more than 8 tokens, so full token tiles meet single-token ones).
TEST(Nvfp4MoE, ATokensResultDoesNotDependOnTheBatch) {
  const MoeCase c = make_case(kPadding);
  auto l = create_and_load(c, WeightLayout::Trtllm, ActQuant::PerToken);
  const int64_t m = 23, H = kPadding.hidden;
  const auto x = random_activations(m, H, 25);
  const Routing r = make_routing(m, 26);
  const auto batch = apply(*l, x, r, m);
  for (int64_t t = 0; t < m; ++t) {
    const std::vector<float> xt(x.begin() + t * H, x.begin() + (t + 1) * H);
    const Routing rt{{r.ids.begin() + t * kTopK, r.ids.begin() + (t + 1) * kTopK},
                     {r.weights.begin() + t * kTopK, r.weights.begin() + (t + 1) * kTopK}};
    EXPECT_EQ(apply(*l, xt, rt, 1), std::vector<float>(batch.begin() + t * H, batch.begin() + (t + 1) * H));
  }
}

TEST(Nvfp4MoE, DerivedScalesKeepExactGateAndUpAlphasAndTheMaxInputScale) {
  const MoeCase c = make_case(kAliasing);
  for (WeightLayout layout : kLayouts) {
    SCOPED_TRACE(weight_layout_name(layout));
    auto l = create_and_load(c, layout, ActQuant::Static);
    const std::string p = c.spec.name + ".";
    const float in13 = c.input_scales.back()[0], in2 = c.input_scales.back()[2];  // the largest: last expert
    EXPECT_EQ(l->params.get(p + "w13_input_scale_reduced").data<float>()[0], in13);
    EXPECT_EQ(l->params.get(p + "w2_input_scale_reduced").data<float>()[0], in2);
    EXPECT_EQ(l->params.get(p + "w13_input_scale_quant").data<float>()[0], 1.0f / in13);
    EXPECT_EQ(l->params.get(p + "w2_input_scale_quant").data<float>()[0], 1.0f / in2);
    const float* g1 = l->params.get(p + "g1_alphas").data<float>();
    const float* g2 = l->params.get(p + "g2_alphas").data<float>();
    for (int64_t e = 0; e < kExperts; ++e) {
      EXPECT_EQ(g1[2 * e], in13 * c.experts[e][0].weight_scale_2);
      EXPECT_EQ(g1[2 * e + 1], in13 * c.experts[e][1].weight_scale_2);
      EXPECT_EQ(g2[e], in2 * c.experts[e][2].weight_scale_2);
    }
    EXPECT_NE(g1[2], g1[3]) << "expert 1's gate and up differ";
    EXPECT_EQ(l->params.contains(p + "g1_scale_c"), layout == WeightLayout::Trtllm);
    if (layout == WeightLayout::Trtllm) {
      EXPECT_EQ(l->params.get(p + "g1_scale_c").data<float>()[3], (1.0f / in2) * g1[3]);
    }
  }
  auto none = create_and_load(c, WeightLayout::Cutlass, ActQuant::None);
  EXPECT_EQ(none->params.get(c.spec.name + ".g1_alphas").data<float>()[1], c.experts[0][1].weight_scale_2)
      << "none mode ignores input scales";
}

TEST(Nvfp4MoE, ScalesAliasExactlyWhenTheShapeAllowsAndAddressesNeverMove) {
  for (const MoeShape* shape : {&kAliasing, &kPadding})
    for (WeightLayout layout : kLayouts) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, weight_layout_name(layout)));
      const MoeCase c = make_case(*shape);
      auto method = make_moe_method(c.spec, true, {.layout = layout, .act_quant = ActQuant::Static});
      ParameterSet params;
      method->create_weights(params);
      const ParamSnapshot created = snapshot(params);
      std::vector<CheckpointBinding> bindings;
      method->bind_checkpoint(bindings);
      load_bindings(params, bindings, c.checkpoint);
      method->process_weights_after_loading(params);
      const ParamSnapshot processed = snapshot(params);
      for (const auto& [name, address] : created.address) EXPECT_EQ(processed.address.at(name), address) << name;
      const int64_t H = shape->hidden, I = shape->intermediate;
      const std::string p = c.spec.name + ".";
      EXPECT_EQ(params.are_aliases(p + "w13_weight_scale", p + "w13_blockscale_swizzled"),
                swizzle_preserves_shape(2 * I, H / 16));
      EXPECT_EQ(params.are_aliases(p + "w2_weight_scale", p + "w2_blockscale_swizzled"),
                swizzle_preserves_shape(H, I / 16));
      if (!swizzle_preserves_shape(H, I / 16)) {
        EXPECT_EQ(params.get(p + "w2_blockscale_swizzled").shape, (Shape{kExperts, 128, 4}));
      }
      load_bindings(params, bindings, c.checkpoint);
      method->process_weights_after_loading(params);
      EXPECT_EQ(snapshot(params).bytes, processed.bytes) << "a reload re-derives the same bytes";
      for (const auto& [name, address] : processed.address) EXPECT_EQ(params.get(name).raw(), address) << name;
    }
}

TEST(Nvfp4MoE, ExportLogicalGivesBackTheLoadedBytes) {
  for (const MoeShape* shape : {&kAliasing, &kPadding})
    for (WeightLayout layout : kLayouts) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, weight_layout_name(layout)));
      const MoeCase c = make_case(*shape);
      auto l = create_and_load(c, layout, ActQuant::Static);
      std::vector<std::pair<std::string, Tensor>> exported;
      l->method->export_logical(l->params, exported);
      ASSERT_EQ(exported.size(), c.checkpoint.size());
      for (const auto& [name, tensor] : exported) {
        ASSERT_TRUE(c.checkpoint.contains(name)) << name;
        EXPECT_EQ(tensor.dtype, c.checkpoint.at(name).dtype) << name;
        EXPECT_EQ(tensor.shape, c.checkpoint.at(name).shape) << name;
        EXPECT_EQ(bytes_of(tensor), bytes_of(c.checkpoint.at(name))) << name;
      }
    }
}

TEST(Nvfp4MoE, OnlineQuantGroupsArePerExpertGateUpAndDown) {
  const MoeCase c = make_case(kAliasing);
  auto method = make_moe_method(c.spec, true, {});
  std::vector<OnlineQuantGroup> groups;
  method->bind_online_quant(groups);
  ASSERT_EQ(groups.size(), 2u * kExperts);
  const OnlineQuantGroup &gate_up = groups[2 * 3], &down = groups[2 * 3 + 1];
  EXPECT_EQ(gate_up.checkpoint_names, (std::vector<std::string>{"model.layers.1.mlp.experts.3.gate_proj.weight",
                                                                "model.layers.1.mlp.experts.3.up_proj.weight"}));
  EXPECT_EQ(gate_up.weight_byte_offset, 3u * 128 * 64);
  EXPECT_EQ(gate_up.block_scale_byte_offset, 3u * 128 * 8);
  EXPECT_EQ(gate_up.global_scale_slots, (std::vector<size_t>{6, 7}));
  EXPECT_EQ(down.checkpoint_names, std::vector<std::string>{"model.layers.1.mlp.experts.3.down_proj.weight"});
  EXPECT_EQ(down.n_rows, std::vector<int64_t>{128});
  EXPECT_EQ(down.in_features, 64);
  EXPECT_EQ(down.weight_byte_offset, 3u * 128 * 32);
  EXPECT_EQ(down.global_scale_slots, std::vector<size_t>{3});
}

TEST(Nvfp4MoE, RejectsBadRoutingAndShapes) {
  const MoeCase c = make_case(kPadding);
  auto l = create_and_load(c, WeightLayout::Cutlass, ActQuant::None);
  const auto x = random_activations(2, kPadding.hidden, 1);
  Routing r = make_routing(2, 2);
  r.ids[3] = 5;
  EXPECT_THAT([&] { apply(*l, x, r, 2); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr(c.spec.name), HasSubstr("topk_ids[1, 1] = 5"))));
  r.ids[3] = r.ids[2];
  EXPECT_THAT([&] { apply(*l, x, r, 2); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr(c.spec.name), HasSubstr("twice"))));

  MoESpec narrow = c.spec;
  narrow.hidden = 80;  // w2 has 80 rows: no 32-row shuffle blocks
  ParameterSet params;
  EXPECT_THAT(
      [&] { make_moe_method(narrow, true, {.layout = WeightLayout::Trtllm})->create_weights(params); },
      ::testing::ThrowsMessage<Error>(AllOf(HasSubstr("model.layers.1.mlp.experts.w2_weight"), HasSubstr("80 rows"))));
}

}  // namespace
}  // namespace fp4serve::test
