// PageAllocator: allocation, appends across page boundaries, frees, reuse order, reference counts, misuse errors.
#include "engine/page_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"

namespace fp4serve {
namespace {

using testing::ElementsAre;
using testing::HasSubstr;
using testing::ThrowsMessage;

TEST(PageAllocator, AllocatesWholePagesFromTheFreeList) {
  PageAllocator pages(4, 16);
  EXPECT_EQ(pages.pages_for(0), 0);
  EXPECT_EQ(pages.pages_for(1), 1);
  EXPECT_EQ(pages.pages_for(16), 1);
  EXPECT_EQ(pages.pages_for(17), 2);
  PageTable a;
  ASSERT_TRUE(pages.can_allocate(17));
  pages.allocate(a, 17);
  EXPECT_THAT(a.pages, ElementsAre(0, 1));
  EXPECT_EQ(a.n_tokens, 17);
  EXPECT_EQ(pages.n_free_pages(), 2);
  EXPECT_TRUE(pages.can_allocate(32));
  EXPECT_FALSE(pages.can_allocate(33));
  PageTable empty;
  pages.allocate(empty, 0);  // an empty sequence holds no page
  EXPECT_TRUE(empty.pages.empty());
}

TEST(PageAllocator, AppendTakesAPageOnlyWhenTheLastIsFull) {
  PageAllocator pages(3, 4);
  PageTable t;
  pages.allocate(t, 3);
  EXPECT_TRUE(pages.can_append(t, 1));
  pages.append(t, 1);  // position 3: still page 0
  EXPECT_THAT(t.pages, ElementsAre(0));
  pages.append(t, 1);  // position 4: a new page
  EXPECT_THAT(t.pages, ElementsAre(0, 1));
  EXPECT_EQ(t.n_tokens, 5);
  EXPECT_TRUE(pages.can_append(t, 7));  // up to 12 positions = 3 pages
  EXPECT_FALSE(pages.can_append(t, 8));
  pages.append(t, 7);
  EXPECT_EQ(pages.n_free_pages(), 0);
  EXPECT_TRUE(pages.can_append(t, 0));
  EXPECT_FALSE(pages.can_append(t, 1));
  EXPECT_THAT([&] { pages.append(t, 1); }, ThrowsMessage<Error>(HasSubstr("check can_append first")));
}

TEST(PageAllocator, FreeReturnsPagesInFifoOrderForReuse) {
  PageAllocator pages(4, 2);
  PageTable a, b;
  pages.allocate(a, 4);  // pages 0, 1
  pages.allocate(b, 2);  // page 2
  pages.free(a);
  EXPECT_TRUE(a.pages.empty());
  EXPECT_EQ(a.n_tokens, 0);
  EXPECT_EQ(pages.ref_count(0), 0);
  EXPECT_EQ(pages.n_free_pages(), 3);
  PageTable c;
  pages.allocate(c, 6);  // the never-used page 3 first, then 0 and 1 in the order they were freed
  EXPECT_THAT(c.pages, ElementsAre(3, 0, 1));
  pages.free(c);
  pages.free(b);
  EXPECT_EQ(pages.n_free_pages(), 4);
}

TEST(PageAllocator, SharedPagesStayAllocatedUntilTheLastHolderReleases) {
  PageAllocator pages(2, 4);
  PageTable a;
  pages.allocate(a, 4);
  pages.retain(a.pages[0]);  // e.g. a prefix cache keeps the page
  EXPECT_EQ(pages.ref_count(0), 2);
  pages.free(a);
  EXPECT_EQ(pages.ref_count(0), 1);
  EXPECT_EQ(pages.n_free_pages(), 1);
  pages.release(0);
  EXPECT_EQ(pages.n_free_pages(), 2);
  EXPECT_THAT([&] { pages.release(0); }, ThrowsMessage<Error>(HasSubstr("page 0 released more often than held")));
  EXPECT_THAT([&] { pages.retain(1); }, ThrowsMessage<Error>(HasSubstr("retain of page 1, which is free")));
  EXPECT_THAT([&] { pages.ref_count(2); }, ThrowsMessage<Error>(HasSubstr("page 2 out of range [0, 2)")));
}

TEST(PageAllocator, MisuseIsReportedClearly) {
  PageAllocator pages(2, 4);
  PageTable t;
  EXPECT_THAT([&] { pages.allocate(t, 9); }, ThrowsMessage<Error>(HasSubstr("9 tokens need 3 pages but 2 are free")));
  pages.allocate(t, 1);
  EXPECT_THAT([&] { pages.allocate(t, 1); }, ThrowsMessage<Error>(HasSubstr("already holds 1 pages")));
  EXPECT_THAT([] { PageAllocator(0, 16); }, ThrowsMessage<Error>(HasSubstr("0 pages requested")));
  EXPECT_THAT([] { PageAllocator(4, 0); }, ThrowsMessage<Error>(HasSubstr("page size 0 must be positive")));
}

}  // namespace
}  // namespace fp4serve
