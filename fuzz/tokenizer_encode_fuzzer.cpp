// Arbitrary bytes through the bundled model's tokenizer. encode: ids inside the vocabulary, and without special
// tokens decode_bytes gives back exactly the NFC-normalized input (ill-formed UTF-8 kept byte for byte). decode of
// arbitrary ids (the input read as int16 pairs, negatives and gaps included): valid UTF-8, the same whether whole or
// streamed through IncrementalDecoder, with or without skipping special tokens.
#include <vector>

#include "fuzz/fuzz_util.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/normalizer.h"

using namespace fp4serve;

namespace {

void check_decode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special) {
  const std::string text = tokenizer.decode(ids, skip_special);
  FUZZ_EXPECT(fuzz::is_valid_utf8(text), "decode() returned ill-formed UTF-8");
  FUZZ_EXPECT(text == to_valid_utf8(tokenizer.decode_bytes(ids, skip_special)), "decode != lossy decode_bytes");
  IncrementalDecoder incremental(tokenizer, skip_special);
  std::string streamed;
  for (int32_t id : ids) streamed += incremental.push(id);
  streamed += incremental.finish();
  FUZZ_EXPECT(streamed == text, "streamed decode '{}' differs from decode '{}'", streamed, text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizer& tokenizer = fuzz::bundled_tokenizer();
  const std::string_view text = fuzz::as_text(data, size);

  const std::vector<int32_t> ids = tokenizer.encode(text);
  for (int32_t id : ids) FUZZ_EXPECT(id >= 0 && id < tokenizer.vocab_size(), "id {} outside the vocabulary", id);
  check_decode(tokenizer, ids, false);

  const std::vector<int32_t> plain_ids = tokenizer.encode(text, {.allow_special = false, .add_special_tokens = false});
  FUZZ_EXPECT(tokenizer.decode_bytes(plain_ids) == nfc_normalize(text), "encode/decode does not round-trip");
  for (int32_t id : plain_ids) FUZZ_EXPECT(!tokenizer.is_special(id), "special id {} without allow_special", id);

  std::vector<int32_t> arbitrary_ids;
  for (size_t i = 0; i + 1 < size; i += 2) arbitrary_ids.push_back(static_cast<int16_t>(data[i] | data[i + 1] << 8));
  check_decode(tokenizer, arbitrary_ids, false);
  check_decode(tokenizer, arbitrary_ids, true);
  return 0;
}
