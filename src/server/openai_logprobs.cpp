#include "server/openai_logprobs.h"

#include <algorithm>

#include "server/http_util.h"

namespace fp4serve {

namespace {

// The first n_top entries of a top list (absent: none).
std::vector<std::pair<int32_t, float>> shown_top(const LogprobsFormat& format, const TokenLogprobs* top) {
  if (top == nullptr) return {};
  return {top->begin(), top->begin() + std::min<std::ptrdiff_t>(format.n_top, std::ssize(*top))};
}

nlohmann::json logprob_or_null(const std::optional<float>& logprob) {
  return logprob ? nlohmann::json(*logprob) : nlohmann::json(nullptr);
}

}  // namespace

std::vector<LogprobEntry> output_entries(const std::vector<GeneratedToken>& tokens, size_t from, size_t to) {
  std::vector<LogprobEntry> entries;
  for (size_t i = from; i < to; ++i) entries.push_back({tokens[i].id, tokens[i].logprob, &tokens[i].top_logprobs});
  return entries;
}

std::vector<LogprobEntry> prompt_entries(const std::vector<int32_t>& prompt,
                                         const std::vector<PositionLogprobs>& computed) {
  std::vector<LogprobEntry> entries{{prompt[0], std::nullopt, nullptr}};
  for (size_t i = 1; i < prompt.size(); ++i) {
    if (i - 1 < computed.size())
      entries.push_back({prompt[i], computed[i - 1].logprob, &computed[i - 1].top});
    else
      entries.push_back({prompt[i], std::nullopt, nullptr});
  }
  return entries;
}

std::string token_label(const LogprobsFormat& format, int32_t id) {
  return format.tokens_as_ids ? fmt::format("token_id:{}", id) : token_text(format.tokenizer, id);
}

nlohmann::json completion_logprobs(const LogprobsFormat& format, const std::vector<LogprobEntry>& entries,
                                   size_t& text_offset) {
  nlohmann::json text = nlohmann::json::array(), logprobs = nlohmann::json::array(),
                 top = nlohmann::json::array(), offsets = nlohmann::json::array();
  for (const LogprobEntry& entry : entries) {
    const std::string token = token_label(format, entry.id);
    text.push_back(token);
    logprobs.push_back(logprob_or_null(entry.logprob));
    offsets.push_back(text_offset);
    text_offset += token.size();
    if (!entry.logprob) {
      top.push_back(nullptr);
      continue;
    }
    nlohmann::json alternatives = nlohmann::json::object();
    for (const auto& [id, logprob] : shown_top(format, entry.top)) alternatives[token_label(format, id)] = logprob;
    top.push_back(std::move(alternatives));
  }
  return {{"tokens", std::move(text)}, {"token_logprobs", std::move(logprobs)}, {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

nlohmann::json chat_logprobs(const LogprobsFormat& format, const std::vector<LogprobEntry>& entries) {
  nlohmann::json content = nlohmann::json::array();
  for (const LogprobEntry& entry : entries) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [id, logprob] : shown_top(format, entry.top))
      top.push_back({{"token", token_label(format, id)},
                     {"logprob", logprob},
                     {"bytes", token_bytes(format.tokenizer, id)}});
    content.push_back({{"token", token_label(format, entry.id)},
                       {"logprob", logprob_or_null(entry.logprob)},
                       {"bytes", token_bytes(format.tokenizer, entry.id)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

nlohmann::json vllm_prompt_logprobs(const LogprobsFormat& format, const std::vector<int32_t>& prompt,
                                    const std::vector<PositionLogprobs>& computed) {
  nlohmann::json positions = nlohmann::json::array({nullptr});
  for (size_t i = 0; i < computed.size(); ++i) {
    auto entry = [&](float logprob, int64_t rank, int32_t id) {
      return nlohmann::json{{"logprob", logprob}, {"rank", rank}, {"decoded_token", token_label(format, id)}};
    };
    nlohmann::json position = nlohmann::json::object();
    position[std::to_string(prompt[i + 1])] = entry(computed[i].logprob, computed[i].rank, prompt[i + 1]);
    const std::vector<std::pair<int32_t, float>> top = shown_top(format, &computed[i].top);
    for (size_t k = 0; k < top.size(); ++k)
      position[std::to_string(top[k].first)] = entry(top[k].second, static_cast<int64_t>(k) + 1, top[k].first);
    positions.push_back(std::move(position));
  }
  return positions;
}

}  // namespace fp4serve
