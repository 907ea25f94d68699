// UnquantizedLinear / UnquantizedMoE (bf16 checkpoints and excluded modules): bindings, apply against float64
// references (odd K, so the last 16-block of the sum is short), and export of the loaded bytes.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "quant/method.h"
#include "quant_test_util.h"

namespace fp4serve::test {
namespace {

std::vector<float> widen(const std::vector<bf16_bits>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

TEST(UnquantizedLinear, AppliesFusedShardsAndExportsThem) {
  const int64_t K = 40, M = 5;  // K = 2.5 blocks of 16
  const LinearSpec spec{.name = "model.layers.0.mlp.gate_up_proj",
                        .in_features = K,
                        .shards = {{"model.layers.0.mlp.gate_proj", 24}, {"model.layers.0.mlp.up_proj", 8}}};
  TensorMap checkpoint;
  std::vector<float> w;  // [32, K]
  for (size_t s = 0; s < spec.shards.size(); ++s) {
    const auto values = random_bf16(static_cast<size_t>(spec.shards[s].out_features * K), 50 + s);
    checkpoint[spec.shards[s].checkpoint_prefix + ".weight"] =
        host_tensor({spec.shards[s].out_features, K}, DType::BF16, values);
    const auto wide = widen(values);
    w.insert(w.end(), wide.begin(), wide.end());
  }
  auto method = make_linear_method(spec, false, {});
  ParameterSet params;
  method->create_weights(params);
  EXPECT_EQ(params.get(spec.name + ".weight").shape, (Shape{32, K}));
  std::vector<CheckpointBinding> bindings;
  method->bind_checkpoint(bindings);
  ASSERT_EQ(bindings.size(), 2u);
  EXPECT_EQ(bindings[1].byte_offset, 24u * K * 2);
  std::vector<OnlineQuantGroup> groups;
  method->bind_online_quant(groups);
  EXPECT_TRUE(groups.empty());
  load_bindings(params, bindings, checkpoint);
  method->process_weights_after_loading(params);

  const auto x = random_activations(M, K, 51);
  Tensor xt = host_tensor({M, K}, DType::F32, x), y = Tensor::empty({M, 32}, DType::F32, Device::CPU);
  Workspace ws;
  method->apply(params, xt, y, ws);
  std::vector<double> ref(M * 32);
  for (int64_t t = 0; t < M; ++t)
    for (int64_t n = 0; n < 32; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x[t * K + k]) * w[n * K + k];
      ref[t * 32 + n] = acc;
    }
  expect_close({y.data<float>(), y.data<float>() + M * 32}, ref, 1.0 / 256, 1e-5, "y");
  for (int64_t i = 0; i < M * 32; ++i) EXPECT_EQ(y.data<float>()[i], round_to_bf16(y.data<float>()[i]));

  std::vector<std::pair<std::string, Tensor>> exported;
  method->export_logical(params, exported);
  ASSERT_EQ(exported.size(), 2u);
  for (const auto& [name, tensor] : exported) EXPECT_EQ(bytes_of(tensor), bytes_of(checkpoint.at(name))) << name;
}

TEST(UnquantizedMoE, MatchesFloat64ReferenceAndExports) {
  const int64_t E = 3, H = 40, I = 24, M = 6, top_k = 2;
  const MoESpec spec{.name = "model.layers.2.mlp.experts",
                     .checkpoint_prefix = "model.layers.2.mlp.experts",
                     .n_experts = E,
                     .hidden = H,
                     .intermediate = I};
  TensorMap checkpoint;
  std::vector<std::array<std::vector<float>, 3>> w(E);
  const char* names[] = {"gate_proj", "up_proj", "down_proj"};
  for (int64_t e = 0; e < E; ++e)
    for (int p = 0; p < 3; ++p) {
      const Shape shape = p < 2 ? Shape{I, H} : Shape{H, I};
      const auto values = random_bf16(static_cast<size_t>(I * H), static_cast<uint32_t>(60 + 3 * e + p), 0.2f);
      checkpoint[fmt::format("{}.{}.{}.weight", spec.checkpoint_prefix, e, names[p])] =
          host_tensor(shape, DType::BF16, values);
      w[e][p] = widen(values);
    }
  auto method = make_moe_method(spec, false, {});
  ParameterSet params;
  method->create_weights(params);
  std::vector<CheckpointBinding> bindings;
  method->bind_checkpoint(bindings);
  EXPECT_EQ(bindings.size(), 3u * E);
  load_bindings(params, bindings, checkpoint);
  method->process_weights_after_loading(params);

  const auto x = random_activations(M, H, 61);
  const std::vector<int32_t> ids{0, 2, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2};
  const std::vector<float> weights{0.7f, 0.3f, 0.6f, 0.4f, 0.5f, 0.5f, 0.9f, 0.1f, 0.2f, 0.8f, 0.55f, 0.45f};
  Tensor xt = host_tensor({M, H}, DType::F32, x), y = Tensor::empty({M, H}, DType::F32, Device::CPU);
  Workspace ws;
  method->apply(params, xt, host_tensor({M, top_k}, DType::I32, ids), host_tensor({M, top_k}, DType::F32, weights), y,
                ws);

  // qwen3-moe.md with the kernel's bf16 rounding points, float64 sums.
  auto matvec = [](const float* a, const std::vector<float>& m, int64_t rows, int64_t k) {
    std::vector<float> out(rows);
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(a[i]) * m[r * k + i];
      out[r] = round_to_bf16(static_cast<float>(acc));
    }
    return out;
  };
  std::vector<double> ref(M * H, 0.0);
  for (int64_t t = 0; t < M; ++t)
    for (int64_t j = 0; j < top_k; ++j) {
      const auto& expert = w[ids[t * top_k + j]];
      const auto gate = matvec(&x[t * H], expert[0], I, H), up = matvec(&x[t * H], expert[1], I, H);
      std::vector<float> act(I);
      for (int64_t i = 0; i < I; ++i)
        act[i] = round_to_bf16(round_to_bf16(static_cast<float>(gate[i] / (1.0 + std::exp(-double{gate[i]})))) * up[i]);
      const auto down = matvec(act.data(), expert[2], H, I);
      for (int64_t h = 0; h < H; ++h) ref[t * H + h] += double{weights[t * top_k + j]} * down[h];
    }
  expect_close({y.data<float>(), y.data<float>() + M * H}, ref, 2.0 / 256, 1e-3, "y");

  std::vector<std::pair<std::string, Tensor>> exported;
  method->export_logical(params, exported);
  ASSERT_EQ(exported.size(), checkpoint.size());
  for (const auto& [name, tensor] : exported) {
    EXPECT_EQ(tensor.shape, checkpoint.at(name).shape) << name;
    EXPECT_EQ(bytes_of(tensor), bytes_of(checkpoint.at(name))) << name;
  }

  Tensor empty_x = Tensor::empty({0, H}, DType::F32, Device::CPU),
         empty_y = Tensor::empty({0, H}, DType::F32, Device::CPU);
  method->apply(params, empty_x, Tensor::empty({0, top_k}, DType::I32, Device::CPU),
                Tensor::empty({0, top_k}, DType::F32, Device::CPU), empty_y, ws);
}

TEST(QuantOptions, NamesRoundTripAndBadNamesAreRejected) {
  for (WeightLayout layout : {WeightLayout::Cutlass, WeightLayout::Trtllm})
    EXPECT_EQ(parse_weight_layout(weight_layout_name(layout)), layout);
  for (ActQuant mode : {ActQuant::None, ActQuant::Static, ActQuant::PerToken})
    EXPECT_EQ(parse_act_quant(act_quant_name(mode)), mode);
  EXPECT_THROW(parse_weight_layout("flashinfer"), Error);
  EXPECT_THROW(parse_act_quant("dynamic"), Error);
}

}  // namespace
}  // namespace fp4serve::test
