// BPE merging: hand-derived ids on a tiny vocab, and agreement with a naive O(n^2) reference (repeatedly merge
// the lowest-rank adjacent pair, leftmost first) on random words and merge tables.
#include "tokenizer/bpe.h"

#include <gtest/gtest.h>

#include <random>

#include "common/error.h"
#include "tests/tokenizer/fixtures.h"

namespace fp4serve {
namespace {

std::vector<int32_t> encode_word(const BpeModel& model, std::string_view word) {
  std::vector<int32_t> ids;
  model.encode_word(word, ids);
  return ids;
}

BpeModel hand_model(bool ignore_merges = false, bool fuse_unk = false) {
  nlohmann::json spec = test::hand_bpe_json()["model"];
  spec["ignore_merges"] = ignore_merges;
  spec["fuse_unk"] = fuse_unk;
  return BpeModel::from_json(spec, "model");
}

TEST(Bpe, HandDerivedMerges) {
  const BpeModel model = hand_model();
  // a b c: "b c" (rank 0) beats "a b" (rank 1), then "a bc" (rank 2) -> abc.
  EXPECT_EQ(encode_word(model, "abc"), (std::vector<int32_t>{6}));
  // a b c d: b c merges first, which leaves no "c d" pair -> abc d.
  EXPECT_EQ(encode_word(model, "abcd"), (std::vector<int32_t>{6, 3}));
  EXPECT_EQ(encode_word(model, "abd"), (std::vector<int32_t>{4, 3}));
  EXPECT_EQ(encode_word(model, "cd"), (std::vector<int32_t>{7}));
  // Equal ranks merge leftmost first: aaa -> aa a; aaaa -> aa aa (pair-form merge [a, a]).
  EXPECT_EQ(encode_word(model, "aaa"), (std::vector<int32_t>{9, 0}));
  EXPECT_EQ(encode_word(model, "aaaa"), (std::vector<int32_t>{9, 9}));
  // Cached second call gives the same answer.
  EXPECT_EQ(encode_word(model, "abcd"), (std::vector<int32_t>{6, 3}));
}

TEST(Bpe, UnknownCharactersAndIgnoreMerges) {
  EXPECT_EQ(encode_word(hand_model(), "xbc"), (std::vector<int32_t>{8, 5}));
  EXPECT_EQ(encode_word(hand_model(), "xyz"), (std::vector<int32_t>{8, 8, 8}));
  EXPECT_EQ(encode_word(hand_model(false, /*fuse_unk=*/true), "xyzab"), (std::vector<int32_t>{8, 4}));
  // "dab" is in the vocab but no merge builds it.
  EXPECT_EQ(encode_word(hand_model(), "dab"), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(encode_word(hand_model(/*ignore_merges=*/true), "dab"), (std::vector<int32_t>{10}));

  nlohmann::json no_unk = test::hand_bpe_json()["model"];
  no_unk["unk_token"] = nullptr;
  const BpeModel strict = BpeModel::from_json(no_unk, "model");
  try {
    encode_word(strict, "a\u00e9");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("U+00E9"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("unk_token"), std::string::npos) << e.what();
  }
}

TEST(Bpe, BadMergesNameTheMerge) {
  nlohmann::json spec = test::hand_bpe_json()["model"];
  spec["merges"] = {"a b", "a q"};
  EXPECT_THROW(
      {
        try {
          BpeModel::from_json(spec, "tokenizer.json: model");
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("model.merges[1]"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  spec["merges"] = {"a b c"};
  EXPECT_THROW(BpeModel::from_json(spec, "model"), Error);
  spec["merges"] = {nlohmann::json::array({"a"})};
  EXPECT_THROW(BpeModel::from_json(spec, "model"), Error);
}

// Naive reference: scan all adjacent pairs, merge the lowest (rank, position), repeat.
std::vector<int32_t> naive_bpe(const std::vector<std::pair<std::string, std::string>>& merges,
                               const nlohmann::json& vocab, const std::string& word) {
  std::vector<std::string> symbols;
  for (char c : word) symbols.emplace_back(1, c);
  while (true) {
    size_t best_rank = merges.size();
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      for (size_t r = 0; r < best_rank; ++r) {
        if (merges[r].first == symbols[i] && merges[r].second == symbols[i + 1]) {
          best_rank = r;
          best_pos = i;
          break;
        }
      }
    }
    if (best_rank == merges.size()) break;
    symbols[best_pos] += symbols[best_pos + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
  }
  std::vector<int32_t> ids;
  for (const std::string& s : symbols) ids.push_back(vocab[s].get<int32_t>());
  return ids;
}

TEST(Bpe, AgreesWithNaiveReferenceOnRandomWords) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 20; ++trial) {
    // A random merge table over the alphabet {a, b, c, d}: each merge joins two existing tokens.
    std::vector<std::string> tokens{"a", "b", "c", "d"};
    std::vector<std::pair<std::string, std::string>> merges;
    nlohmann::json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"d", 3}};
    for (int m = 0; m < 30; ++m) {
      const std::string& left = tokens[rng() % tokens.size()];
      const std::string& right = tokens[rng() % tokens.size()];
      const std::string merged = left + right;
      if (merged.size() > 6 || vocab.contains(merged)) continue;
      merges.emplace_back(left, right);
      vocab[merged] = static_cast<int32_t>(vocab.size());
      tokens.push_back(merged);
    }
    nlohmann::json merge_list = nlohmann::json::array();
    for (const auto& [l, r] : merges) merge_list.push_back(l + " " + r);
    const BpeModel model =
        BpeModel::from_json({{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}, "random model");
    for (int w = 0; w < 50; ++w) {
      std::string word(1 + rng() % 40, 'a');
      for (char& c : word) c = static_cast<char>('a' + rng() % 4);
      ASSERT_EQ(encode_word(model, word), naive_bpe(merges, vocab, word)) << "trial " << trial << " word " << word;
    }
  }
}

TEST(Bpe, LongWordsMergeCompletely) {
  // 100001 'a's with merges a a -> aa, aa aa -> aaaa: leftmost-first pairing gives 25000 "aaaa" and one "a".
  const BpeModel model = BpeModel::from_json(
      {{"type", "BPE"}, {"vocab", {{"a", 0}, {"aa", 1}, {"aaaa", 2}}}, {"merges", {"a a", "aa aa"}}}, "model");
  const std::vector<int32_t> ids = encode_word(model, std::string(100001, 'a'));
  ASSERT_EQ(ids.size(), 25001u);
  for (size_t i = 0; i < 25000; ++i) ASSERT_EQ(ids[i], 2);
  EXPECT_EQ(ids.back(), 0);
}

}  // namespace
}  // namespace fp4serve
