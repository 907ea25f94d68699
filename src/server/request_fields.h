// Request-body fields both APIs share, read with the field's path in every error ("sampling_params: field
// 'top_p' must be a number ..."), and the fan-out of prompts x n samples into GenerationJobs. Limits on sizes a
// client controls (n, top logprobs, stop strings) keep one request from taking unbounded memory. Pure functions.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "server/generation_run.h"

namespace fp4serve {

inline constexpr int64_t kMaxSamplesPerPrompt = 64;  // n
inline constexpr int64_t kMaxTopLogprobs = 20;       // OpenAI's limit
inline constexpr size_t kMaxTokenIdsLogprob = 1024;  // token_ids_logprob
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxPromptsPerRequest = 1024;

// Sampling options before the fan-out over prompts and n.
struct SamplingSpec {
  SamplingParams sampling;
  bool has_seed = false;
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  int64_t n = 1;
  bool return_routed_experts = false;
  int64_t routed_experts_start_len = 0;
};

// temperature, top_p, top_k, min_p, seed, stop, stop_token_ids, ignore_eos, skip_special_tokens, n: the
// spellings SGLang's sampling_params and its OpenAI extensions share. Checks ranges and types.
void read_sampling_fields(const nlohmann::json& object, std::string_view where, SamplingSpec& spec);
// return_routed_experts and routed_experts_start_len (SGLang's spellings; the OpenAI endpoints take them too).
void read_routing_fields(const nlohmann::json& object, std::string_view where, SamplingSpec& spec);
// max_new_tokens-like fields: an integer >= 0.
int64_t read_max_tokens(const nlohmann::json& value, std::string_view field, std::string_view where);
// A top-logprobs count in [0, kMaxTopLogprobs].
int32_t read_top_logprobs(const nlohmann::json& value, std::string_view field, std::string_view where);

// A token id list (non-empty, every entry an int32) named `field` in errors.
std::vector<int32_t> read_token_ids(const nlohmann::json& value, std::string_view field, std::string_view where);
// "x" or ["x", ...] -> a list; `single` tells which form was used.
std::vector<std::string> read_string_or_list(const nlohmann::json& value, std::string_view field,
                                             std::string_view where, bool* single = nullptr);

// One job per (prompt, sample): sample i of a prompt uses seed + i, so n samples differ yet each is reproducible.
// Without a seed, a random one is drawn per request.
std::vector<GenerationJob> make_jobs(const std::vector<std::vector<int32_t>>& prompts, const SamplingSpec& spec,
                                     const std::string& rid);

std::string random_hex_id(size_t n_hex_digits);  // request ids ("cmpl-...", rid defaults)

}  // namespace fp4serve
