// Decides what each engine step runs (nano-vllm's policy), touching no device: prefill waiting sequences first
// (FIFO, while pages, the running limit and the prefill token budget allow; a prompt longer than the budget runs
// alone), otherwise one decode step for every running sequence. A prefill starts after the longest run of whole
// pages the prefix cache holds for its tokens (the last token is always computed: its logits are needed). Short of
// pages, pages only the prefix cache holds are evicted first; then, in a decode step, the most recently admitted
// sequence is preempted: its pages are freed and it returns to the front of the waiting queue, to be prefilled
// again over all its tokens (sampling depends only on seed and token index, so its output is unchanged).
// retract_all does the same to every running sequence at once (pause_generation "retract").
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/page_allocator.h"
#include "engine/prefix_cache.h"
#include "engine/sequence.h"

namespace fp4serve {

struct SchedulerOptions {
  int64_t max_running_sequences = 256;
  int64_t max_prefill_tokens = 8192;  // per step
};

struct ScheduledBatch {
  std::vector<Sequence*> sequences{};
  bool prefill = false;  // prefill: each feeds its tokens from n_cached_tokens on; decode: its last token
};

class Scheduler {
 public:
  // prefix_cache may be null (no reuse).
  Scheduler(PageAllocator& pages, PrefixCache* prefix_cache, SchedulerOptions options);

  void add(Sequence* seq);  // status Waiting, to the back of the queue; the engine keeps ownership
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  // Allocates or appends the pages the batch's new tokens need; an empty batch means no work.
  ScheduledBatch schedule();
  void finish(Sequence* seq);  // frees its pages, removes it from the queue or running set, status Finished
  // Every running sequence back to the front of the waiting queue, in admission order, its pages freed.
  void retract_all();

  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::deque<Sequence*>& running() const { return running_; }
  int64_t n_preemptions() const { return n_preemptions_; }  // since construction

 private:
  ScheduledBatch schedule_prefill();
  ScheduledBatch schedule_decode();
  void preempt(Sequence* seq);
  void requeue_front(Sequence* seq);  // pages freed, to the front of the waiting queue
  bool make_free(int64_t n_pages);  // evicting from the prefix cache if needed

  PageAllocator& pages_;
  PrefixCache* prefix_cache_;
  SchedulerOptions options_;
  std::deque<Sequence*> waiting_;
  std::deque<Sequence*> running_;  // admission order
  int64_t n_preemptions_ = 0;
};

}  // namespace fp4serve
