// ModelOptNvfp4Linear: create -> load raw bytes -> post-process -> apply against float64 references built from
// format's nvfp4_dequantize and activation fake-quant, in both layouts, on an aliasing shape (N=256, K=128) and a
// padding one (N=96, K=48); plus aliasing, addresses, reload, exact per-shard alphas and export.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "format/act_quant.h"
#include "format/layout.h"
#include "quant/method.h"
#include "quant_test_util.h"

namespace fp4serve::test {
namespace {

using ::testing::HasSubstr;

struct ShapeCase {
  const char* label;
  int64_t k;
  std::vector<int64_t> shard_rows;
};
// N = 256 (Kb = 8): the swizzle keeps the shape, scales alias. N = 96 (Kb = 3): padded to [128, 4].
const ShapeCase kAliasing{"N256_K128", 128, {128, 64, 64}};
const ShapeCase kPadding{"N96_K48", 48, {32, 32, 32}};
constexpr WeightLayout kLayouts[] = {WeightLayout::Cutlass, WeightLayout::Trtllm};

// A fused linear, its checkpoint and everything the references need.
struct LinearCase {
  LinearSpec spec;
  TensorMap checkpoint;
  std::vector<QuantizedProjection> shards;
  std::vector<float> input_scales;
};

LinearCase make_case(const ShapeCase& shape, std::vector<float> scale_2_factors = {},
                     std::vector<float> input_scales = {}) {
  LinearCase c;
  c.spec.name = "model.layers.0.self_attn.qkv_proj";
  c.spec.in_features = shape.k;
  const char* names[] = {"q_proj", "k_proj", "v_proj"};
  for (size_t s = 0; s < shape.shard_rows.size(); ++s) {
    const std::string prefix = std::string("model.layers.0.self_attn.") + names[s];
    c.spec.shards.push_back({prefix, shape.shard_rows[s]});
    const float factor = scale_2_factors.empty() ? 1.0f : scale_2_factors[s];
    c.shards.push_back(make_projection(shape.shard_rows[s], shape.k, 100 + static_cast<uint32_t>(s), factor));
    c.input_scales.push_back(input_scales.empty() ? 0.004f : input_scales[s]);
    add_projection(c.checkpoint, prefix, c.shards[s], shape.shard_rows[s], shape.k, c.input_scales[s]);
  }
  return c;
}

struct LoadedLinear {
  std::unique_ptr<LinearMethod> method;
  ParameterSet params;
  Workspace ws;
};

std::unique_ptr<LoadedLinear> create_and_load(const LinearCase& c, WeightLayout layout, ActQuant mode) {
  auto l = std::make_unique<LoadedLinear>();
  l->method = make_linear_method(c.spec, true, {.layout = layout, .act_quant = mode});
  l->method->create_weights(l->params);
  std::vector<CheckpointBinding> bindings;
  l->method->bind_checkpoint(bindings);
  load_bindings(l->params, bindings, c.checkpoint);
  l->method->process_weights_after_loading(l->params);
  return l;
}

std::vector<float> apply(LoadedLinear& l, const std::vector<float>& x, int64_t m) {
  const int64_t k = l.method->spec().in_features, n = l.method->spec().out_features();
  Tensor xt = host_tensor({m, k}, DType::F32, x);
  Tensor y = Tensor::empty({m, n}, DType::F32, Device::CPU);
  l.method->apply(l.params, xt, y, l.ws);
  return {y.data<float>(), y.data<float>() + m * n};
}

// float64 reference: y[t, n] = sum_k a_s[t, k] * W_hat[n, k] with W_hat = nvfp4_dequantize(.., weight_scale_2)
// and a_s the activation each shard sees (x, or its fake-quantized value).
std::vector<double> reference(const LinearCase& c, const std::vector<float>& x, int64_t m, ActQuant mode) {
  const int64_t k = c.spec.in_features, n_total = c.spec.out_features();
  std::vector<double> y(static_cast<size_t>(m * n_total));
  int64_t first_row = 0;
  for (size_t s = 0; s < c.shards.size(); ++s) {
    const int64_t rows = c.spec.shards[s].out_features;
    std::vector<float> w(static_cast<size_t>(rows * k));
    nvfp4_dequantize(c.shards[s].packed.data(), c.shards[s].scales.data(), c.shards[s].weight_scale_2, rows, k,
                     w.data());
    std::vector<float> a = x;
    if (mode == ActQuant::Static) fake_quantize_activations_static(x.data(), m, k, c.input_scales[s], a.data());
    if (mode == ActQuant::PerToken) fake_quantize_activations_per_token(x.data(), m, k, a.data());
    for (int64_t t = 0; t < m; ++t)
      for (int64_t r = 0; r < rows; ++r) {
        double acc = 0;
        for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(a[t * k + i]) * w[r * k + i];
        y[t * n_total + first_row + r] = acc;
      }
    first_row += rows;
  }
  return y;
}

// bf16 output rounding (half an ulp = 2^-9 relative) plus fp32 accumulation over K <= 128 terms.
constexpr double kRelTol = 1.0 / 256, kAbsTol = 1e-4;

TEST(Nvfp4Linear, NoneModeMatchesFloat64Reference) {
  for (const ShapeCase* shape : {&kAliasing, &kPadding})
    for (WeightLayout layout : kLayouts)
      for (int64_t m : {1, 13}) {
        SCOPED_TRACE(fmt::format("{} {} m={}", shape->label, weight_layout_name(layout), m));
        const LinearCase c = make_case(*shape);
        auto l = create_and_load(c, layout, ActQuant::None);
        const auto x = random_activations(m, shape->k, 7);
        expect_close(apply(*l, x, m), reference(c, x, m, ActQuant::None), kRelTol, kAbsTol, "y");
      }
}

// The kernel's documented order (gemm_rows.h), spelled as plain scalar loops over exact W_q values: bitwise equal,
// for a full token tile (tokens 0-7) and a partial one (8-10). bf16 output rounding hides most reorderings, so two
// tokens carry +B and -B where a row has equal weights at k and k + 8: the tree cancels them exactly, any other
// order (e.g. a plain running sum) loses the small terms of that row.
TEST(Nvfp4Linear, FollowsTheDocumentedSummationOrderBitwise) {
  const LinearCase c = make_case(kPadding, {1.0f, 2.0f, 0.5f});
  const int64_t m = 11, k = kPadding.k, n_total = c.spec.out_features();
  std::vector<std::vector<float>> w;
  for (size_t s = 0; s < c.shards.size(); ++s)
    w.push_back(dequantize_unit(c.shards[s].packed, c.shards[s].scales, c.spec.shards[s].out_features, k));
  auto x = random_activations(m, k, 8);
  int64_t crafted_row = -1;
  for (int64_t r = 0; r < c.spec.shards[0].out_features && crafted_row < 0; ++r)
    for (int64_t i = 0; i < 8 && crafted_row < 0; ++i)
      if (w[0][r * k + i] != 0.0f && w[0][r * k + i] == w[0][r * k + i + 8]) {
        crafted_row = r;
        for (int64_t t : {2, 9}) x[t * k + i] = 0x1p24f, x[t * k + i + 8] = -0x1p24f;
      }
  ASSERT_GE(crafted_row, 0) << "no row with equal weights 8 apart; change the seed";

  auto documented = [&](size_t s, int64_t t, int64_t r) {
    float acc = 0.0f;
    for (int64_t b = 0; b < k / 16; ++b) {
      float p[16], q[8], s4[4];
      for (int i = 0; i < 16; ++i) p[i] = x[t * k + b * 16 + i] * w[s][r * k + b * 16 + i];
      for (int i = 0; i < 8; ++i) q[i] = p[i] + p[i + 8];
      for (int i = 0; i < 4; ++i) s4[i] = q[i] + q[i + 4];
      acc += (s4[0] + s4[2]) + (s4[1] + s4[3]);
    }
    return round_to_bf16(acc * c.shards[s].weight_scale_2);
  };
  auto running_sum = [&](size_t s, int64_t t, int64_t r) {
    float acc = 0.0f;
    for (int64_t i = 0; i < k; ++i) acc += x[t * k + i] * w[s][r * k + i];
    return round_to_bf16(acc * c.shards[s].weight_scale_2);
  };
  EXPECT_NE(documented(0, 2, crafted_row), running_sum(0, 2, crafted_row))
      << "the crafted token must tell orders apart";

  for (WeightLayout layout : kLayouts) {
    SCOPED_TRACE(weight_layout_name(layout));
    auto l = create_and_load(c, layout, ActQuant::None);
    const auto y = apply(*l, x, m);
    int64_t first_row = 0;
    for (size_t s = 0; s < c.shards.size(); ++s) {
      for (int64_t t = 0; t < m; ++t)
        for (int64_t r = 0; r < c.spec.shards[s].out_features; ++r)
          ASSERT_EQ(y[t * n_total + first_row + r], documented(s, t, r)) << "t=" << t << " row=" << first_row + r;
      first_row += c.spec.shards[s].out_features;
    }
  }
}

TEST(Nvfp4Linear, StaticModeUsesEachShardsInputScale) {
  // Unequal input scales and weight_scale_2 across q/k/v: every shard keeps its own exact alpha.
  const LinearCase c = make_case(kAliasing, {1.0f, 1.5f, 0.75f}, {0.002f, 0.004f, 0.003f});
  for (WeightLayout layout : kLayouts) {
    SCOPED_TRACE(weight_layout_name(layout));
    auto l = create_and_load(c, layout, ActQuant::Static);
    const std::vector<float> alpha = {l->params.get(c.spec.name + ".alpha").data<float>(),
                                      l->params.get(c.spec.name + ".alpha").data<float>() + 3};
    const std::vector<float> inverse = {l->params.get(c.spec.name + ".input_scale_inv").data<float>(),
                                        l->params.get(c.spec.name + ".input_scale_inv").data<float>() + 3};
    for (size_t s = 0; s < 3; ++s) {
      EXPECT_EQ(alpha[s], c.input_scales[s] * c.shards[s].weight_scale_2);
      EXPECT_EQ(inverse[s], 1.0f / c.input_scales[s]);
    }
    const int64_t m = 9;
    const auto x = random_activations(m, kAliasing.k, 9);
    expect_close(apply(*l, x, m), reference(c, x, m, ActQuant::Static), kRelTol, kAbsTol, "y");
  }
}

TEST(Nvfp4Linear, PerTokenModeScalesEachRowByItsOwnGlobalScale) {
  const LinearCase c = make_case(kPadding, {1.0f, 1.25f, 1.0f});
  for (WeightLayout layout : kLayouts) {
    SCOPED_TRACE(weight_layout_name(layout));
    auto l = create_and_load(c, layout, ActQuant::PerToken);
    const int64_t m = 10;
    auto x = random_activations(m, kPadding.k, 10);
    for (int64_t i = 0; i < kPadding.k; ++i) {
      x[3 * kPadding.k + i] *= 64.0f;  // rows of very different magnitude, and an all-zero row
      x[5 * kPadding.k + i] = 0.0f;
    }
    const auto alpha = l->params.get(c.spec.name + ".alpha").data<float>();
    for (size_t s = 0; s < 3; ++s) EXPECT_EQ(alpha[s], c.shards[s].weight_scale_2) << "input_scale is ignored";
    const auto y = apply(*l, x, m);
    expect_close(y, reference(c, x, m, ActQuant::PerToken), kRelTol, kAbsTol, "y");
    for (int64_t n = 0; n < c.spec.out_features(); ++n) EXPECT_EQ(y[5 * c.spec.out_features() + n], 0.0f);
  }
}

TEST(Nvfp4Linear, LayoutsGiveBitwiseEqualOutputs) {
  for (const ShapeCase* shape : {&kAliasing, &kPadding})
    for (ActQuant mode : {ActQuant::None, ActQuant::Static, ActQuant::PerToken}) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, act_quant_name(mode)));
      const LinearCase c = make_case(*shape, {1.0f, 0.5f, 2.0f}, {0.003f, 0.003f, 0.005f});
      auto cutlass = create_and_load(c, WeightLayout::Cutlass, mode);
      auto trtllm = create_and_load(c, WeightLayout::Trtllm, mode);
      const int64_t m = 17;
      const auto x = random_activations(m, shape->k, 11);
      EXPECT_EQ(apply(*cutlass, x, m), apply(*trtllm, x, m));
    }
}

TEST(Nvfp4Linear, ScalesAliasExactlyWhenTheShapeAllowsAndAddressesNeverMove) {
  for (const ShapeCase* shape : {&kAliasing, &kPadding})
    for (WeightLayout layout : kLayouts) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, weight_layout_name(layout)));
      const LinearCase c = make_case(*shape);
      auto method = make_linear_method(c.spec, true, {.layout = layout, .act_quant = ActQuant::Static});
      ParameterSet params;
      method->create_weights(params);
      const ParamSnapshot created = snapshot(params);
      std::vector<CheckpointBinding> bindings;
      method->bind_checkpoint(bindings);
      load_bindings(params, bindings, c.checkpoint);
      method->process_weights_after_loading(params);
      const ParamSnapshot processed = snapshot(params);
      for (const auto& [name, address] : created.address) EXPECT_EQ(processed.address.at(name), address) << name;

      const int64_t n = c.spec.out_features(), kb = shape->k / 16;
      const std::string scale = c.spec.name + ".weight_scale", interleaved = scale + "_interleaved";
      EXPECT_EQ(params.are_aliases(scale, interleaved), swizzle_preserves_shape(n, kb));
      const Shape expected = swizzle_preserves_shape(n, kb) ? Shape{n, kb} : Shape{128, 4};
      EXPECT_EQ(params.get(interleaved).shape, expected);
      for (const char* small : {".alpha", ".input_scale_inv"}) {
        EXPECT_EQ(params.get(c.spec.name + small).shape, Shape{3});
        EXPECT_FALSE(params.are_aliases(c.spec.name + small, c.spec.name + ".input_scale"));
      }
      // Every derived name keeps its address on the next load too.
      load_bindings(params, bindings, c.checkpoint);
      method->process_weights_after_loading(params);
      for (const auto& [name, address] : processed.address) EXPECT_EQ(params.get(name).raw(), address) << name;
    }
}

// The model-level flag guards against double post-processing; the methods only promise that load -> process,
// repeated, gives the same bytes every time (a reload re-derives from the raw bytes).
TEST(Nvfp4Linear, ReloadGivesIdenticalBytes) {
  for (const ShapeCase* shape : {&kAliasing, &kPadding})
    for (WeightLayout layout : kLayouts) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, weight_layout_name(layout)));
      const LinearCase c = make_case(*shape, {1.0f, 2.0f, 1.0f});
      auto l = create_and_load(c, layout, ActQuant::Static);
      const ParamSnapshot first = snapshot(l->params);
      std::vector<CheckpointBinding> bindings;
      l->method->bind_checkpoint(bindings);
      load_bindings(l->params, bindings, c.checkpoint);
      l->method->process_weights_after_loading(l->params);
      EXPECT_EQ(snapshot(l->params).bytes, first.bytes);
    }
}

TEST(Nvfp4Linear, ExportLogicalGivesBackTheLoadedBytes) {
  for (const ShapeCase* shape : {&kAliasing, &kPadding})
    for (WeightLayout layout : kLayouts) {
      SCOPED_TRACE(fmt::format("{} {}", shape->label, weight_layout_name(layout)));
      const LinearCase c = make_case(*shape, {1.0f, 3.0f, 1.0f}, {0.001f, 0.002f, 0.003f});
      auto l = create_and_load(c, layout, ActQuant::Static);
      std::vector<std::pair<std::string, Tensor>> exported;
      l->method->export_logical(l->params, exported);
      ASSERT_EQ(exported.size(), c.checkpoint.size());
      for (const auto& [name, tensor] : exported) {
        ASSERT_TRUE(c.checkpoint.contains(name)) << name;
        const Tensor& loaded = c.checkpoint.at(name);
        EXPECT_EQ(tensor.dtype, loaded.dtype) << name;
        EXPECT_EQ(tensor.shape, loaded.shape) << name;
        EXPECT_EQ(bytes_of(tensor), bytes_of(loaded)) << name;
      }
    }
}

TEST(Nvfp4Linear, BindingsCoverEveryRawByteExactlyOnce) {
  const LinearCase c = make_case(kPadding);
  for (ActQuant mode : {ActQuant::None, ActQuant::Static}) {
    auto method = make_linear_method(c.spec, true, {.act_quant = mode});
    ParameterSet params;
    method->create_weights(params);
    std::vector<CheckpointBinding> bindings;
    method->bind_checkpoint(bindings);
    EXPECT_EQ(bindings.size(), 12u);
    std::map<std::string, std::vector<int>> covered;
    for (const auto& name : params.names()) covered[name].assign(params.get(name).nbytes(), 0);
    for (const auto& b : bindings) {
      const size_t nbytes = shape_numel(b.shape) * dtype_size(b.dtype);
      for (size_t i = 0; i < nbytes; ++i) ++covered.at(b.param).at(b.byte_offset + i);
      if (b.role == BindingRole::InputScale) {
        EXPECT_EQ(b.optional, mode != ActQuant::Static) << b.checkpoint_name;
      }
    }
    for (const auto& [name, counts] : covered) {
      for (int count : counts) ASSERT_EQ(count, 1) << name;
    }
  }
}

TEST(Nvfp4Linear, OnlineQuantGroupIsTheWholeFusedLinear) {
  const LinearCase c = make_case(kAliasing);
  auto method = make_linear_method(c.spec, true, {});
  std::vector<OnlineQuantGroup> groups;
  method->bind_online_quant(groups);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].checkpoint_names, (std::vector<std::string>{"model.layers.0.self_attn.q_proj.weight",
                                                                  "model.layers.0.self_attn.k_proj.weight",
                                                                  "model.layers.0.self_attn.v_proj.weight"}));
  EXPECT_EQ(groups[0].n_rows, (std::vector<int64_t>{128, 64, 64}));
  EXPECT_EQ(groups[0].global_scale_slots, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(groups[0].weight_param, c.spec.name + ".weight");
  EXPECT_EQ(groups[0].in_features, 128);
}

TEST(Nvfp4Linear, ZeroWeightsAndAnEmptyBatch) {
  LinearCase c;
  c.spec = {
      .name = "model.layers.0.mlp.down_proj", .in_features = 32, .shards = {{"model.layers.0.mlp.down_proj", 32}}};
  QuantizedProjection zero;
  zero.source.assign(32 * 32, 0);
  zero.packed.resize(32 * 16);
  zero.scales.resize(32 * 2);
  zero.weight_scale_2 = nvfp4_global_scale(0.0f);
  EXPECT_EQ(zero.weight_scale_2, 1.0f);
  nvfp4_quantize(zero.source.data(), 32, 32, zero.weight_scale_2, zero.packed.data(), zero.scales.data());
  add_projection(c.checkpoint, "model.layers.0.mlp.down_proj", zero, 32, 32, 1.0f);
  for (WeightLayout layout : kLayouts) {
    auto l = create_and_load(c, layout, ActQuant::Static);
    for (float v : apply(*l, random_activations(3, 32, 1), 3)) EXPECT_EQ(v, 0.0f);
    EXPECT_TRUE(apply(*l, {}, 0).empty());
  }
}

TEST(Nvfp4Linear, RejectsShapesALayoutCannotTake) {
  LinearSpec spec{.name = "model.layers.2.self_attn.qkv_proj",
                  .in_features = 64,
                  .shards = {{"model.layers.2.self_attn.q_proj", 48}}};
  ParameterSet params;
  EXPECT_THAT([&] { make_linear_method(spec, true, {.layout = WeightLayout::Trtllm})->create_weights(params); },
              ::testing::ThrowsMessage<Error>(
                  AllOf(HasSubstr("model.layers.2.self_attn.qkv_proj"), HasSubstr("48 rows"), HasSubstr("32"))));
  make_linear_method(spec, true, {.layout = WeightLayout::Cutlass})->create_weights(params);  // fine for CUTLASS

  LinearSpec odd_k{
      .name = "model.layers.2.mlp.down_proj", .in_features = 40, .shards = {{"model.layers.2.mlp.down_proj", 32}}};
  EXPECT_THAT([&] { make_linear_method(odd_k, true, {})->create_weights(params); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr("model.layers.2.mlp.down_proj"),
                                                    HasSubstr("in_features = 40"), HasSubstr("multiple of 16"))));
}

TEST(Nvfp4Linear, ApplyRejectsBadOperandsAndUnprocessedWeights) {
  const LinearCase c = make_case(kPadding);
  auto method = make_linear_method(c.spec, true, {});
  ParameterSet params;
  method->create_weights(params);
  Workspace ws;
  Tensor x = Tensor::empty({2, 48}, DType::F32, Device::CPU), y = Tensor::empty({2, 96}, DType::F32, Device::CPU);
  EXPECT_THAT(
      [&] { method->apply(params, x, y, ws); },
      ::testing::ThrowsMessage<Error>(AllOf(HasSubstr(c.spec.name), HasSubstr("process_weights_after_loading"))));
  std::vector<CheckpointBinding> bindings;
  method->bind_checkpoint(bindings);
  load_bindings(params, bindings, c.checkpoint);
  method->process_weights_after_loading(params);
  Tensor wrong_x = Tensor::empty({2, 47}, DType::F32, Device::CPU);
  EXPECT_THAT(
      [&] { method->apply(params, wrong_x, y, ws); },
      ::testing::ThrowsMessage<Error>(AllOf(HasSubstr(c.spec.name), HasSubstr("operand x"), HasSubstr("[2, 47]"))));
  Tensor wrong_y = Tensor::empty({2, 96}, DType::BF16, Device::CPU);
  EXPECT_THAT([&] { method->apply(params, x, wrong_y, ws); },
              ::testing::ThrowsMessage<Error>(AllOf(HasSubstr("operand y"), HasSubstr("expected F32 [2, 96]"))));
}

}  // namespace
}  // namespace fp4serve::test
