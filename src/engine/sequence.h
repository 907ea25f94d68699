// One request's state inside the engine: its tokens (prompt then generated), sampling state and KV pages.
// Touches no device. A running sequence has positions [0, n_computed_tokens) in the KV cache and pages for
// [0, pages.n_tokens): while it prefills, pages for all its tokens; once prefilled, every token but the last
// sampled one, which the next decode step feeds.
#pragma once
#include <algorithm>
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
  // >= 0: also the logprobs of prompt tokens logprob_start_len + 1 .. end (SGLang's logprob_start_len: the token
  // at logprob_start_len itself gets none); -1: no prompt logprobs.
  int64_t logprob_start_len = -1;
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
  std::vector<float> output_logprobs;              // one per generated token
  std::vector<TokenLogprobs> output_top_logprobs;  // when sampling.n_top_logprobs > 0
  std::vector<TokenLogprobs> output_ids_logprobs;  // when sampling.token_ids_logprob is not empty
  std::vector<PositionLogprobs> input_logprobs;    // of prompt tokens logprob_start_len + 1 on, as computed
  PageTable pages;
  int64_t n_cached_tokens = 0;    // positions its latest prefill took from the prefix cache
  int64_t n_computed_tokens = 0;  // positions whose keys and values are in the KV cache
  std::string kv_weight_version;  // the weights its latest prefill ran on; its KV is cacheable while they serve
  std::vector<WeightVersionSpan> weight_version_spans;  // over its output tokens
  std::vector<int32_t> routed_experts;  // when asked, taken as it finishes: [rows, n_layers, top_k]
  SequenceStatus status = SequenceStatus::Waiting;
  std::optional<FinishReason> finish_reason;
  std::optional<int32_t> matched_stop_token;

  int64_t n_output_tokens() const { return static_cast<int64_t>(tokens.size()) - n_prompt_tokens; }
  // Prompt positions whose logits give the prompt logprobs: [logprob_start_len, n_prompt_tokens - 1).
  int64_t n_input_logprobs_wanted() const {
    return request.logprob_start_len < 0 ? 0 : n_prompt_tokens - 1 - request.logprob_start_len;
  }
  // The first position whose logits are still needed: a prefill must compute from there on (prefix-cache hits
  // stop before it). The last token's logits are always needed, for sampling.
  int64_t first_position_needing_logits() const {
    const int64_t next_input_logprob =
        static_cast<int64_t>(input_logprobs.size()) < n_input_logprobs_wanted()
            ? request.logprob_start_len + static_cast<int64_t>(input_logprobs.size())
            : n_prompt_tokens;
    return std::min(next_input_logprob, static_cast<int64_t>(tokens.size()) - 1);
  }
};

}  // namespace fp4serve
