#include <vector>

#include "common/error.h"
#include "kernels/cpu/nvfp4_gemm.h"
#include "quant/linear_methods.h"
#include "quant/method_util.h"

namespace fp4serve {

ModelOptNvfp4Linear::ModelOptNvfp4Linear(LinearSpec spec, const QuantOptions& options)
    : LinearMethod(std::move(spec)), options_(options) {
  shape_ = {.name = spec_.name, .n_matrices = 1, .n_rows = spec_.out_features(), .k = spec_.in_features};
}

void ModelOptNvfp4Linear::create_weights(ParameterSet& params) const {
  FP4_CHECK(shape_.n_rows > 0, "linear '{}': no output rows", spec_.name);
  check_nvfp4_layout(options_.layout, shape_);
  const int64_t n = shape_.n_rows, k = shape_.k, n_shards = static_cast<int64_t>(spec_.shards.size());
  const Device device = options_.device;
  params.add(param("weight"), Tensor::empty({n, k / 2}, DType::U8, device));
  params.add(param("weight_scale"), Tensor::empty({n, k / 16}, DType::F8_E4M3, device));
  params.add(param("weight_scale_2"), Tensor::empty({n_shards}, DType::F32, device));
  fill_f32(params.add(param("input_scale"), Tensor::empty({n_shards}, DType::F32, device)).tensor, 1.0f);
}

void ModelOptNvfp4Linear::bind_checkpoint(std::vector<CheckpointBinding>& out) const {
  const int64_t k = shape_.k;
  int64_t first_row = 0;
  for (size_t s = 0; s < spec_.shards.size(); ++s) {
    const LinearShard& shard = spec_.shards[s];
    const std::string& prefix = shard.checkpoint_prefix;
    const auto rows = static_cast<size_t>(first_row);
    out.push_back({prefix + ".weight",
                   DType::U8,
                   {shard.out_features, k / 2},
                   param("weight"),
                   rows * (k / 2),
                   BindingRole::Weight});
    out.push_back({prefix + ".weight_scale",
                   DType::F8_E4M3,
                   {shard.out_features, k / 16},
                   param("weight_scale"),
                   rows * (k / 16),
                   BindingRole::BlockScale});
    out.push_back({prefix + ".weight_scale_2",
                   DType::F32,
                   {},
                   param("weight_scale_2"),
                   s * sizeof(float),
                   BindingRole::GlobalScale});
    out.push_back({prefix + ".input_scale",
                   DType::F32,
                   {},
                   param("input_scale"),
                   s * sizeof(float),
                   BindingRole::InputScale,
                   options_.act_quant != ActQuant::Static});
    first_row += shard.out_features;
  }
}

void ModelOptNvfp4Linear::bind_online_quant(std::vector<OnlineQuantGroup>& out) const {
  OnlineQuantGroup group{.checkpoint_names = {},
                         .n_rows = {},
                         .in_features = shape_.k,
                         .weight_param = param("weight"),
                         .block_scale_param = param("weight_scale"),
                         .global_scale_param = param("weight_scale_2"),
                         .weight_byte_offset = 0,
                         .block_scale_byte_offset = 0,
                         .global_scale_slots = {}};
  for (size_t s = 0; s < spec_.shards.size(); ++s) {
    group.checkpoint_names.push_back(spec_.shards[s].checkpoint_prefix + ".weight");
    group.n_rows.push_back(spec_.shards[s].out_features);
    group.global_scale_slots.push_back(s);
  }
  out.push_back(std::move(group));
}

void ModelOptNvfp4Linear::process_weights_after_loading(ParameterSet& params) const {
  if (options_.device == Device::CUDA) {
    process_weights_on_gpu(params);
    return;
  }
  if (options_.layout == WeightLayout::Trtllm) {
    const Tensor& weight = params.get(param("weight"));
    Tensor rows = to_host(weight);
    arrange_weight_rows(rows.raw(), shape_, options_.layout);
    copy_into(weight, rows);
  }
  const Tensor raw_scales = to_host(params.get(param("weight_scale")));
  Tensor derived = Tensor::empty(derived_scale_shape(shape_), DType::F8_E4M3, Device::CPU);
  derive_block_scales(raw_scales.raw(), shape_, options_.layout, derived.raw());
  params.alias_or_bind_derived(param("weight_scale"), param("weight_scale_interleaved"), derived);

  const std::vector<float> weight_scale_2 = read_f32(params.get(param("weight_scale_2")));
  const std::vector<float> input_scale = read_f32(params.get(param("input_scale")));
  const bool uses_input_scale = options_.act_quant == ActQuant::Static;
  std::vector<float> alpha(weight_scale_2.size()), input_scale_inv(weight_scale_2.size());
  for (size_t s = 0; s < alpha.size(); ++s) {
    const float act_scale = uses_input_scale ? input_scale[s] : 1.0f;
    alpha[s] = act_scale * weight_scale_2[s];
    input_scale_inv[s] = 1.0f / act_scale;
  }
  const Shape slots{static_cast<int64_t>(alpha.size())};
  params.copy_or_rebind(param("alpha"), host_f32(slots, alpha));
  params.copy_or_rebind(param("input_scale_inv"), host_f32(slots, input_scale_inv));
}

// The same derivations on the GPU, in the parameters' device memory (nothing is staged through the host).
void ModelOptNvfp4Linear::process_weights_on_gpu(ParameterSet& params) const {
  arrange_weight_rows_on_gpu(params.get(param("weight")).raw(), shape_, options_.layout);
  derive_block_scale_param_on_gpu(params, param("weight_scale"), param("weight_scale_interleaved"), shape_,
                                  options_.layout);
  const Shape slots{static_cast<int64_t>(spec_.shards.size())};
  const Tensor& alpha = derived_param(params, param("alpha"), slots, DType::F32, Device::CUDA);
  const Tensor& input_scale_inv = derived_param(params, param("input_scale_inv"), slots, DType::F32, Device::CUDA);
  derive_linear_alphas_on_gpu(params.get(param("weight_scale_2")).data<float>(),
                              params.get(param("input_scale")).data<float>(), slots[0],
                              options_.act_quant == ActQuant::Static, alpha.data<float>(),
                              input_scale_inv.data<float>());
}

void ModelOptNvfp4Linear::apply(const ParameterSet& params, const Tensor& x, Tensor& y, Workspace& ws) const {
  const int64_t m = x.shape.empty() ? 0 : x.shape[0], k = shape_.k, n = shape_.n_rows;
  check_operand(x, DType::F32, {m, k}, spec_.name, "x");
  check_operand(y, DType::F32, {m, n}, spec_.name, "y");
  FP4_CHECK(params.contains(param("weight_scale_interleaved")),
            "{}: apply before process_weights_after_loading; load the weights first", spec_.name);
  const float* alpha = params.get(param("alpha")).data<float>();
  const float* input_scale = params.get(param("input_scale")).data<float>();
  std::vector<Nvfp4LinearShard> shards;
  for (size_t s = 0; s < spec_.shards.size(); ++s)
    shards.push_back({.n_rows = spec_.shards[s].out_features, .alpha = alpha[s], .input_scale = input_scale[s]});
  const Nvfp4WeightView weight{.packed = params.get(param("weight")).data<uint8_t>(),
                               .block_scales = params.get(param("weight_scale_interleaved")).data<uint8_t>(),
                               .n_rows = n,
                               .k = k,
                               .row_order = nvfp4_row_order(options_.layout, false)};
  nvfp4_linear_cpu({.x = x.data<float>(),
                    .m = m,
                    .weight = weight,
                    .activation = nvfp4_activation(options_.act_quant),
                    .shards = shards,
                    .y = y.data<float>(),
                    .scratch = ws.reserve(nvfp4_linear_scratch_bytes(m, k), Device::CPU)});
}

void ModelOptNvfp4Linear::export_logical(const ParameterSet& params,
                                         std::vector<std::pair<std::string, Tensor>>& out) const {
  FP4_CHECK(params.contains(param("weight_scale_interleaved")),
            "{}: export_logical needs post-processed weights; load them first", spec_.name);
  const int64_t n = shape_.n_rows, k = shape_.k;
  Tensor weight = to_host(params.get(param("weight")));
  restore_weight_rows(weight.raw(), shape_, options_.layout);
  Tensor scales = Tensor::empty({n, k / 16}, DType::F8_E4M3, Device::CPU);
  underive_block_scales(to_host(params.get(param("weight_scale_interleaved"))).raw(), shape_, options_.layout,
                        scales.raw());
  const std::vector<float> weight_scale_2 = read_f32(params.get(param("weight_scale_2")));
  const std::vector<float> input_scale = read_f32(params.get(param("input_scale")));
  int64_t first_row = 0;
  for (size_t s = 0; s < spec_.shards.size(); ++s) {
    const LinearShard& shard = spec_.shards[s];
    out.emplace_back(shard.checkpoint_prefix + ".weight", weight.rows(first_row, shard.out_features));
    out.emplace_back(shard.checkpoint_prefix + ".weight_scale", scales.rows(first_row, shard.out_features));
    out.emplace_back(shard.checkpoint_prefix + ".weight_scale_2", host_f32({}, {&weight_scale_2[s], 1}));
    out.emplace_back(shard.checkpoint_prefix + ".input_scale", host_f32({}, {&input_scale[s], 1}));
    first_row += shard.out_features;
  }
}

}  // namespace fp4serve
