// A request's generated tokens turned into text as they arrive: incremental detokenization plus stop strings.
// Text is released only when final: never a partial UTF-8 character, never a tail that could still grow into a
// stop string. When a stop string matches, the text ends just before it and the output ends at the token that
// completed it (later tokens are refused), so the result does not depend on how far the engine ran ahead.
// One instance per request; not thread-safe.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "server/request_channel.h"
#include "tokenizer/incremental_decoder.h"

namespace fp4serve {

class OutputText {
 public:
  // The tokenizer must outlive this object.
  OutputText(const Tokenizer& tokenizer, std::vector<std::string> stop_strings, bool skip_special_tokens);

  // Takes one token; returns false (and keeps nothing) once a stop string has matched.
  bool push(const GeneratedToken& token);
  void finish();  // no more tokens: releases the held-back tail

  std::string take_delta();  // text released since the last call
  const std::string& text() const { return released_; }
  const std::vector<GeneratedToken>& tokens() const { return tokens_; }
  const std::optional<std::string>& matched_stop() const { return matched_stop_; }

 private:
  void release(size_t end);
  size_t held_back_tail() const;  // bytes at the end of decoded_ that could begin a stop string

  IncrementalDecoder decoder_;
  std::vector<std::string> stop_strings_;
  std::vector<GeneratedToken> tokens_;
  std::string decoded_;   // all complete text so far (cut at a matched stop string)
  std::string released_;  // the prefix of decoded_ that is final
  size_t delta_start_ = 0;
  std::optional<std::string> matched_stop_;
};

}  // namespace fp4serve
