// Streaming detokenization for one sequence: push ids as they are sampled, get back only text that is final.
// Output is always valid UTF-8; a character split across tokens is held back until its last byte arrives, and
// finish() flushes what remains (an incomplete character becomes U+FFFD). Concatenating every push() and
// finish() equals Tokenizer::decode() of all ids. One instance per sequence; not thread-safe.
#pragma once
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace fp4serve {

class IncrementalDecoder {
 public:
  // The tokenizer must outlive the decoder.
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special = false);

  // The text completed by this token (possibly empty).
  std::string push(int32_t id);
  // The held-back tail, ill-formed bytes replaced by U+FFFD; the decoder is then empty and reusable.
  std::string finish();

  // Bytes held back, waiting for the rest of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  bool after_token_ = false;  // whether a token was emitted (a null decoder separates tokens by spaces)
  std::string pending_;
};

}  // namespace fp4serve
