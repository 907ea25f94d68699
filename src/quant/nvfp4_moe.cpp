#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/moe_experts.h"
#include "quant/method_util.h"
#include "quant/moe_methods.h"

namespace fp4serve {

ModelOptNvfp4MoE::ModelOptNvfp4MoE(MoESpec spec, const QuantOptions& options)
    : MoEMethod(std::move(spec)), options_(options) {
  w13_shape_ = {.name = param("w13_weight"),
                .n_matrices = spec_.n_experts,
                .n_rows = 2 * spec_.intermediate,
                .k = spec_.hidden,
                .gated = true};
  w2_shape_ = {
      .name = param("w2_weight"), .n_matrices = spec_.n_experts, .n_rows = spec_.hidden, .k = spec_.intermediate};
}

void ModelOptNvfp4MoE::create_weights(ParameterSet& params) const {
  const int64_t E = spec_.n_experts, H = spec_.hidden, I = spec_.intermediate;
  FP4_CHECK(E > 0 && H > 0 && I > 0, "MoE '{}': bad sizes (experts {}, hidden {}, intermediate {})", spec_.name, E, H,
            I);
  check_nvfp4_layout(options_.layout, w13_shape_);
  check_nvfp4_layout(options_.layout, w2_shape_);
  const Device device = options_.device;
  params.add(param("w13_weight"), Tensor::empty({E, 2 * I, H / 2}, DType::U8, device));
  params.add(param("w13_weight_scale"), Tensor::empty({E, 2 * I, H / 16}, DType::F8_E4M3, device));
  params.add(param("w13_weight_scale_2"), Tensor::empty({E, 2}, DType::F32, device));
  fill_f32(params.add(param("w13_input_scale"), Tensor::empty({E, 2}, DType::F32, device)).tensor, 1.0f);
  params.add(param("w2_weight"), Tensor::empty({E, H, I / 2}, DType::U8, device));
  params.add(param("w2_weight_scale"), Tensor::empty({E, H, I / 16}, DType::F8_E4M3, device));
  params.add(param("w2_weight_scale_2"), Tensor::empty({E}, DType::F32, device));
  fill_f32(params.add(param("w2_input_scale"), Tensor::empty({E}, DType::F32, device)).tensor, 1.0f);
}

void ModelOptNvfp4MoE::bind_checkpoint(std::vector<CheckpointBinding>& out) const {
  const int64_t H = spec_.hidden, I = spec_.intermediate;
  const bool input_scale_optional = options_.act_quant != ActQuant::Static;
  // One projection of expert e: its rows start at `first_row` of the [E * rows, K] stack of `w` (w13 or w2).
  auto bind = [&](const std::string& prefix, const std::string& w, int64_t rows, int64_t k, int64_t first_row,
                  size_t slot) {
    const auto row = static_cast<size_t>(first_row);
    out.push_back(
        {prefix + ".weight", DType::U8, {rows, k / 2}, param(w + "_weight"), row * (k / 2), BindingRole::Weight});
    out.push_back({prefix + ".weight_scale",
                   DType::F8_E4M3,
                   {rows, k / 16},
                   param(w + "_weight_scale"),
                   row * (k / 16),
                   BindingRole::BlockScale});
    out.push_back({prefix + ".weight_scale_2",
                   DType::F32,
                   {},
                   param(w + "_weight_scale_2"),
                   slot * sizeof(float),
                   BindingRole::GlobalScale});
    out.push_back({prefix + ".input_scale",
                   DType::F32,
                   {},
                   param(w + "_input_scale"),
                   slot * sizeof(float),
                   BindingRole::InputScale,
                   input_scale_optional});
  };
  for (int64_t e = 0; e < spec_.n_experts; ++e) {
    const std::string prefix = fmt::format("{}.{}.", spec_.checkpoint_prefix, e);
    const auto slot = static_cast<size_t>(e);
    bind(prefix + "gate_proj", "w13", I, H, e * 2 * I, 2 * slot);
    bind(prefix + "up_proj", "w13", I, H, e * 2 * I + I, 2 * slot + 1);
    bind(prefix + "down_proj", "w2", H, I, e * H, slot);
  }
}

void ModelOptNvfp4MoE::bind_online_quant(std::vector<OnlineQuantGroup>& out) const {
  const int64_t H = spec_.hidden, I = spec_.intermediate;
  for (int64_t e = 0; e < spec_.n_experts; ++e) {
    const std::string prefix = fmt::format("{}.{}.", spec_.checkpoint_prefix, e);
    const auto slot = static_cast<size_t>(e);
    out.push_back({.checkpoint_names = {prefix + "gate_proj.weight", prefix + "up_proj.weight"},
                   .n_rows = {I, I},
                   .in_features = H,
                   .weight_param = param("w13_weight"),
                   .block_scale_param = param("w13_weight_scale"),
                   .global_scale_param = param("w13_weight_scale_2"),
                   .weight_byte_offset = static_cast<size_t>(e * 2 * I * (H / 2)),
                   .block_scale_byte_offset = static_cast<size_t>(e * 2 * I * (H / 16)),
                   .global_scale_slots = {2 * slot, 2 * slot + 1}});
    out.push_back({.checkpoint_names = {prefix + "down_proj.weight"},
                   .n_rows = {H},
                   .in_features = I,
                   .weight_param = param("w2_weight"),
                   .block_scale_param = param("w2_weight_scale"),
                   .global_scale_param = param("w2_weight_scale_2"),
                   .weight_byte_offset = static_cast<size_t>(e * H * (I / 2)),
                   .block_scale_byte_offset = static_cast<size_t>(e * H * (I / 16)),
                   .global_scale_slots = {slot}});
  }
}

void ModelOptNvfp4MoE::process_weights_after_loading(ParameterSet& params) const {
  if (options_.device == Device::CUDA) {
    process_weights_on_gpu(params);
    return;
  }
  const int64_t E = spec_.n_experts;
  for (const auto* shape : {&w13_shape_, &w2_shape_}) {
    const std::string w = shape == &w13_shape_ ? "w13" : "w2";
    if (options_.layout == WeightLayout::Trtllm) {
      const Tensor& weight = params.get(param(w + "_weight"));
      Tensor rows = to_host(weight);
      arrange_weight_rows(rows.raw(), *shape, options_.layout);
      copy_into(weight, rows);
    }
    const Tensor raw_scales = to_host(params.get(param(w + "_weight_scale")));
    Tensor derived = Tensor::empty(derived_scale_shape(*shape), DType::F8_E4M3, Device::CPU);
    derive_block_scales(raw_scales.raw(), *shape, options_.layout, derived.raw());
    params.alias_or_bind_derived(param(w + "_weight_scale"), param(w + "_blockscale_swizzled"),
                                 derived);
  }

  const bool uses_input_scale = options_.act_quant == ActQuant::Static;
  auto reduced = [&](const std::string& name) {
    const std::vector<float> scales = read_f32(params.get(param(name)));
    return uses_input_scale ? *std::max_element(scales.begin(), scales.end()) : 1.0f;
  };
  const float w13_input_scale = reduced("w13_input_scale"), w2_input_scale = reduced("w2_input_scale");
  const float w2_input_scale_quant = 1.0f / w2_input_scale;
  const std::vector<float> w13_weight_scale_2 = read_f32(params.get(param("w13_weight_scale_2")));
  const std::vector<float> w2_weight_scale_2 = read_f32(params.get(param("w2_weight_scale_2")));
  std::vector<float> g1_alphas(w13_weight_scale_2.size()), g2_alphas(w2_weight_scale_2.size());
  std::vector<float> g1_scale_c(g1_alphas.size());
  for (size_t i = 0; i < g1_alphas.size(); ++i) {
    g1_alphas[i] = w13_input_scale * w13_weight_scale_2[i];
    g1_scale_c[i] = w2_input_scale_quant * g1_alphas[i];
  }
  for (size_t e = 0; e < g2_alphas.size(); ++e) g2_alphas[e] = w2_input_scale * w2_weight_scale_2[e];

  auto bind = [&](const std::string& name, const Shape& shape, std::span<const float> values) {
    params.copy_or_rebind(param(name), host_f32(shape, values));
  };
  bind("w13_input_scale_reduced", {1}, {&w13_input_scale, 1});
  bind("w2_input_scale_reduced", {1}, {&w2_input_scale, 1});
  const float w13_input_scale_quant = 1.0f / w13_input_scale;
  bind("w13_input_scale_quant", {1}, {&w13_input_scale_quant, 1});
  bind("w2_input_scale_quant", {1}, {&w2_input_scale_quant, 1});
  bind("g1_alphas", {E, 2}, g1_alphas);
  bind("g2_alphas", {E}, g2_alphas);
  if (options_.layout == WeightLayout::Trtllm) bind("g1_scale_c", {E, 2}, g1_scale_c);
}

// The same derivations on the GPU, in the parameters' device memory (nothing is staged through the host).
void ModelOptNvfp4MoE::process_weights_on_gpu(ParameterSet& params) const {
  const int64_t E = spec_.n_experts;
  for (const auto* shape : {&w13_shape_, &w2_shape_}) {
    const std::string w = shape == &w13_shape_ ? "w13" : "w2";
    arrange_weight_rows_on_gpu(params.get(param(w + "_weight")).raw(), *shape, options_.layout);
    derive_block_scale_param_on_gpu(params, param(w + "_weight_scale"), param(w + "_blockscale_swizzled"), *shape,
                                    options_.layout);
  }
  auto f32 = [&](const std::string& name, const Shape& shape) {
    return derived_param(params, param(name), shape, DType::F32, Device::CUDA).data<float>();
  };
  derive_moe_alphas_on_gpu(
      {.n_experts = E,
       .static_activations = options_.act_quant == ActQuant::Static,
       .w13_weight_scale_2 = params.get(param("w13_weight_scale_2")).data<float>(),
       .w13_input_scale = params.get(param("w13_input_scale")).data<float>(),
       .w2_weight_scale_2 = params.get(param("w2_weight_scale_2")).data<float>(),
       .w2_input_scale = params.get(param("w2_input_scale")).data<float>(),
       .w13_input_scale_reduced = f32("w13_input_scale_reduced", {1}),
       .w2_input_scale_reduced = f32("w2_input_scale_reduced", {1}),
       .w13_input_scale_quant = f32("w13_input_scale_quant", {1}),
       .w2_input_scale_quant = f32("w2_input_scale_quant", {1}),
       .g1_alphas = f32("g1_alphas", {E, 2}),
       .g2_alphas = f32("g2_alphas", {E}),
       .g1_scale_c = options_.layout == WeightLayout::Trtllm ? f32("g1_scale_c", {E, 2}) : nullptr,
       .stream = nullptr});
}

void ModelOptNvfp4MoE::apply(const ParameterSet& params, const Tensor& x, const Tensor& topk_ids,
                             const Tensor& topk_weights, Tensor& y, Workspace& ws) const {
  const int64_t m = x.shape.empty() ? 0 : x.shape[0], H = spec_.hidden;
  const int64_t top_k = topk_ids.shape.size() == 2 ? topk_ids.shape[1] : 0;
  check_operand(x, DType::F32, {m, H}, spec_.name, "x");
  check_operand(topk_ids, DType::I32, {m, top_k}, spec_.name, "topk_ids");
  check_operand(topk_weights, DType::F32, {m, top_k}, spec_.name, "topk_weights");
  check_operand(y, DType::F32, {m, H}, spec_.name, "y");
  FP4_CHECK(params.contains(param("g1_alphas")),
            "{}: apply before process_weights_after_loading; load the weights "
            "first",
            spec_.name);
  const MoeProblem problem{.layer = spec_.name,
                           .x = x.data<float>(),
                           .m = m,
                           .hidden = H,
                           .intermediate = spec_.intermediate,
                           .n_experts = spec_.n_experts,
                           .topk_ids = topk_ids.data<int32_t>(),
                           .topk_weights = topk_weights.data<float>(),
                           .top_k = top_k,
                           .y = y.data<float>()};
  const MoeNvfp4Weights weights{.w13_packed = params.get(param("w13_weight")).data<uint8_t>(),
                                .w13_scales = params.get(param("w13_blockscale_swizzled")).data<uint8_t>(),
                                .w13_row_order = nvfp4_row_order(options_.layout, true),
                                .w2_packed = params.get(param("w2_weight")).data<uint8_t>(),
                                .w2_scales = params.get(param("w2_blockscale_swizzled")).data<uint8_t>(),
                                .w2_row_order = nvfp4_row_order(options_.layout, false),
                                .g1_alphas = params.get(param("g1_alphas")).data<float>(),
                                .g2_alphas = params.get(param("g2_alphas")).data<float>(),
                                .activation = nvfp4_activation(options_.act_quant),
                                .w13_input_scale = params.get(param("w13_input_scale_reduced")).data<float>()[0],
                                .w2_input_scale = params.get(param("w2_input_scale_reduced")).data<float>()[0]};
  moe_nvfp4_cpu(problem, weights, ws.reserve(moe_nvfp4_scratch_bytes(problem), Device::CPU));
}

void ModelOptNvfp4MoE::export_logical(const ParameterSet& params,
                                      std::vector<std::pair<std::string, Tensor>>& out) const {
  FP4_CHECK(params.contains(param("w13_blockscale_swizzled")),
            "{}: export_logical needs post-processed weights; load them first", spec_.name);
  const int64_t E = spec_.n_experts, H = spec_.hidden, I = spec_.intermediate;
  // Each stack as [E * rows, cols] host tensors in checkpoint row order, sliced per projection below.
  auto logical = [&](const Nvfp4MatrixShape& shape, const std::string& w, Tensor& packed, Tensor& scales) {
    packed = to_host(params.get(param(w + "_weight")));
    restore_weight_rows(packed.raw(), shape, options_.layout);
    packed.shape = {E * shape.n_rows, shape.k / 2};
    scales = Tensor::empty({E * shape.n_rows, shape.k / 16}, DType::F8_E4M3, Device::CPU);
    underive_block_scales(to_host(params.get(param(w + "_blockscale_swizzled"))).raw(), shape, options_.layout,
                          scales.raw());
  };
  Tensor w13_packed, w13_scales, w2_packed, w2_scales;
  logical(w13_shape_, "w13", w13_packed, w13_scales);
  logical(w2_shape_, "w2", w2_packed, w2_scales);
  const std::vector<float> w13_weight_scale_2 = read_f32(params.get(param("w13_weight_scale_2")));
  const std::vector<float> w13_input_scale = read_f32(params.get(param("w13_input_scale")));
  const std::vector<float> w2_weight_scale_2 = read_f32(params.get(param("w2_weight_scale_2")));
  const std::vector<float> w2_input_scale = read_f32(params.get(param("w2_input_scale")));
  auto emit = [&](const std::string& prefix, const Tensor& packed, const Tensor& scales, int64_t first_row,
                  int64_t rows, float weight_scale_2, float input_scale) {
    out.emplace_back(prefix + ".weight", packed.rows(first_row, rows));
    out.emplace_back(prefix + ".weight_scale", scales.rows(first_row, rows));
    out.emplace_back(prefix + ".weight_scale_2", host_f32({}, {&weight_scale_2, 1}));
    out.emplace_back(prefix + ".input_scale", host_f32({}, {&input_scale, 1}));
  };
  for (int64_t e = 0; e < E; ++e) {
    const std::string prefix = fmt::format("{}.{}.", spec_.checkpoint_prefix, e);
    const auto slot = static_cast<size_t>(e);
    emit(prefix + "gate_proj", w13_packed, w13_scales, e * 2 * I, I, w13_weight_scale_2[2 * slot],
         w13_input_scale[2 * slot]);
    emit(prefix + "up_proj", w13_packed, w13_scales, e * 2 * I + I, I, w13_weight_scale_2[2 * slot + 1],
         w13_input_scale[2 * slot + 1]);
    emit(prefix + "down_proj", w2_packed, w2_scales, e * H, H, w2_weight_scale_2[slot], w2_input_scale[slot]);
  }
}

}  // namespace fp4serve
