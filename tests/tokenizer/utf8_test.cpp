// UTF-8 decoding edge cases (checked against the Unicode well-formed byte table) and the GPT-2 byte alphabet.
#include "tokenizer/utf8.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/tokenizer/fixtures.h"
#include "tokenizer/byte_level.h"

namespace fp4serve {
namespace {

TEST(Utf8, DecodesWellFormedCharacters) {
  EXPECT_EQ(utf8_next("A", 0).code_point, 'A');
  const std::string euro = "\u20ac";  // E2 82 AC
  EXPECT_EQ(utf8_next(euro, 0).code_point, 0x20AC);
  EXPECT_EQ(utf8_next(euro, 0).length, 3u);
  const std::string max = "\xF4\x8F\xBF\xBF";  // U+10FFFF
  EXPECT_EQ(utf8_next(max, 0).code_point, 0x10FFFF);
  EXPECT_EQ(utf8_prev(euro, 3).code_point, 0x20AC);
  EXPECT_EQ(utf8_prev("a" + euro, 1).code_point, 'a');
}

TEST(Utf8, ReportsMaximalIllFormedSubparts) {
  // Lone continuation byte, overlong C0, surrogate ED A0, above U+10FFFF F4 90, bytes F5..FF.
  EXPECT_EQ(utf8_next("\x80", 0).code_point, kUtf8Invalid);
  EXPECT_EQ(utf8_next("\xC0\xAF", 0).length, 1u);
  EXPECT_EQ(utf8_next("\xED\xA0\x80", 0).code_point, kUtf8Invalid);
  EXPECT_EQ(utf8_next("\xED\xA0\x80", 0).length, 1u);
  EXPECT_EQ(utf8_next("\xF4\x90\x80\x80", 0).length, 1u);
  EXPECT_EQ(utf8_next("\xFF", 0).code_point, kUtf8Invalid);
  // E2 82 followed by 'A': the well-formed prefix E2 82 is one subpart.
  EXPECT_EQ(utf8_next("\xE2\x82"
                      "A",
                      0)
                .code_point,
            kUtf8Invalid);
  EXPECT_EQ(utf8_next("\xE2\x82"
                      "A",
                      0)
                .length,
            2u);
  // Cut off by the end of the buffer.
  EXPECT_EQ(utf8_next("\xE2\x82", 0).code_point, kUtf8Truncated);
  EXPECT_EQ(utf8_next("\xF0\x9F\x98", 0).length, 3u);
  EXPECT_EQ(utf8_prev("a\x80", 2).code_point, kUtf8Invalid);
}

TEST(Utf8, LossyReplacesEachSubpartOnce) {
  const std::string fffd = "\uFFFD";
  EXPECT_EQ(to_valid_utf8("ok"), "ok");
  EXPECT_EQ(to_valid_utf8("a\xE2\x82"
                          "b"),
            "a" + fffd + "b");
  EXPECT_EQ(to_valid_utf8("\xC0\xAF"), fffd + fffd);
  EXPECT_EQ(to_valid_utf8("\xF0\x9F\x98"), fffd);  // truncated at the end of the stream: one replacement
  std::string out;
  EXPECT_EQ(append_utf8_lossy(out, "x\xF0\x9F\x98", /*end_of_stream=*/false), 1u);  // holds the partial emoji
  EXPECT_EQ(out, "x");
}

TEST(ByteLevel, MatchesTheGpt2Alphabet) {
  std::set<char32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = byte_to_code_point(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(cp).second) << "byte " << b;
    EXPECT_EQ(code_point_to_byte(cp), b);
    std::string spelled;
    append_byte_level(spelled, std::string(1, static_cast<char>(b)));
    EXPECT_EQ(spelled, test::byte_char(b)) << "byte " << b;
  }
  EXPECT_EQ(byte_to_code_point(' '), U'\u0120');   // "Ġ"
  EXPECT_EQ(byte_to_code_point('\n'), U'\u010A');  // "Ċ"
  EXPECT_EQ(byte_to_code_point(0), U'\u0100');
  EXPECT_EQ(byte_to_code_point(0xAD), U'\u0143');  // the last of the 68 remapped bytes
  EXPECT_EQ(byte_to_code_point('!'), U'!');
  EXPECT_FALSE(code_point_to_byte(U' ').has_value());
  EXPECT_FALSE(code_point_to_byte(U'\u0144').has_value());
  EXPECT_EQ(byte_level_to_bytes("\u0120hi\u010A"), " hi\n");
  EXPECT_FALSE(byte_level_to_bytes("a b").has_value());
}

}  // namespace
}  // namespace fp4serve
