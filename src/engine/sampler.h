// Next-token sampling for one sequence, and the logprobs reported at a position. A request's random stream depends
// only on its seed and the index of the generated token, so its tokens are the same whatever else shares the batch.
// Logprobs are an fp32 log-softmax of the raw logits (LogprobsMode::Raw) or of logits / temperature (Processed).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace fp4serve {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = -1;        // -1 = all tokens (SGLang's spelling), else >= 1
  float top_p = 1.0f;        // (0, 1]: smallest most-probable set whose mass reaches top_p
  float min_p = 0.0f;        // [0, 1]: drop tokens below min_p * the largest probability
  uint64_t seed = 0;
  int32_t n_top_logprobs = 0;  // also report this many most probable tokens' logprobs
  std::vector<int32_t> token_ids_logprob{};  // also report these tokens' logprobs (SGLang's token_ids_logprob)

  // Throws naming the field and the allowed range; `request` names the request in the message.
  void validate(std::string_view request) const;
  bool is_greedy() const { return temperature == 0.0f || top_k == 1; }
};

// What a logprob is of. Raw: log_softmax(logits). Processed: log_softmax(logits / temperature), the distribution
// the sampler draws from before top-k / top-p / min-p cut it (SGLang's default; temperature 0 counts as 1). The
// sampler has no penalties, so nothing else enters.
enum class LogprobsMode { Raw, Processed };

using TokenLogprobs = std::vector<std::pair<int32_t, float>>;  // (token id, logprob)

// The logprobs reported at one position.
struct PositionLogprobs {
  float logprob = 0.0f;  // of the token at this position
  int64_t rank = 1;      // of that token: 1 + the number of strictly more probable tokens (vLLM's rank)
  TokenLogprobs top{};   // the n_top_logprobs most probable tokens, most probable first (lower id on ties)
  TokenLogprobs ids{};   // of SamplingParams::token_ids_logprob, in that order
};

// Greedy: the largest logit, lowest token id on ties. Otherwise: probabilities softmax(logits / temperature) in
// double. With a filter on, candidates are ordered most probable first (lower id on ties) and cut to the first
// top_k, then to the shortest prefix whose mass reaches top_p, then to those >= min_p * max; with none (top_k -1,
// top_p 1, min_p 0) every token is a candidate in id order (no sort). Draw u in [0, 1) from (seed, token_index) and
// take the first candidate whose cumulative mass exceeds u * the candidates' total mass.
// Throws on NaN logits or when every logit is -inf.
int32_t sample_token(std::span<const float> logits, const SamplingParams& params, int64_t token_index);

// What logits are multiplied by before the log-softmax of reported logprobs: 1 / temperature in Processed mode with a
// positive temperature, else 1 (which leaves the raw values bit for bit).
float logprob_scale(const SamplingParams& params, LogprobsMode mode);

// Whether the GPU sampler (kernels/cuda/sampling.h) serves a request's next token and its logprobs: every sampling
// mode, top logprobs and both LogprobsModes, but not token_ids_logprob, which the host computes from the logits row.
bool can_sample_on_device(const SamplingParams& params);

// Logprobs of `token`, the n_top_logprobs most probable tokens and token_ids_logprob under `mode`, in fp32:
// logprob(t) = s_t - (s_max + log(sum_j exp(s_j - s_max))) with s = logits (raw) or logits / temperature.
// raw_log_normalizer: that normalizer of the raw logits when the forward already computed it (the GPU does); used
// when s = logits (raw mode, or a temperature of 0 or 1), saving a pass of exp over the vocabulary.
PositionLogprobs position_logprobs(std::span<const float> logits, int32_t token, const SamplingParams& params,
                                   LogprobsMode mode, std::optional<float> raw_log_normalizer = std::nullopt);

// The uniform draw in [0, 1) for (seed, token_index): a counter-based hash (splitmix64), no hidden state.
double sampling_uniform(uint64_t seed, int64_t token_index);

}  // namespace fp4serve
