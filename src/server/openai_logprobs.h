// OpenAI-shaped logprobs: completions' parallel lists (tokens, token_logprobs, top_logprobs, text_offset), chat's
// content list, and vLLM's prompt_logprobs. An entry without a logprob (the first prompt token: nothing predicts it)
// renders as null, as OpenAI's echo and vLLM do. Pure functions.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "server/request_channel.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve {

struct LogprobsFormat {
  const Tokenizer& tokenizer;
  int32_t n_top = 0;           // top entries shown (the engine may have computed more)
  bool tokens_as_ids = false;  // vLLM's return_tokens_as_token_ids: "token_id:N" instead of the token's text
};

// One token with its logprobs; logprob and top absent for the first prompt token.
struct LogprobEntry {
  int32_t id;
  std::optional<float> logprob;
  const TokenLogprobs* top;
};

std::vector<LogprobEntry> output_entries(const std::vector<GeneratedToken>& tokens, size_t from, size_t to);
// The prompt's tokens from the first on; `computed` holds logprobs of tokens 1.. (missing ones render as null).
std::vector<LogprobEntry> prompt_entries(const std::vector<int32_t>& prompt,
                                         const std::vector<PositionLogprobs>& computed);

std::string token_label(const LogprobsFormat& format, int32_t id);
// Completions' lists; `text_offset` advances over each token's label.
nlohmann::json completion_logprobs(const LogprobsFormat& format, const std::vector<LogprobEntry>& entries,
                                   size_t& text_offset);
nlohmann::json chat_logprobs(const LogprobsFormat& format, const std::vector<LogprobEntry>& entries);
// vLLM's prompt_logprobs: null, then per prompt token {"<id>": {"logprob", "rank", "decoded_token"}} for the token
// itself and the n_top most probable ones.
nlohmann::json vllm_prompt_logprobs(const LogprobsFormat& format, const std::vector<int32_t>& prompt,
                                    const std::vector<PositionLogprobs>& computed);

}  // namespace fp4serve
