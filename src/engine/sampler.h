// Next-token sampling for one sequence. A request's random stream depends only on its seed and the index of the
// generated token, so its tokens are the same whatever else shares the batch. Logprobs are always of the raw
// logits (fp32 log-softmax, before temperature or filters), as SGLang reports them.
#pragma once
#include <cstdint>
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

  // Throws naming the field and the allowed range; `request` names the request in the message.
  void validate(std::string_view request) const;
  bool is_greedy() const { return temperature == 0.0f || top_k == 1; }
};

struct SampledToken {
  int32_t token;
  float logprob;                                        // log-softmax of the raw logits at `token`
  std::vector<std::pair<int32_t, float>> top_logprobs;  // (token, logprob), most probable first
};

// Greedy: the largest logit, lowest token id on ties. Otherwise: probabilities softmax(logits / temperature) in
// double. With a filter on, candidates are ordered most probable first (lower id on ties) and cut to the first
// top_k, then to the shortest prefix whose mass reaches top_p, then to those >= min_p * max; with none (top_k -1,
// top_p 1, min_p 0) every token is a candidate in id order (no sort). Draw u in [0, 1) from (seed, token_index) and
// take the first candidate whose cumulative mass exceeds u * the candidates' total mass.
SampledToken sample_token(std::span<const float> logits, const SamplingParams& params, int64_t token_index);

// The uniform draw in [0, 1) for (seed, token_index): a counter-based hash (splitmix64), no hidden state.
double sampling_uniform(uint64_t seed, int64_t token_index);

}  // namespace fp4serve
