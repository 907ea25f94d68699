// One request's state inside the engine: its tokens (prompt then generated), sampling state and KV pages.
// Touches no device. Between steps a running sequence has positions [0, tokens.size() - 1) in the KV cache: every
// token but the last sampled one, which the next decode step feeds.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/page_allocator.h"
#include "engine/sampler.h"

namespace fp4serve {

enum class FinishReason { Length, Stop, Abort };
std::string_view finish_reason_name(FinishReason reason);  // "length" | "stop" | "abort" (SGLang's spelling)

struct GenerateRequest {
  std::vector<int32_t> input_ids{};  // the prompt, non-empty
  SamplingParams sampling{};
  int64_t max_new_tokens = 128;
  std::vector<int32_t> stop_token_ids{};  // finish on any of these (in addition to EOS unless ignore_eos)
  bool ignore_eos = false;
  // Routing replay: the top-k expert ids of positions [routed_experts_start_len, n_tokens - 1) (every token fed
  // to the model), in [0, prompt length]; needs an engine that records routing.
  bool return_routed_experts = false;
  int64_t routed_experts_start_len = 0;
};

// Output tokens [start, end) were sampled from logits the weights labelled `version` computed.
struct WeightVersionSpan {
  std::string version;
  int64_t start = 0;
  int64_t end = 0;
  bool operator==(const WeightVersionSpan&) const = default;
};

enum class SequenceStatus { Waiting, Running, Finished };

struct Sequence {
  int64_t id = 0;
  GenerateRequest request;
  std::vector<int32_t> tokens;  // prompt then generated tokens
  int64_t n_prompt_tokens = 0;
  std::vector<float> output_logprobs;                                       // one per generated token
  std::vector<std::vector<std::pair<int32_t, float>>> output_top_logprobs;  // when sampling.n_top_logprobs > 0
  PageTable pages;
  int64_t n_cached_tokens = 0;  // positions its latest prefill took from the prefix cache (fed from there on)
  std::string kv_weight_version;  // the weights its latest prefill ran on; its KV is cacheable while they serve
  std::vector<WeightVersionSpan> weight_version_spans;  // over its output tokens
  std::vector<int32_t> routed_experts;  // when asked, taken as it finishes: [rows, n_layers, top_k]
  SequenceStatus status = SequenceStatus::Waiting;
  std::optional<FinishReason> finish_reason;
  std::optional<int32_t> matched_stop_token;

  int64_t n_output_tokens() const { return static_cast<int64_t>(tokens.size()) - n_prompt_tokens; }
};

}  // namespace fp4serve
