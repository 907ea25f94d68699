// Scheduler (no device, no model): steps that mix decodes with prefill chunks, chunked prefill at the budget (and
// unsplit prompts with chunking off), admission by pages / running limit, preemption of the newest sequence when
// pages run out (mid-prefill included), and finishing.
#include "engine/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

namespace fp4serve {
namespace {

using testing::ElementsAre;
using testing::HasSubstr;
using testing::IsEmpty;
using testing::ThrowsMessage;

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

// "id:start+n" per prefill chunk, "id" per decode, in batch order.
std::vector<std::string> chunks(const ScheduledBatch& batch) {
  std::vector<std::string> out;
  for (const ScheduledChunk& c : batch.chunks)
    out.push_back(c.decode ? std::to_string(c.sequence->id)
                           : std::to_string(c.sequence->id) + ":" + std::to_string(c.start) + "+" +
                                 std::to_string(c.n_tokens));
  return out;
}

// What the engine does after a forward: every sequence whose prefill is complete gains one sampled token.
const ScheduledBatch& sample(const ScheduledBatch& batch) {
  for (const ScheduledChunk& c : batch.chunks)
    if (c.completes_prefill()) c.sequence->tokens.push_back(2);
  return batch;
}

TEST(Scheduler, RunningSequencesDecodeInTheStepsThatPrefillNewOnes) {
  Fixture f(16, 4, {});
  f.add(0, 5);
  f.add(1, 3);
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0:0+5", "1:0+3"));
  EXPECT_EQ(f.owned[0]->pages.n_tokens, 5);
  EXPECT_EQ(f.owned[0]->n_computed_tokens, 5);
  EXPECT_EQ(f.owned[0]->status, SequenceStatus::Running);
  f.add(2, 2);  // arrives mid-flight: prefilled beside the decodes
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1", "2:0+2"));
  EXPECT_EQ(f.owned[0]->pages.n_tokens, 6);  // prompt 5 + the decoded position
  EXPECT_EQ(f.owned[0]->pages.pages.size(), 2u);
  EXPECT_THAT(chunks(f.scheduler.schedule()), ElementsAre("0", "1", "2"));
}

TEST(Scheduler, ChunkedPrefillSplitsPromptsAtTheBudgetWhileOthersDecode) {
  Fixture f(64, 4, {.max_running_sequences = 8, .max_prefill_tokens = 100, .chunked_prefill_size = 5});
  f.add(0, 3);
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0:0+3"));
  Sequence* long_prompt = f.add(1, 12);
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1:0+5"));
  EXPECT_EQ(long_prompt->pages.n_tokens, 12);  // pages for the whole prompt from admission on
  EXPECT_EQ(long_prompt->n_computed_tokens, 5);
  EXPECT_EQ(long_prompt->tokens.size(), 12u);  // nothing sampled mid-prefill
  f.add(2, 4);
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1:5+5"));  // no budget left for 2
  // The rest of the prompt (2 tokens) leaves 3 of the budget to the next waiting prompt.
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1:10+2", "2:0+3"));
  EXPECT_EQ(long_prompt->tokens.size(), 13u);  // its prefill completed: it sampled
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1", "2:3+1"));
  EXPECT_THAT(chunks(f.scheduler.schedule()), ElementsAre("0", "1", "2"));
}

TEST(Scheduler, UnsplitPromptsRespectTheBudgetAndALongerOneRunsAsTheOnlyPrefill) {
  Fixture f(64, 4, {.max_running_sequences = 8, .max_prefill_tokens = 10, .chunked_prefill_size = -1});
  f.add(0, 6);
  f.add(1, 6);
  f.add(2, 30);
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0:0+6"));
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1:0+6"));
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1", "2:0+30"));
  EXPECT_THAT(
      [] {
        PageAllocator pages(4, 4);
        Scheduler(pages, nullptr, {.chunked_prefill_size = 0});
      },
      ThrowsMessage<Error>(HasSubstr("chunked_prefill_size 0 must be positive, or -1")));
}

TEST(Scheduler, AdmissionRespectsTheRunningLimitAndPages) {
  Fixture limit(64, 4, {.max_running_sequences = 2});
  for (int i = 0; i < 3; ++i) limit.add(i, 2);
  EXPECT_THAT(chunks(sample(limit.scheduler.schedule())), ElementsAre("0:0+2", "1:0+2"));
  EXPECT_THAT(chunks(sample(limit.scheduler.schedule())), ElementsAre("0", "1"));  // 2 waits for a free slot
  limit.scheduler.finish(limit.owned[0].get());
  EXPECT_THAT(chunks(limit.scheduler.schedule()), ElementsAre("1", "2:0+2"));

  Fixture pages(3, 4, {});
  pages.add(0, 8);
  pages.add(1, 8);  // needs 2 pages, 1 left: waits (FIFO, no skipping)
  pages.add(2, 1);
  EXPECT_THAT(chunks(pages.scheduler.schedule()), ElementsAre("0:0+8"));
  EXPECT_EQ(pages.scheduler.waiting().size(), 2u);
}

TEST(Scheduler, PreemptsTheNewestSequenceWhenDecodeLacksPages) {
  Fixture f(4, 2, {});
  Sequence* a = f.add(0, 4);  // 2 pages
  Sequence* b = f.add(1, 3);  // 2 pages, slot left in its last page
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0:0+4", "1:0+3"));
  // a needs a new page for position 4 and none is free: b (newest) is preempted and its pages go to a.
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0"));
  EXPECT_EQ(b->status, SequenceStatus::Waiting);
  EXPECT_TRUE(b->pages.pages.empty());
  EXPECT_EQ(b->n_computed_tokens, 0);
  EXPECT_EQ(f.scheduler.waiting().front(), b);
  EXPECT_EQ(f.scheduler.n_preemptions(), 1);
  EXPECT_EQ(a->pages.n_tokens, 5);
  // a finishes: b comes back with a prefill over all its 4 tokens (prompt + the one it generated).
  f.scheduler.finish(a);
  EXPECT_EQ(a->status, SequenceStatus::Finished);
  EXPECT_EQ(f.pages.n_free_pages(), 4);
  EXPECT_THAT(chunks(f.scheduler.schedule()), ElementsAre("1:0+4"));
  EXPECT_EQ(b->pages.n_tokens, 4);
}

TEST(Scheduler, PreemptsASequenceMidPrefillAndRestartsItsPrefill) {
  Fixture f(5, 2, {.max_running_sequences = 8, .max_prefill_tokens = 100, .chunked_prefill_size = 2});
  Sequence* a = f.add(0, 3);  // 2 pages; its first decode (position 3) fits in the second
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0:0+2"));
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0:2+1"));
  Sequence* b = f.add(1, 6);  // takes the 3 free pages
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0", "1:0+2"));
  EXPECT_EQ(f.pages.n_free_pages(), 0);
  // a's next position needs a page: b, mid-prefill, is preempted; nothing is admitted in that step.
  EXPECT_THAT(chunks(sample(f.scheduler.schedule())), ElementsAre("0"));
  EXPECT_EQ(b->status, SequenceStatus::Waiting);
  EXPECT_EQ(b->n_computed_tokens, 0);
  EXPECT_EQ(b->tokens.size(), 6u);
  f.scheduler.finish(a);
  EXPECT_THAT(chunks(f.scheduler.schedule()), ElementsAre("1:0+2"));
}

TEST(Scheduler, ASequenceAloneWithoutPagesPreemptsItself) {
  Fixture f(2, 2, {});
  Sequence* a = f.add(0, 4);  // fills the cache
  sample(f.scheduler.schedule());
  EXPECT_THAT(f.scheduler.schedule().chunks, IsEmpty());
  EXPECT_EQ(a->status, SequenceStatus::Waiting);
  EXPECT_EQ(f.pages.n_free_pages(), 2);
  EXPECT_TRUE(f.scheduler.has_work());
}

}  // namespace
}  // namespace fp4serve
