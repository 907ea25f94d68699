// \s and \S as HF tokenizers' Oniguruma reads them (its doc/RE: U+0009..U+000D, U+0085 and Zs / Zl / Zp), not as
// PCRE2 (which adds U+180E) or JavaScript (which adds U+FEFF and drops U+0085); then the Qwen3 split pattern on
// text where the three disagree, with pieces worked out by hand from the pattern.
#include "tokenizer/regex.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "tokenizer/pre_tokenizer.h"

namespace fp4serve {
namespace {

bool matches_whole(const Regex& regex, const std::string& text) {
  const std::optional<ByteSpan> match = regex.find(text, 0);
  return match && match->begin == 0 && match->end == text.size();
}

TEST(Regex, WhitespaceIsOniguruma) {
  const Regex space(R"(\s)", false, "test");
  const Regex not_space(R"(\S)", false, "test");
  const Regex in_class(R"([^\s\p{L}])", false, "test");
  const std::vector<std::string> whitespace = {"\t",     "\n",     "\v",     "\f",     "\r",     " ",
                                               "\u0085", "\u00A0", "\u1680", "\u2000", "\u200A", "\u2028",
                                               "\u2029", "\u202F", "\u205F", "\u3000"};
  for (const std::string& c : whitespace) {
    EXPECT_TRUE(matches_whole(space, c)) << "U+" << std::hex << static_cast<int>(c.back());
    EXPECT_FALSE(not_space.find(c, 0)) << c;
    EXPECT_FALSE(in_class.find(c, 0)) << c;
  }
  // Format characters and the like: not spaces in Unicode's White_Space, nor in Oniguruma.
  const std::vector<std::string> not_whitespace = {"\u180E", "\uFEFF", "\u200B", "\u200D", "\x1C", "\x1F", "!", "a"};
  for (const std::string& c : not_whitespace) {
    EXPECT_FALSE(space.find(c, 0)) << c;
    EXPECT_TRUE(matches_whole(not_space, c)) << c;
    EXPECT_EQ(matches_whole(in_class, c), c != "a") << c;
  }
}

TEST(Regex, WhitespaceRewriteKeepsOtherSyntax) {
  // An escaped backslash before 's' is a literal backslash and 's'.
  EXPECT_TRUE(matches_whole(Regex(R"(\\s)", false, "test"), "\\s"));
  // ']' first in a class is a literal, so the class still holds \s after it.
  const Regex bracket(R"([]\s]+)", false, "test");
  EXPECT_TRUE(matches_whole(bracket, "] \u0085]"));
  EXPECT_FALSE(bracket.find("\u180E", 0));
  const Regex negated_bracket(R"([^]\s]+)", false, "test");
  EXPECT_TRUE(matches_whole(negated_bracket, "ab\u180E"));
  // A POSIX class inside a class does not end it.
  EXPECT_TRUE(matches_whole(Regex(R"([[:digit:]\s]+)", false, "test"), "1 2\u00853"));
  // A literal (Split "String") pattern is not rewritten.
  EXPECT_TRUE(matches_whole(Regex(R"(\s)", true, "test"), "\\s"));
  try {
    Regex(R"([\S\p{L}])", false, "pre_tokenizer.pattern.Regex");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pre_tokenizer.pattern.Regex: \\S inside a character class"),
              std::string::npos)
        << e.what();
  }
}

TEST(Regex, Qwen3SplitOnWhitespaceEdgeCases) {
  const nlohmann::json spec = {
      {"type", "Split"},
      {"pattern",
       {{"Regex",
         R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
      {"behavior", "Isolated"},
      {"invert", false}};
  const PreTokenizer split = PreTokenizer::from_json(spec, "pre_tokenizer");
  std::vector<std::string> pieces;
  split.split("a\u180E!b\u0085!c\uFEFF!", [&](std::string_view piece) { pieces.emplace_back(piece); });
  // U+180E and U+FEFF are not spaces, so each joins the '!' after it as punctuation; U+0085 is a space, alone
  // since a '!' follows it (and that '!' prefixes the letter after it).
  const std::vector<std::string> expected = {"a", "\u180E!", "b", "\u0085", "!c", "\uFEFF!"};
  EXPECT_EQ(pieces, expected);
}

}  // namespace
}  // namespace fp4serve
