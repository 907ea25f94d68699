// Decides what each engine step runs (nano-vllm's policy, SGLang's chunked prefill), touching no device. A step
// feeds one token for every running sequence that is decoding, plus prefill chunks within the prefill budget:
// first the rest of running sequences' prompts (admission order), then waiting sequences (FIFO, while pages and the
// running limit allow). A prompt is split at the budget (chunked prefill), or, with chunking off, runs whole and
// alone among the step's prefills when longer than the budget. Admission takes pages for all the sequence's tokens
// and starts after the longest run of whole pages the prefix cache holds for them, stopping before the first
// position whose logits are needed (the last token's, and prompt-logprob positions). Short of pages, pages only the
// prefix cache holds are evicted first; then, for a decode, the most recently admitted sequence is preempted (even
// mid-prefill): its pages are freed and it returns to the front of the waiting queue, to be prefilled again over all
// its tokens (sampling depends only on seed and token index, so its output is unchanged); a step that preempted
// admits nothing. retract_all does the same to every running sequence at once (pause_generation "retract").
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
  int64_t max_prefill_tokens = 16384;   // prompt tokens fed per step (SGLang's --max-prefill-tokens)
  int64_t chunked_prefill_size = 2048;  // longest prefill per step, prompts split to fit; -1: never split
};

// Tokens [start, start + n_tokens) of one sequence, fed in one step.
struct ScheduledChunk {
  Sequence* sequence;
  int64_t start;
  int64_t n_tokens;
  bool decode;  // feeds the token sampled in the previous step (else part of a prefill)
  bool completes_prefill() const { return start + n_tokens == static_cast<int64_t>(sequence->tokens.size()); }
};

struct ScheduledBatch {
  std::vector<ScheduledChunk> chunks{};  // running sequences in admission order, then newly admitted ones
};

class Scheduler {
 public:
  // prefix_cache may be null (no reuse).
  Scheduler(PageAllocator& pages, PrefixCache* prefix_cache, SchedulerOptions options);

  void add(Sequence* seq);  // status Waiting, to the back of the queue; the engine keeps ownership
  bool has_work() const { return !waiting_.empty() || !running_.empty(); }
  // Takes the pages the batch's new tokens need and counts them as computed (n_computed_tokens): the engine runs
  // the batch before the next call. An empty batch means no work.
  ScheduledBatch schedule();
  void finish(Sequence* seq);  // frees its pages, removes it from the queue or running set, status Finished
  // Every running sequence back to the front of the waiting queue, in admission order, its pages freed.
  void retract_all();

  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::deque<Sequence*>& running() const { return running_; }
  int64_t n_preemptions() const { return n_preemptions_; }  // since construction

 private:
  bool schedule_running(ScheduledBatch& batch, int64_t& budget);  // returns whether it preempted
  void admit_waiting(ScheduledBatch& batch, int64_t& budget);
  void preempt(Sequence* seq);
  void requeue_front(Sequence* seq);  // pages freed, to the front of the waiting queue
  bool make_free(int64_t n_pages);  // evicting from the prefix cache if needed
  bool chunked() const { return options_.chunked_prefill_size > 0; }

  PageAllocator& pages_;
  PrefixCache* prefix_cache_;
  SchedulerOptions options_;
  std::deque<Sequence*> waiting_;
  std::deque<Sequence*> running_;  // admission order
  int64_t n_preemptions_ = 0;
};

}  // namespace fp4serve
