// PrefixCache: hits on whole pages only, verified tokens, references held and handed out, LRU eviction of pages
// only the cache holds, clearing, weight versions kept apart; and the scheduler starting a prefill after the cached
// prefix.
#include "engine/prefix_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "engine/scheduler.h"

namespace fp4serve {
namespace {

using testing::ElementsAre;
using testing::IsEmpty;

std::vector<int32_t> iota_tokens(int n, int first = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

// A sequence's pages after a prefill of `tokens`: allocated, then offered to the cache (as the engine does).
PageTable prefill(PageAllocator& pages, PrefixCache& cache, const std::vector<int32_t>& tokens) {
  PageTable table;
  pages.allocate(table, static_cast<int64_t>(tokens.size()));
  cache.insert(tokens, table.pages, table.n_tokens);
  return table;
}

TEST(PrefixCache, HitsWholePagesOfTheSamePrefixOnly) {
  PageAllocator pages(8, 4);
  PrefixCache cache(pages, "v1");
  const std::vector<int32_t> prompt = iota_tokens(10);  // pages 0, 1 full; page 2 holds 2 tokens: not cached
  PageTable first = prefill(pages, cache, prompt);
  EXPECT_EQ(cache.n_cached_pages(), 2);
  EXPECT_EQ(pages.ref_count(first.pages[0]), 2);  // the sequence and the cache
  EXPECT_EQ(pages.ref_count(first.pages[2]), 1);

  EXPECT_THAT(cache.match(prompt, 9), ElementsAre(first.pages[0], first.pages[1]));
  EXPECT_EQ(pages.ref_count(first.pages[0]), 3);                     // the caller's reference
  EXPECT_THAT(cache.match(prompt, 7), ElementsAre(first.pages[0]));  // at most 7 tokens: one whole page
  std::vector<int32_t> diverging = prompt;
  diverging[5] = 99;  // same first page, different second page
  EXPECT_THAT(cache.match(diverging, 9), ElementsAre(first.pages[0]));
  diverging[0] = 99;  // a different first page: the chain breaks there, later pages never hit
  EXPECT_THAT(cache.match(diverging, 9), IsEmpty());
}

TEST(PrefixCache, NeverMatchesAcrossWeightVersions) {
  PageAllocator pages(8, 4);
  PrefixCache cache(pages, "v1");
  const std::vector<int32_t> prompt = iota_tokens(9);
  PageTable under_v1 = prefill(pages, cache, prompt);
  cache.set_weight_version("v2");
  EXPECT_THAT(cache.match(prompt, 9), IsEmpty());
  PageTable under_v2 = prefill(pages, cache, prompt);  // the same tokens cached again, on other pages
  EXPECT_EQ(cache.n_cached_pages(), 4);
  EXPECT_THAT(cache.match(prompt, 9), ElementsAre(under_v2.pages[0], under_v2.pages[1]));
  cache.set_weight_version("v1");
  EXPECT_THAT(cache.match(prompt, 9), ElementsAre(under_v1.pages[0], under_v1.pages[1]));
}

TEST(PrefixCache, KeepsPagesAfterTheirSequenceEndsAndEvictsLeastRecentlyUsed) {
  PageAllocator pages(4, 2);
  PrefixCache cache(pages, "v1");
  PageTable a = prefill(pages, cache, {1, 2});
  PageTable b = prefill(pages, cache, {3, 4});
  const int32_t page_a = a.pages[0], page_b = b.pages[0];
  pages.free(a);
  pages.free(b);
  EXPECT_EQ(pages.n_free_pages(), 2);                                        // the cache still holds a's and b's pages
  std::vector<int32_t> hit = cache.match(std::vector<int32_t>{1, 2, 9}, 2);  // touches a: b is now the oldest
  ASSERT_THAT(hit, ElementsAre(page_a));
  EXPECT_TRUE(cache.make_free(3));  // evicts b only
  EXPECT_EQ(pages.ref_count(page_b), 0);
  EXPECT_EQ(cache.n_cached_pages(), 1);
  EXPECT_FALSE(cache.make_free(4));  // a's page is held by the caller too: not evictable
  pages.release(hit[0]);
  EXPECT_TRUE(cache.make_free(4));
  EXPECT_EQ(cache.n_cached_pages(), 0);
}

TEST(PrefixCache, ClearReleasesOnlyTheCachesReferences) {
  PageAllocator pages(4, 2);
  {
    PrefixCache cache(pages, "v1");
    PageTable a = prefill(pages, cache, {1, 2, 3, 4});
    cache.clear();
    EXPECT_EQ(cache.n_cached_pages(), 0);
    EXPECT_EQ(pages.ref_count(a.pages[0]), 1);
    EXPECT_THAT(cache.match(std::vector<int32_t>{1, 2, 3, 4, 5}, 4), IsEmpty());
    prefill(pages, cache, {7, 8});
  }                                    // destruction releases the rest
  EXPECT_EQ(pages.n_free_pages(), 1);  // a's two pages and {7, 8}'s page remain with their sequences
}

TEST(PrefixCache, SchedulerStartsThePrefillAfterTheCachedPrefix) {
  PageAllocator pages(6, 4);
  PrefixCache cache(pages, "v1");
  Scheduler scheduler(pages, &cache, {});
  auto make = [](int64_t id, std::vector<int32_t> tokens) {
    auto seq = std::make_unique<Sequence>();
    seq->id = id;
    seq->n_prompt_tokens = static_cast<int64_t>(tokens.size());
    seq->tokens = std::move(tokens);
    return seq;
  };
  auto first = make(0, iota_tokens(9));
  scheduler.add(first.get());
  ScheduledBatch batch = scheduler.schedule();
  ASSERT_EQ(batch.chunks.size(), 1u);
  EXPECT_EQ(first->n_cached_tokens, 0);
  // The engine's part after the forward: cache the computed pages, sample a token.
  cache.insert(first->tokens, first->pages.pages, first->n_computed_tokens);
  first->tokens.push_back(100);

  auto same = make(1, iota_tokens(9));   // the whole prompt is cached but its last token must be computed
  auto exact = make(2, iota_tokens(8));  // 8 tokens = 2 pages: only the first is reused
  scheduler.add(same.get());
  scheduler.add(exact.get());
  batch = scheduler.schedule();
  ASSERT_EQ(batch.chunks.size(), 3u);  // first decodes beside the two prefills
  EXPECT_TRUE(batch.chunks[0].decode);
  EXPECT_EQ(batch.chunks[1].start, 8);
  EXPECT_EQ(same->n_cached_tokens, 8);
  EXPECT_THAT(std::vector<int32_t>(same->pages.pages.begin(), same->pages.pages.begin() + 2),
              ElementsAre(first->pages.pages[0], first->pages.pages[1]));
  EXPECT_NE(same->pages.pages[2], first->pages.pages[2]);
  EXPECT_EQ(same->pages.n_tokens, 9);
  EXPECT_EQ(exact->n_cached_tokens, 4);
  EXPECT_EQ(exact->pages.pages[0], first->pages.pages[0]);
  EXPECT_EQ(pages.ref_count(first->pages.pages[0]), 4);  // three sequences and the cache
}

}  // namespace
}  // namespace fp4serve
