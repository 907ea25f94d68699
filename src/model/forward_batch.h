// What one forward pass computes, passed explicitly (no global context): each sequence's new tokens, where they
// start and the pages its keys/values live in. Rows of every activation are the sequences' new tokens, sequence
// after sequence in batch order. The KV cache must already have pages for every new position (the engine's job).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace fp4serve {

// The paged KV cache storage of all layers, owned by the engine.
struct KvCacheTensors {
  Tensor k;  // [n_layers, n_pages, page_size, n_kv_heads, head_dim] bf16
  Tensor v;  // [n_layers, n_pages, page_size, n_kv_heads, head_dim] bf16
};

struct SequenceInput {
  std::span<const int32_t> token_ids{};   // the new tokens
  int64_t start_position = 0;             // position of token_ids[0]; positions before it are in the cache
  std::span<const int32_t> page_table{};  // pages covering positions [0, start_position + token_ids.size())
};

// Optional taps into the forward pass (calibration, routing replay, tests). Each receives host-readable tensors
// valid only during the call.
struct ForwardObserver {
  // Input [M, K] f32 of each linear, named by checkpoint prefix; each shard of a fused linear is called.
  std::function<void(const std::string& checkpoint_prefix, const Tensor& input)> on_linear_input;
  // An MoE layer's input [M, H] f32 and its routing: ids [M, k] i32 and weights [M, k] f32.
  std::function<void(int layer, const Tensor& input, const Tensor& topk_ids, const Tensor& topk_weights)>
      on_moe_routing;
  // The residual stream [M, H] f32 after each decoder layer.
  std::function<void(int layer, const Tensor& hidden)> on_layer_output;
};

struct ForwardBatch {
  std::vector<SequenceInput> sequences{};
  const KvCacheTensors* kv_cache = nullptr;
  bool all_logits = false;  // also return the logits of every new token (prompt logprobs)
  const ForwardObserver* observer = nullptr;
};

struct ForwardOutput {
  Tensor last_logits;  // [n_sequences, vocab] f32: each sequence's last new token
  Tensor all_logits;   // [n_rows, vocab] f32 when ForwardBatch::all_logits, else undefined
  // Each returned row's log-sum-exp of its raw logits, where the forward computed it (the GPU's, in a fixed
  // per-row order); empty otherwise.
  std::vector<float> last_log_normalizers, all_log_normalizers;
};

}  // namespace fp4serve
