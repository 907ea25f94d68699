// Scheduler (no device, no model): prefill admission by pages / running limit / token budget, decode batches,
// preemption of the newest sequence when pages run out, and finishing.
#include "engine/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace fp4serve {
namespace {

using testing::ElementsAre;

struct Fixture {
  PageAllocator pages;
  Scheduler scheduler;
  std::vector<std::unique_ptr<Sequence>> owned;

  Fixture(int64_t n_pages, int64_t page_size, SchedulerOptions options)
      : pages(n_pages, page_size), scheduler(pages, nullptr, options) {}

  Sequence* add(int64_t id, int64_t n_prompt_tokens) {
    auto seq = std::make_unique<Sequence>();
    seq->id = id;
    seq->tokens.assign(static_cast<size_t>(n_prompt_tokens), 1);
    seq->n_prompt_tokens = n_prompt_tokens;
    scheduler.add(seq.get());
    owned.push_back(std::move(seq));
    return owned.back().get();
  }
};

std::vector<int64_t> ids(const ScheduledBatch& batch) {
  std::vector<int64_t> out;
  for (const Sequence* seq : batch.sequences) out.push_back(seq->id);
  return out;
}

// What the engine does after a forward: every scheduled sequence gains one sampled token.
void sample_one(const ScheduledBatch& batch) {
  for (Sequence* seq : batch.sequences) seq->tokens.push_back(2);
}

TEST(Scheduler, PrefillsFirstThenDecodesEveryRunningSequence) {
  Fixture f(16, 4, {});
  f.add(0, 5);
  f.add(1, 3);
  ScheduledBatch batch = f.scheduler.schedule();
  EXPECT_TRUE(batch.prefill);
  EXPECT_THAT(ids(batch), ElementsAre(0, 1));
  EXPECT_EQ(f.owned[0]->pages.n_tokens, 5);
  EXPECT_EQ(f.owned[0]->status, SequenceStatus::Running);
  sample_one(batch);
  f.add(2, 2);  // arrives mid-flight: prefilled before the next decode
  batch = f.scheduler.schedule();
  EXPECT_TRUE(batch.prefill);
  EXPECT_THAT(ids(batch), ElementsAre(2));
  sample_one(batch);
  batch = f.scheduler.schedule();
  EXPECT_FALSE(batch.prefill);
  EXPECT_THAT(ids(batch), ElementsAre(0, 1, 2));
  EXPECT_EQ(f.owned[0]->pages.n_tokens, 6);  // prompt 5 + the decoded position
  EXPECT_EQ(f.owned[0]->pages.pages.size(), 2u);
}

TEST(Scheduler, PrefillRespectsTokenBudgetRunningLimitAndPages) {
  Fixture budget(64, 4, {.max_running_sequences = 8, .max_prefill_tokens = 10});
  budget.add(0, 6);
  budget.add(1, 6);
  budget.add(2, 30);  // longer than the budget: runs alone when it reaches the front
  EXPECT_THAT(ids(budget.scheduler.schedule()), ElementsAre(0));
  EXPECT_THAT(ids(budget.scheduler.schedule()), ElementsAre(1));
  EXPECT_THAT(ids(budget.scheduler.schedule()), ElementsAre(2));

  Fixture limit(64, 4, {.max_running_sequences = 2, .max_prefill_tokens = 100});
  for (int i = 0; i < 3; ++i) limit.add(i, 2);
  EXPECT_THAT(ids(limit.scheduler.schedule()), ElementsAre(0, 1));
  EXPECT_FALSE(limit.scheduler.schedule().prefill);  // sequence 2 waits for a free slot
  limit.scheduler.finish(limit.owned[0].get());
  EXPECT_THAT(ids(limit.scheduler.schedule()), ElementsAre(2));

  Fixture pages(3, 4, {});
  pages.add(0, 8);
  pages.add(1, 8);  // needs 2 pages, 1 left: waits (FIFO, no skipping)
  pages.add(2, 1);
  EXPECT_THAT(ids(pages.scheduler.schedule()), ElementsAre(0));
  EXPECT_EQ(pages.scheduler.waiting().size(), 2u);
}

TEST(Scheduler, PreemptsTheNewestSequenceWhenDecodeLacksPages) {
  Fixture f(4, 2, {});
  Sequence* a = f.add(0, 4);  // 2 pages
  Sequence* b = f.add(1, 3);  // 2 pages, slot left in its last page
  ScheduledBatch batch = f.scheduler.schedule();
  EXPECT_THAT(ids(batch), ElementsAre(0, 1));
  sample_one(batch);
  // a needs a new page for position 4 and none is free: b (newest) is preempted and its pages go to a.
  batch = f.scheduler.schedule();
  EXPECT_FALSE(batch.prefill);
  EXPECT_THAT(ids(batch), ElementsAre(0));
  EXPECT_EQ(b->status, SequenceStatus::Waiting);
  EXPECT_TRUE(b->pages.pages.empty());
  EXPECT_EQ(f.scheduler.waiting().front(), b);
  EXPECT_EQ(f.scheduler.n_preemptions(), 1);
  EXPECT_EQ(a->pages.n_tokens, 5);
  sample_one(batch);
  // a finishes: b comes back with a prefill over all its 4 tokens (prompt + the one it generated).
  f.scheduler.finish(a);
  EXPECT_EQ(a->status, SequenceStatus::Finished);
  EXPECT_EQ(f.pages.n_free_pages(), 4);
  batch = f.scheduler.schedule();
  EXPECT_TRUE(batch.prefill);
  EXPECT_THAT(ids(batch), ElementsAre(1));
  EXPECT_EQ(b->pages.n_tokens, 4);
}

TEST(Scheduler, ASequenceAloneWithoutPagesPreemptsItself) {
  Fixture f(2, 2, {});
  Sequence* a = f.add(0, 4);  // fills the cache
  sample_one(f.scheduler.schedule());
  const ScheduledBatch batch = f.scheduler.schedule();
  EXPECT_TRUE(batch.sequences.empty());
  EXPECT_EQ(a->status, SequenceStatus::Waiting);
  EXPECT_EQ(f.pages.n_free_pages(), 2);
  EXPECT_TRUE(f.scheduler.has_work());
}

}  // namespace
}  // namespace fp4serve
