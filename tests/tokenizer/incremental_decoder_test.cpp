// Streaming decode: characters split across tokens are held back until complete, invalid bytes become U+FFFD
// (at once when they can never complete, at finish() when cut off), and the streamed text equals decode().
#include "tokenizer/incremental_decoder.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/tokenizer/fixtures.h"
#include "tokenizer/utf8.h"

namespace fp4serve {
namespace {

using Ids = std::vector<int32_t>;

TEST(IncrementalDecoder, HoldsBackSplitCharacters) {
  const Tokenizer tokenizer = Tokenizer::from_json(test::synth_tokenizer_json());
  IncrementalDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.push('h'), "h");
  // U+1F600 = F0 9F 98 80, one byte per token.
  EXPECT_EQ(decoder.push(0xF0), "");
  EXPECT_EQ(decoder.push(0x9F), "");
  EXPECT_EQ(decoder.push(0x98), "");
  EXPECT_EQ(decoder.pending_bytes(), 3u);
  EXPECT_EQ(decoder.push(0x80), "\U0001F600");
  EXPECT_EQ(decoder.pending_bytes(), 0u);
  // "é" = C3 A9 then a special token.
  EXPECT_EQ(decoder.push(0xC3), "");
  EXPECT_EQ(decoder.push(0xA9), "\u00e9");
  EXPECT_EQ(decoder.push(258), "<|im_end|>");
  EXPECT_EQ(decoder.finish(), "");
}

TEST(IncrementalDecoder, MergedTokenCompletesCharacter) {
  // In the Qwen-style fixture id 262 is one token for both bytes of "é" (C3 A9).
  const Tokenizer tokenizer = Tokenizer::from_json(test::qwen_style_tokenizer_json());
  IncrementalDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.push(0xE4), "");  // first byte of "你" (E4 BD A0)
  EXPECT_EQ(decoder.push(0xBD), "");
  EXPECT_EQ(decoder.push(0xA0), "\u4f60");
  EXPECT_EQ(decoder.push(262), "\u00e9");
}

TEST(IncrementalDecoder, InvalidBytesBecomeReplacementCharacters) {
  const Tokenizer tokenizer = Tokenizer::from_json(test::synth_tokenizer_json());
  IncrementalDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.push(0xFF), "\uFFFD");  // can never start a character: replaced at once
  EXPECT_EQ(decoder.push(0xE2), "");
  EXPECT_EQ(decoder.push('A'),
            "\uFFFD"
            "A");  // E2 then a non-continuation byte
  EXPECT_EQ(decoder.push(0xF0), "");
  EXPECT_EQ(decoder.push(0x9F), "");
  EXPECT_EQ(decoder.finish(), "\uFFFD");  // cut off at the end of the stream
  EXPECT_EQ(decoder.push('z'), "z");      // reusable after finish()
}

TEST(IncrementalDecoder, SkipsSpecialTokensWhenAsked) {
  const Tokenizer tokenizer = Tokenizer::from_json(test::synth_tokenizer_json());
  IncrementalDecoder decoder(tokenizer, /*skip_special=*/true);
  EXPECT_EQ(decoder.push(257), "");
  EXPECT_EQ(decoder.push('o'), "o");
  EXPECT_EQ(decoder.push(258), "");
}

TEST(IncrementalDecoder, StreamEqualsDecodeOnRandomIds) {
  const Tokenizer byte_level = Tokenizer::from_json(test::synth_tokenizer_json());
  const Tokenizer qwen = Tokenizer::from_json(test::qwen_style_tokenizer_json());
  const Tokenizer hand = Tokenizer::from_json(test::hand_bpe_json());
  std::mt19937 rng(7);
  for (const Tokenizer* tokenizer : {&byte_level, &qwen, &hand}) {
    for (int trial = 0; trial < 200; ++trial) {
      Ids ids(rng() % 30);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % (tokenizer->vocab_size() + 3)) - 1;
      const bool skip_special = trial % 2 == 1;
      IncrementalDecoder decoder(*tokenizer, skip_special);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string piece = decoder.push(id);
        ASSERT_EQ(piece, to_valid_utf8(piece)) << "a pushed piece must be valid UTF-8";
        streamed += piece;
      }
      streamed += decoder.finish();
      ASSERT_EQ(streamed, tokenizer->decode(ids, skip_special)) << "trial " << trial;
    }
  }
}

}  // namespace
}  // namespace fp4serve
