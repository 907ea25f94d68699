// Qwen3Model::forward: the math of qwen3-moe.md with bf16 storage (every activation rounded to bf16 after each op;
// fp32 accumulation, norms and softmax), on the CPU kernels. Rows are the batch's new tokens, sequence by sequence.
#include <fmt/format.h>

#include <algorithm>

#include "common/error.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/kv_cache_write.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/residual_add.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/router_topk.h"
#include "kernels/cpu/silu_mul.h"
#include "model/qwen3_batch_layout.h"

namespace fp4serve {

namespace {

Tensor empty_f32(int64_t rows, int64_t cols) { return Tensor::empty({rows, cols}, DType::F32, Device::CPU); }

PagedKvLayer kv_layer(const KvCacheTensors& kv, int layer) {
  const Shape& s = kv.k.shape;  // [n_layers, n_pages, page_size, n_kv_heads, head_dim]
  const int64_t layer_elements = s[1] * s[2] * s[3] * s[4];
  return {.k = kv.k.data<bf16_bits>() + layer * layer_elements,
          .v = kv.v.data<bf16_bits>() + layer * layer_elements,
          .n_pages = s[1],
          .page_size = s[2],
          .n_kv_heads = s[3],
          .head_dim = s[4]};
}

void rmsnorm(const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  const int64_t dim = weight.shape[0];
  rmsnorm_cpu(x.data<float>(), weight.data<bf16_bits>(), x.numel() / dim, dim, static_cast<float>(eps),
              out.data<float>());
}

}  // namespace

Qwen3Model::BatchLayout Qwen3Model::layout_batch(const ForwardBatch& batch) const {
  FP4_CHECK(!batch.sequences.empty(), "forward: the batch has no sequences");
  FP4_CHECK(batch.kv_cache != nullptr, "forward: the batch has no KV cache");
  const Shape expected_tail{config_.num_key_value_heads, config_.head_dim};
  const KvCacheTensors& kv = *batch.kv_cache;
  FP4_CHECK(kv.k.dtype == DType::BF16 && kv.k.same_shape_and_dtype(kv.v) && kv.k.shape.size() == 5 &&
                kv.k.shape[0] == config_.num_hidden_layers &&
                Shape(kv.k.shape.begin() + 3, kv.k.shape.end()) == expected_tail && kv.k.device() == options_.device &&
                kv.v.device() == options_.device,
            "forward: KV cache K {} / V {} must both be BF16 [{}, n_pages, page_size, {}, {}] on the {} (the model's "
            "device)",
            kv.k.describe(), kv.v.describe(), config_.num_hidden_layers, config_.num_key_value_heads, config_.head_dim,
            device_name(options_.device));
  const int64_t n_pages = kv.k.shape[1], page_size = kv.k.shape[2];

  BatchLayout layout;
  layout.kv_cache = &kv;
  for (size_t s = 0; s < batch.sequences.size(); ++s) {
    const SequenceInput& seq = batch.sequences[s];
    const int64_t n_tokens = static_cast<int64_t>(seq.token_ids.size());
    const int64_t end = seq.start_position + n_tokens;
    FP4_CHECK(n_tokens > 0 && seq.start_position >= 0, "forward: sequence {} has {} new tokens at start position {}", s,
              n_tokens, seq.start_position);
    FP4_CHECK(end <= config_.max_position_embeddings,
              "forward: sequence {} reaches position {}, beyond max_position_embeddings {}", s, end,
              config_.max_position_embeddings);
    FP4_CHECK(static_cast<int64_t>(seq.page_table.size()) * page_size >= end,
              "forward: sequence {} has {} pages of {} tokens, too few for {} positions", s, seq.page_table.size(),
              page_size, end);
    for (int32_t page : seq.page_table)
      FP4_CHECK(page >= 0 && page < n_pages, "forward: sequence {} names page {} outside [0, {})", s, page, n_pages);
    layout.sequences.push_back({.page_table = seq.page_table.data(),
                                .first_position = seq.start_position,
                                .n_tokens = n_tokens,
                                .first_row = layout.n_rows()});
    for (int64_t t = 0; t < n_tokens; ++t) {
      layout.token_ids.push_back(seq.token_ids[t]);
      layout.positions.push_back(static_cast<int32_t>(seq.start_position + t));
    }
    layout.last_rows.push_back(layout.n_rows() - 1);
  }
  return layout;
}

Tensor Qwen3Model::run_linear(const LinearMethod& method, const Tensor& x, const ForwardObserver* observer) {
  if (observer && observer->on_linear_input)
    for (const LinearShard& shard : method.spec().shards) observer->on_linear_input(shard.checkpoint_prefix, x);
  Tensor y = empty_f32(x.shape[0], method.spec().out_features());
  method.apply(params_, x, y, workspace_);
  return y;
}

Tensor Qwen3Model::attention_block(int layer_index, const Tensor& hidden, const BatchLayout& rows,
                                   const ForwardObserver* observer) {
  const Layer& layer = layers_[layer_index];
  const int64_t M = rows.n_rows(), head_dim = config_.head_dim;
  const int64_t n_heads = config_.num_attention_heads, n_kv_heads = config_.num_key_value_heads;
  const int64_t q_size = n_heads * head_dim, kv_size = n_kv_heads * head_dim;
  const Tensor qkv = run_linear(*layer.qkv_proj, hidden, observer);  // [M, q_size + 2 kv_size]

  Tensor q = empty_f32(M, q_size), k = empty_f32(M, kv_size), v = empty_f32(M, kv_size);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = qkv.data<float>() + m * (q_size + 2 * kv_size);
    std::copy_n(row, q_size, q.data<float>() + m * q_size);
    std::copy_n(row + q_size, kv_size, k.data<float>() + m * kv_size);
    std::copy_n(row + q_size + kv_size, kv_size, v.data<float>() + m * kv_size);
  }
  rmsnorm(q, params_.get(layer.prefix + ".self_attn.q_norm.weight"), config_.rms_norm_eps, q);
  rmsnorm(k, params_.get(layer.prefix + ".self_attn.k_norm.weight"), config_.rms_norm_eps, k);
  rope_neox_cpu(q.data<float>(), rows.positions.data(), M, n_heads, head_dim, config_.rope_theta);
  rope_neox_cpu(k.data<float>(), rows.positions.data(), M, n_kv_heads, head_dim, config_.rope_theta);

  const PagedKvLayer cache = kv_layer(*rows.kv_cache, layer_index);
  kv_cache_write_cpu(cache, rows.sequences, k.data<float>(), v.data<float>());
  Tensor attn = empty_f32(M, q_size);
  paged_attention_cpu(cache, rows.sequences, q.data<float>(), n_heads, attn.data<float>());
  return run_linear(*layer.o_proj, attn, observer);
}

Tensor Qwen3Model::mlp_block(int layer_index, const Tensor& hidden, const ForwardObserver* observer) {
  const Layer& layer = layers_[layer_index];
  const int64_t M = hidden.shape[0];
  if (layer.experts) {
    const int64_t k = config_.num_experts_per_tok;
    const Tensor router_logits = run_linear(*layer.router, hidden, observer);  // [M, E]
    Tensor topk_ids = Tensor::empty({M, k}, DType::I32, Device::CPU), topk_weights = empty_f32(M, k);
    router_topk_cpu(router_logits.data<float>(), M, config_.num_experts, k, config_.norm_topk_prob,
                    topk_ids.data<int32_t>(), topk_weights.data<float>());
    if (observer && observer->on_moe_routing) observer->on_moe_routing(layer_index, hidden, topk_ids, topk_weights);
    Tensor y = empty_f32(M, config_.hidden_size);
    layer.experts->apply(params_, hidden, topk_ids, topk_weights, y, workspace_);
    return y;
  }
  const Tensor gate_up = run_linear(*layer.gate_up_proj, hidden, observer);  // [M, 2I]
  const int64_t I = gate_up.shape[1] / 2;
  Tensor activated = empty_f32(M, I);
  silu_mul_cpu(gate_up.data<float>(), M, I, activated.data<float>());
  return run_linear(*layer.down_proj, activated, observer);
}

Tensor Qwen3Model::compute_logits(const Tensor& hidden, const std::vector<int64_t>& rows,
                                  const ForwardObserver* observer) {
  const int64_t H = config_.hidden_size;
  Tensor selected = empty_f32(static_cast<int64_t>(rows.size()), H);
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(hidden.data<float>() + rows[i] * H, H, selected.data<float>() + static_cast<int64_t>(i) * H);
  rmsnorm(selected, params_.get("model.norm.weight"), config_.rms_norm_eps, selected);
  return run_linear(lm_head_ ? *lm_head_ : *embed_tokens_, selected, observer);
}

ForwardOutput Qwen3Model::forward(const ForwardBatch& batch) {
  FP4_CHECK(weight_state_ == WeightState::Ready,
            "forward: the weights are not ready (load a checkpoint, then process_weights_after_loading)");
  const BatchLayout rows = layout_batch(batch);
  if (options_.device == Device::CUDA) return forward_cuda(batch, rows);
  FP4_CHECK(batch.device_sampling.empty(),
            "forward: device sampling was asked of the CPU forward; the engine samples on the host with --device cpu");
  const ForwardObserver* observer = batch.observer;
  const int64_t M = rows.n_rows(), H = config_.hidden_size;

  Tensor x = empty_f32(M, H), h = empty_f32(M, H);
  embedding_lookup_cpu(params_.get("model.embed_tokens.weight").data<bf16_bits>(), config_.vocab_size, H,
                       rows.token_ids.data(), M, x.data<float>());
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const std::string& prefix = layers_[l].prefix;
    rmsnorm(x, params_.get(prefix + ".input_layernorm.weight"), config_.rms_norm_eps, h);
    residual_add_cpu(x.data<float>(), attention_block(l, h, rows, observer).data<float>(), M * H);
    rmsnorm(x, params_.get(prefix + ".post_attention_layernorm.weight"), config_.rms_norm_eps, h);
    residual_add_cpu(x.data<float>(), mlp_block(l, h, observer).data<float>(), M * H);
    if (observer && observer->on_layer_output) observer->on_layer_output(l, x);
  }

  ForwardOutput out;
  if (!batch.all_logits) {
    out.last_logits = compute_logits(x, rows.last_rows, observer);
    return out;
  }
  std::vector<int64_t> all_rows(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) all_rows[m] = m;
  out.all_logits = compute_logits(x, all_rows, observer);
  const int64_t V = config_.vocab_size;
  out.last_logits = empty_f32(static_cast<int64_t>(rows.last_rows.size()), V);
  for (size_t s = 0; s < rows.last_rows.size(); ++s)
    std::copy_n(out.all_logits.data<float>() + rows.last_rows[s] * V, V,
                out.last_logits.data<float>() + static_cast<int64_t>(s) * V);
  return out;
}

}  // namespace fp4serve
