// tokenizer.json text loaded with Tokenizer::from_json. A tokenizer that loads encodes a sample (special tokens,
// digits, non-ASCII, an ill-formed byte) to ids inside its vocabulary, and decodes them to valid UTF-8.
#include <algorithm>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "io/json_file.h"

using namespace fp4serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const Tokenizer tokenizer =
        Tokenizer::from_json(parse_json_text(fuzz::as_text(data, size), "tokenizer.json"), nullptr, nullptr);
    const std::vector<int32_t> ids = tokenizer.encode("<|im_start|>user\nHi, 12 apples \xC3\xA9t\xC3\xA9 \xFF!\n");
    for (int32_t id : ids) FUZZ_EXPECT(id >= 0 && id < tokenizer.vocab_size(), "id {} outside the vocabulary", id);
    FUZZ_EXPECT(fuzz::is_valid_utf8(tokenizer.decode(ids)), "decode() returned ill-formed UTF-8");
    for (int32_t id = 0; id < std::min(tokenizer.vocab_size(), 64); ++id)
      if (const auto text = tokenizer.token_text(id)) {
        const auto found = tokenizer.token_id(*text);
        FUZZ_EXPECT(found.has_value(), "token {} '{}' is not found by its text", id, *text);
      }
  });
  return 0;
}
