// Added tokens: longest match, lstrip / rstrip / single_word (expectations follow HF's rules by hand), normalized
// tokens matched after NFC, and allow_special.
#include <gtest/gtest.h>

#include <variant>

#include "tests/tokenizer/fixtures.h"
#include "tokenizer/tokenizer.h"

namespace fp4serve {
namespace {

using Ids = std::vector<int32_t>;

Ids with_bytes(std::initializer_list<std::variant<int32_t, std::string>> parts) {
  Ids ids;
  for (const auto& part : parts) {
    if (std::holds_alternative<int32_t>(part)) {
      ids.push_back(std::get<int32_t>(part));
    } else {
      for (char c : std::get<std::string>(part)) ids.push_back(static_cast<uint8_t>(c));
    }
  }
  return ids;
}

// The synth byte-level tokenizer (ids = bytes) plus tokens with each option.
Tokenizer tokenizer_with_options() {
  nlohmann::json spec = test::synth_tokenizer_json();
  auto token = [](int id, const std::string& content, bool special) { return test::added_token(id, content, special); };
  nlohmann::json mask = token(300, "<mask>", true);
  mask["lstrip"] = true;
  nlohmann::json sep = token(301, "[SEP]", false);
  sep["rstrip"] = true;
  nlohmann::json cat = token(302, "cat", false);
  cat["single_word"] = true;
  nlohmann::json both = token(303, "<b>", false);
  both["lstrip"] = true;
  both["rstrip"] = true;
  for (const auto& t : {mask, sep, cat, both, token(304, "<|im", false), token(305, "\u00e9t\u00e9", false)}) {
    spec["added_tokens"].push_back(t);
  }
  spec["added_tokens"].back()["normalized"] = true;
  spec["normalizer"] = {{"type", "NFC"}};
  return Tokenizer::from_json(spec);
}

TEST(AddedTokens, LongestMatchWins) {
  const Tokenizer tokenizer = tokenizer_with_options();
  // "<|im" and "<|im_start|>" both start here; the longer wins. Elsewhere "<|im" alone matches.
  EXPECT_EQ(tokenizer.encode("<|im_start|><|imx"), with_bytes({257, 304, "x"}));
  // With specials disallowed, the non-special "<|im" still matches inside the special's text.
  EXPECT_EQ(tokenizer.encode("<|im_start|>", {.allow_special = false}), with_bytes({304, "_start|>"}));
}

TEST(AddedTokens, LstripTakesWhitespaceBefore) {
  const Tokenizer tokenizer = tokenizer_with_options();
  EXPECT_EQ(tokenizer.encode("a \t <mask>b"), with_bytes({"a", 300, "b"}));
  EXPECT_EQ(tokenizer.encode("a\u3000<mask>"), with_bytes({"a", 300}));  // ideographic space is whitespace
  EXPECT_EQ(tokenizer.encode("<mask> b"), with_bytes({300, " b"}));      // lstrip leaves the right side alone
  // lstrip never reaches into the previous token: "[SEP]" ate its right spaces already.
  EXPECT_EQ(tokenizer.encode("[SEP]  <mask>"), with_bytes({301, 300}));
}

TEST(AddedTokens, RstripTakesWhitespaceAfter) {
  const Tokenizer tokenizer = tokenizer_with_options();
  EXPECT_EQ(tokenizer.encode("a [SEP]  \nb"), with_bytes({"a ", 301, "b"}));
  EXPECT_EQ(tokenizer.encode("x  <b>  y"), with_bytes({"x", 303, "y"}));
}

TEST(AddedTokens, SingleWordNeedsWordBoundaries) {
  const Tokenizer tokenizer = tokenizer_with_options();
  EXPECT_EQ(tokenizer.encode("cat"), with_bytes({302}));
  EXPECT_EQ(tokenizer.encode("a cat."), with_bytes({"a ", 302, "."}));
  EXPECT_EQ(tokenizer.encode("concat"), with_bytes({"concat"}));
  EXPECT_EQ(tokenizer.encode("cats"), with_bytes({"cats"}));
  EXPECT_EQ(tokenizer.encode("_cat"), with_bytes({"_cat"}));            // '_' is a word character
  EXPECT_EQ(tokenizer.encode("\u00e9cat"), with_bytes({"\u00e9cat"}));  // so is a letter outside ASCII
  EXPECT_EQ(tokenizer.encode("7cat"), with_bytes({"7cat"}));
}

TEST(AddedTokens, NormalizedTokensMatchAfterNfc) {
  const Tokenizer tokenizer = tokenizer_with_options();
  // The decomposed spelling is composed by NFC before the normalized token is looked for.
  EXPECT_EQ(tokenizer.encode("un e\u0301te\u0301!"), with_bytes({"un ", 305, "!"}));
  EXPECT_EQ(tokenizer.encode("un \u00e9t\u00e9!"), with_bytes({"un ", 305, "!"}));
}

TEST(AddedTokens, SpecialsSurviveNormalizationAndNeighbours) {
  const Tokenizer tokenizer = tokenizer_with_options();
  EXPECT_EQ(tokenizer.encode("x<|endoftext|><|endoftext|>y"), with_bytes({"x", 256, 256, "y"}));
  EXPECT_EQ(tokenizer.encode("<|endoftext|"), with_bytes({"<|endoftext|"}));  // incomplete: plain text
}

}  // namespace
}  // namespace fp4serve
