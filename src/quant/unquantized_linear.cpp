#include "common/error.h"
#include "kernels/cpu/bf16_gemm.h"
#include "quant/linear_methods.h"
#include "quant/method_util.h"

namespace fp4serve {

UnquantizedLinear::UnquantizedLinear(LinearSpec spec, const QuantOptions& options)
    : LinearMethod(std::move(spec)), options_(options), weight_(spec_.name + ".weight") {}

void UnquantizedLinear::create_weights(ParameterSet& params) const {
  FP4_CHECK(spec_.in_features > 0 && spec_.out_features() > 0, "linear '{}': bad shape [{}, {}]", spec_.name,
            spec_.out_features(), spec_.in_features);
  params.add(weight_, Tensor::empty({spec_.out_features(), spec_.in_features}, DType::BF16, options_.device));
}

void UnquantizedLinear::bind_checkpoint(std::vector<CheckpointBinding>& out) const {
  const size_t row_bytes = static_cast<size_t>(spec_.in_features) * dtype_size(DType::BF16);
  int64_t first_row = 0;
  for (const auto& shard : spec_.shards) {
    out.push_back({.checkpoint_name = shard.checkpoint_prefix + ".weight",
                   .dtype = DType::BF16,
                   .shape = {shard.out_features, spec_.in_features},
                   .param = weight_,
                   .byte_offset = static_cast<size_t>(first_row) * row_bytes,
                   .role = BindingRole::Weight});
    first_row += shard.out_features;
  }
}

void UnquantizedLinear::bind_online_quant(std::vector<OnlineQuantGroup>&) const {}

void UnquantizedLinear::process_weights_after_loading(ParameterSet&) const {}

void UnquantizedLinear::apply(const ParameterSet& params, const Tensor& x, Tensor& y, Workspace& ws) const {
  const int64_t m = x.shape.empty() ? 0 : x.shape[0], k = spec_.in_features, n = spec_.out_features();
  check_operand(x, DType::F32, {m, k}, spec_.name, "x");
  check_operand(y, DType::F32, {m, n}, spec_.name, "y");
  const Tensor& weight = params.get(weight_);
  check_operand(weight, DType::BF16, {n, k}, spec_.name, "weight");
  uint8_t* scratch = ws.reserve(bf16_gemm_scratch_bytes(m, k), Device::CPU);
  bf16_gemm_cpu(x.data<float>(), m, k, weight.data<bf16_bits>(), n, y.data<float>(), n, scratch);
}

void UnquantizedLinear::export_logical(const ParameterSet& params,
                                       std::vector<std::pair<std::string, Tensor>>& out) const {
  const Tensor weight = to_host(params.get(weight_));
  int64_t first_row = 0;
  for (const auto& shard : spec_.shards) {
    out.emplace_back(shard.checkpoint_prefix + ".weight", weight.rows(first_row, shard.out_features));
    first_row += shard.out_features;
  }
}

}  // namespace fp4serve
