// Holds at most one incomplete UTF-8 sequence (< 4 bytes) between pushes; everything before it is emitted.
#include "tokenizer/incremental_decoder.h"

#include "tokenizer/utf8.h"

namespace fp4serve {

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string IncrementalDecoder::push(int32_t id) {
  after_token_ |= tokenizer_->append_token_bytes(id, skip_special_, after_token_, pending_);
  std::string text;
  const size_t consumed = append_utf8_lossy(text, pending_, /*end_of_stream=*/false);
  pending_.erase(0, consumed);
  return text;
}

std::string IncrementalDecoder::finish() {
  std::string text = to_valid_utf8(pending_);
  pending_.clear();
  after_token_ = false;
  return text;
}

}  // namespace fp4serve
