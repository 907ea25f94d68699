// What one forward pass computes, passed explicitly (no global context): each sequence's new tokens, where they
// start and the pages its keys/values live in. Rows of every activation are the sequences' new tokens, sequence
// after sequence in batch order. The KV cache must already have pages for every new position (the engine's job).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/sampler.h"
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

// A sequence whose next token the forward samples on the device, from its last new token's logits, instead of
// returning that logits row (device cuda only: the CPU forward refuses). The params must pass can_sample_on_device.
struct DeviceSamplingRow {
  int64_t sequence = 0;  // index into ForwardBatch::sequences; increasing along ForwardBatch::device_sampling
  const SamplingParams* params = nullptr;
  int64_t token_index = 0;  // the index of the token being generated (sample_token's token_index)
};

struct ForwardBatch {
  std::vector<SequenceInput> sequences{};
  const KvCacheTensors* kv_cache = nullptr;
  bool all_logits = false;  // also return the logits of every new token (prompt logprobs)
  const ForwardObserver* observer = nullptr;
  std::vector<DeviceSamplingRow> device_sampling{};
  LogprobsMode logprobs_mode = LogprobsMode::Processed;  // of device_sampling's logprobs
};

// A sampled next token and its logprobs (from the device: PositionLogprobs::ids stays empty).
struct SampledToken {
  int32_t token = 0;
  PositionLogprobs logprobs{};
};

struct ForwardOutput {
  // [n_sequences - device_sampling.size(), vocab] f32: the last new token of each sequence not sampled on the device,
  // in batch order.
  Tensor last_logits;
  Tensor all_logits;  // [n_rows, vocab] f32 when ForwardBatch::all_logits, else undefined
  // Each returned row's log-sum-exp of its raw logits, where the forward computed it (the GPU's, in a fixed
  // per-row order); empty otherwise.
  std::vector<float> last_log_normalizers, all_log_normalizers;
  std::vector<SampledToken> device_sampled;  // one per ForwardBatch::device_sampling row, in its order
};

}  // namespace fp4serve
