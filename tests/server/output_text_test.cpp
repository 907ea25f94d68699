// OutputText on its own (no server): stop strings spanning tokens, text held back while it could still become a
// stop string, the earliest of several matches, and multi-byte characters split across tokens. Uses the synthetic
// byte-level tokenizer, where token id b is byte b.
#include <gtest/gtest.h>

#include "server/output_text.h"
#include "server_fixture.h"

namespace fp4serve::test {
namespace {

const Tokenizer& tokenizer() {
  static const Tokenizer loaded = Tokenizer::from_files(models().a);
  return loaded;
}

GeneratedToken byte_token(char c) { return {static_cast<unsigned char>(c), -1.0f, {}, {}}; }

// Pushes `text` byte by byte, collecting the deltas; stops pushing once a stop string matched.
std::string feed(OutputText& output, std::string_view text, std::vector<std::string>* deltas = nullptr) {
  std::string released;
  for (char c : text) {
    if (!output.push(byte_token(c))) break;
    const std::string delta = output.take_delta();
    if (deltas) deltas->push_back(delta);
    released += delta;
  }
  return released;
}

TEST(OutputText, WithoutStopStringsEveryByteIsReleasedAtOnce) {
  OutputText output(tokenizer(), {}, true);
  std::vector<std::string> deltas;
  EXPECT_EQ(feed(output, "abc", &deltas), "abc");
  EXPECT_EQ(deltas, (std::vector<std::string>{"a", "b", "c"}));
  output.finish();
  EXPECT_EQ(output.text(), "abc");
  EXPECT_FALSE(output.matched_stop());
  EXPECT_EQ(output.tokens().size(), 3u);
}

TEST(OutputText, StopStringAcrossTokensEndsTheTextBeforeItAndRefusesLaterTokens) {
  OutputText output(tokenizer(), {"END"}, true);
  std::vector<std::string> deltas;
  feed(output, "xyENxENDzz", &deltas);
  // "EN" is held back until 'x' shows it is not "END"; the second "EN" never comes out.
  EXPECT_EQ(deltas, (std::vector<std::string>{"x", "y", "", "", "ENx", "", "", ""}));
  EXPECT_EQ(output.text(), "xyENx");
  EXPECT_EQ(output.matched_stop(), "END");
  EXPECT_EQ(output.tokens().size(), 8u);  // up to and including the 'D' that completed the match
  EXPECT_FALSE(output.push(byte_token('q')));
  output.finish();
  EXPECT_EQ(output.text(), "xyENx");
}

TEST(OutputText, TheEarliestMatchWinsAmongSeveralStopStrings) {
  OutputText output(tokenizer(), {"cd", "bcde", ""}, true);  // an empty stop string is ignored
  feed(output, "abcdef");
  EXPECT_EQ(output.text(), "ab");
  EXPECT_EQ(output.matched_stop(), "cd");
}

TEST(OutputText, HeldBackTailIsReleasedAtTheEndWhenNoStopStringCompletes) {
  OutputText output(tokenizer(), {"STOP"}, true);
  EXPECT_EQ(feed(output, "aST"), "a");
  output.finish();
  EXPECT_EQ(output.take_delta(), "ST");
  EXPECT_EQ(output.text(), "aST");
  EXPECT_FALSE(output.matched_stop());
}

TEST(OutputText, MultiByteCharactersAreReleasedWholeAndMatchedAsStopStrings) {
  OutputText output(tokenizer(), {"\xC3\xA9"}, true);  // "é"
  std::vector<std::string> deltas;
  feed(output, "a\xE2\x82\xAC" "b\xC3\xA9z", &deltas);  // "a€bé..."
  EXPECT_EQ(deltas, (std::vector<std::string>{"a", "", "", "\xE2\x82\xAC", "b", "", ""}));
  EXPECT_EQ(output.text(), "a\xE2\x82\xAC" "b");
  EXPECT_EQ(output.matched_stop(), "\xC3\xA9");

  OutputText broken(tokenizer(), {}, true);
  feed(broken, "x\xE2\x82");  // a character cut short by the end of generation becomes U+FFFD
  broken.finish();
  EXPECT_EQ(broken.text(), "x\xEF\xBF\xBD");
}

}  // namespace
}  // namespace fp4serve::test
