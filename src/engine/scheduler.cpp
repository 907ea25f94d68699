#include "engine/scheduler.h"

#include <algorithm>

#include "common/error.h"

namespace fp4serve {

Scheduler::Scheduler(PageAllocator& pages, PrefixCache* prefix_cache, SchedulerOptions options)
    : pages_(pages), prefix_cache_(prefix_cache), options_(options) {
  FP4_CHECK(options.max_running_sequences > 0 && options.max_prefill_tokens > 0,
            "scheduler: max_running_sequences {} and max_prefill_tokens {} must be positive",
            options.max_running_sequences, options.max_prefill_tokens);
}

void Scheduler::add(Sequence* seq) {
  seq->status = SequenceStatus::Waiting;
  waiting_.push_back(seq);
}

ScheduledBatch Scheduler::schedule() {
  ScheduledBatch batch = schedule_prefill();
  return batch.sequences.empty() ? schedule_decode() : batch;
}

bool Scheduler::make_free(int64_t n_pages) {
  return prefix_cache_ ? prefix_cache_->make_free(n_pages) : pages_.n_free_pages() >= n_pages;
}

ScheduledBatch Scheduler::schedule_prefill() {
  ScheduledBatch batch{.sequences = {}, .prefill = true};
  int64_t n_batch_tokens = 0;
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running_sequences) {
    Sequence* seq = waiting_.front();
    const int64_t n_tokens = static_cast<int64_t>(seq->tokens.size());
    std::vector<int32_t> hits =
        prefix_cache_ ? prefix_cache_->match(seq->tokens, n_tokens - 1) : std::vector<int32_t>{};
    const int64_t n_cached = static_cast<int64_t>(hits.size()) * pages_.page_size();
    const int64_t n_new = n_tokens - n_cached;
    const bool over_budget = !batch.sequences.empty() && n_batch_tokens + n_new > options_.max_prefill_tokens;
    if (over_budget || !make_free(pages_.pages_for(n_tokens) - static_cast<int64_t>(hits.size()))) {
      for (int32_t page : hits) pages_.release(page);
      break;
    }
    seq->pages = {.pages = std::move(hits), .n_tokens = n_cached};
    pages_.append(seq->pages, n_new);
    seq->n_cached_tokens = n_cached;
    waiting_.pop_front();
    seq->status = SequenceStatus::Running;
    running_.push_back(seq);
    batch.sequences.push_back(seq);
    n_batch_tokens += n_new;
  }
  return batch;
}

ScheduledBatch Scheduler::schedule_decode() {
  ScheduledBatch batch{.sequences = {}, .prefill = false};
  std::deque<Sequence*> candidates;
  candidates.swap(running_);
  while (!candidates.empty()) {
    Sequence* seq = candidates.front();
    candidates.pop_front();
    bool preempted_self = false;
    while (!pages_.can_append(seq->pages, 1) && !make_free(1)) {
      if (candidates.empty()) {
        preempt(seq);
        preempted_self = true;
        break;
      }
      preempt(candidates.back());
      candidates.pop_back();
    }
    if (preempted_self) continue;
    pages_.append(seq->pages, 1);
    batch.sequences.push_back(seq);
  }
  running_.assign(batch.sequences.begin(), batch.sequences.end());
  return batch;
}

void Scheduler::preempt(Sequence* seq) {
  ++n_preemptions_;
  requeue_front(seq);
}

void Scheduler::requeue_front(Sequence* seq) {
  pages_.free(seq->pages);
  seq->status = SequenceStatus::Waiting;
  waiting_.push_front(seq);
}

void Scheduler::retract_all() {
  while (!running_.empty()) {
    Sequence* seq = running_.back();
    running_.pop_back();
    requeue_front(seq);
  }
}

void Scheduler::finish(Sequence* seq) {
  pages_.free(seq->pages);
  seq->status = SequenceStatus::Finished;
  for (std::deque<Sequence*>* queue : {&waiting_, &running_}) {
    const auto it = std::find(queue->begin(), queue->end(), seq);
    if (it != queue->end()) queue->erase(it);
  }
}

}  // namespace fp4serve
