#include "io/xxhash64.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace fp4serve {

// Reference digests published with xxHash (and reproduced by Python's xxhash.xxh64(...).intdigest()).
TEST(Xxh64, KnownVectors) {
  EXPECT_EQ(xxh64({}), 0xEF46DB3751D8E999ull);
  auto text = [](std::string_view s) { return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()); };
  EXPECT_EQ(xxh64(text("a")), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(xxh64(text("abc")), 0x44BC2CF5AD770999ull);
  EXPECT_EQ(xxh64(text("Nobody inspects the spammish repetition")), 0xFBCEA83C8A378BF1ull);
}

TEST(Xxh64, StreamingEqualsOneShotForEverySplit) {
  std::mt19937 rng(7);
  std::vector<uint8_t> data(300);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  uint64_t expected = xxh64(data, 42);
  for (size_t split = 0; split <= data.size(); split += 7) {
    Xxh64 h(42);
    h.update(std::span(data).first(split));
    h.update(std::span(data).subspan(split));
    ASSERT_EQ(h.digest(), expected) << split;
  }
}

}  // namespace fp4serve
