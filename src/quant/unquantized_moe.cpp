#include <fmt/format.h>

#include "common/error.h"
#include "kernels/cpu/moe_experts.h"
#include "quant/method_util.h"
#include "quant/moe_methods.h"

namespace fp4serve {

UnquantizedMoE::UnquantizedMoE(MoESpec spec, const QuantOptions& options)
    : MoEMethod(std::move(spec)), options_(options) {}

void UnquantizedMoE::create_weights(ParameterSet& params) const {
  const int64_t E = spec_.n_experts, H = spec_.hidden, I = spec_.intermediate;
  FP4_CHECK(E > 0 && H > 0 && I > 0, "MoE '{}': bad sizes (experts {}, hidden {}, intermediate {})", spec_.name, E, H,
            I);
  params.add(param("w13_weight"), Tensor::empty({E, 2 * I, H}, DType::BF16, options_.device));
  params.add(param("w2_weight"), Tensor::empty({E, H, I}, DType::BF16, options_.device));
}

void UnquantizedMoE::bind_checkpoint(std::vector<CheckpointBinding>& out) const {
  const int64_t H = spec_.hidden, I = spec_.intermediate;
  const size_t bf16 = dtype_size(DType::BF16);
  for (int64_t e = 0; e < spec_.n_experts; ++e) {
    const std::string prefix = fmt::format("{}.{}.", spec_.checkpoint_prefix, e);
    const auto w13_row = static_cast<size_t>(e * 2 * I);
    out.push_back({prefix + "gate_proj.weight", DType::BF16, {I, H}, param("w13_weight"), w13_row * H * bf16});
    out.push_back({prefix + "up_proj.weight", DType::BF16, {I, H}, param("w13_weight"), (w13_row + I) * H * bf16});
    out.push_back(
        {prefix + "down_proj.weight", DType::BF16, {H, I}, param("w2_weight"), static_cast<size_t>(e * H) * I * bf16});
  }
}

void UnquantizedMoE::bind_online_quant(std::vector<OnlineQuantGroup>&) const {}

void UnquantizedMoE::process_weights_after_loading(ParameterSet&) const {}

void UnquantizedMoE::apply(const ParameterSet& params, const Tensor& x, const Tensor& topk_ids,
                           const Tensor& topk_weights, Tensor& y, Workspace& ws) const {
  const int64_t m = x.shape.empty() ? 0 : x.shape[0], H = spec_.hidden;
  const int64_t top_k = topk_ids.shape.size() == 2 ? topk_ids.shape[1] : 0;
  check_operand(x, DType::F32, {m, H}, spec_.name, "x");
  check_operand(topk_ids, DType::I32, {m, top_k}, spec_.name, "topk_ids");
  check_operand(topk_weights, DType::F32, {m, top_k}, spec_.name, "topk_weights");
  check_operand(y, DType::F32, {m, H}, spec_.name, "y");
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
  const MoeBf16Weights weights{.w13 = params.get(param("w13_weight")).data<bf16_bits>(),
                               .w2 = params.get(param("w2_weight")).data<bf16_bits>()};
  moe_bf16_cpu(problem, weights, ws.reserve(moe_bf16_scratch_bytes(problem), Device::CPU));
}

void UnquantizedMoE::export_logical(const ParameterSet& params,
                                    std::vector<std::pair<std::string, Tensor>>& out) const {
  const int64_t E = spec_.n_experts, H = spec_.hidden, I = spec_.intermediate;
  const Tensor w13 = to_host(params.get(param("w13_weight")));
  const Tensor w2 = to_host(params.get(param("w2_weight")));
  // Views of [E * rows, cols] reshapes: rows() slices dim 0.
  Tensor w13_rows = w13, w2_rows = w2;
  w13_rows.shape = {E * 2 * I, H};
  w2_rows.shape = {E * H, I};
  for (int64_t e = 0; e < E; ++e) {
    const std::string prefix = fmt::format("{}.{}.", spec_.checkpoint_prefix, e);
    out.emplace_back(prefix + "gate_proj.weight", w13_rows.rows(e * 2 * I, I));
    out.emplace_back(prefix + "up_proj.weight", w13_rows.rows(e * 2 * I + I, I));
    out.emplace_back(prefix + "down_proj.weight", w2_rows.rows(e * H, H));
  }
}

}  // namespace fp4serve
