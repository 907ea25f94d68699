// Decides what each engine step runs (nano-vllm's policy), touching no device: prefill waiting sequences first
// (FIFO, while pages, the running limit and the prefill token budget allow; a prompt longer than the budget runs
// alone), otherwise one decode step for every running sequence. When a decode step lacks a page, the most recently
// admitted sequence is preempted: its pages are freed and it returns to the front of the waiting queue, to be
// prefilled again over all its tokens (sampling depends only on seed and token index, so its output is unchanged).
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/page_allocator.h"
#include "engine/sequence.h"

namespace fp4serve {

struct SchedulerOptions {
  int64_t max_running_sequences = 256;
  int64_t max_prefill_tokens = 8192;  // per step
};

struct ScheduledBatch {
  std::vector<Sequence*> sequences;
  bool prefill = false;  // prefill: each feeds all its tokens from position 0; decode: its last token
};

class Scheduler {
 public:
  Scheduler(PageAllocator& pages, SchedulerOptions options);

  void add(Sequence* seq);  // status Waiting, to the back of the queue; the engine keeps ownership
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  // Allocates or appends the pages the batch's new tokens need; an empty batch means no work.
  ScheduledBatch schedule();
  void finish(Sequence* seq);  // frees its pages, removes it from the queue or running set, status Finished

  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::deque<Sequence*>& running() const { return running_; }

 private:
  ScheduledBatch schedule_prefill();
  ScheduledBatch schedule_decode();
  void preempt(Sequence* seq);

  PageAllocator& pages_;
  SchedulerOptions options_;
  std::deque<Sequence*> waiting_;
  std::deque<Sequence*> running_;  // admission order
};

}  // namespace fp4serve
