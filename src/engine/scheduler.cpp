#include "engine/scheduler.h"

#include <algorithm>

#include "common/error.h"

namespace fp4serve {

Scheduler::Scheduler(PageAllocator& pages, PrefixCache* prefix_cache, SchedulerOptions options)
    : pages_(pages), prefix_cache_(prefix_cache), options_(options) {
  FP4_CHECK(options.max_running_sequences > 0 && options.max_prefill_tokens > 0,
            "scheduler: max_running_sequences {} and max_prefill_tokens {} must be positive",
            options.max_running_sequences, options.max_prefill_tokens);
  FP4_CHECK(options.chunked_prefill_size == -1 || options.chunked_prefill_size > 0,
            "scheduler: chunked_prefill_size {} must be positive, or -1 to turn chunked prefill off",
            options.chunked_prefill_size);
}

void Scheduler::add(Sequence* seq) {
  seq->status = SequenceStatus::Waiting;
  waiting_.push_back(seq);
}

ScheduledBatch Scheduler::schedule() {
  ScheduledBatch batch;
  int64_t budget = chunked() ? std::min(options_.max_prefill_tokens, options_.chunked_prefill_size)
                             : options_.max_prefill_tokens;
  // Pages a preemption just freed are for the running sequences: admitting now would only preempt again.
  if (!schedule_running(batch, budget)) admit_waiting(batch, budget);
  return batch;
}

bool Scheduler::make_free(int64_t n_pages) {
  return prefix_cache_ ? prefix_cache_->make_free(n_pages) : pages_.n_free_pages() >= n_pages;
}

bool Scheduler::schedule_running(ScheduledBatch& batch, int64_t& budget) {
  bool preempted = false;
  std::deque<Sequence*> candidates;
  candidates.swap(running_);
  while (!candidates.empty()) {
    Sequence* seq = candidates.front();
    candidates.pop_front();
    const int64_t n_tokens = static_cast<int64_t>(seq->tokens.size());
    const int64_t start = seq->n_computed_tokens;
    if (seq->pages.n_tokens == n_tokens) {  // mid-prefill: its pages were taken at admission
      running_.push_back(seq);
      if (budget <= 0) continue;
      const int64_t n_fed = std::min(n_tokens - start, budget);
      budget -= n_fed;
      seq->n_computed_tokens += n_fed;
      batch.chunks.push_back({.sequence = seq, .start = start, .n_tokens = n_fed, .decode = false});
      continue;
    }
    bool preempted_self = false;
    while (!pages_.can_append(seq->pages, 1) && !make_free(1)) {
      preempted = true;
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
    seq->n_computed_tokens += 1;
    running_.push_back(seq);
    batch.chunks.push_back({.sequence = seq, .start = start, .n_tokens = 1, .decode = true});
  }
  return preempted;
}

void Scheduler::admit_waiting(ScheduledBatch& batch, int64_t& budget) {
  bool first = true;
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_running_sequences) {
    Sequence* seq = waiting_.front();
    const int64_t n_tokens = static_cast<int64_t>(seq->tokens.size());
    std::vector<int32_t> hits = prefix_cache_ ? prefix_cache_->match(seq->tokens, seq->first_position_needing_logits())
                                              : std::vector<int32_t>{};
    const int64_t n_cached = static_cast<int64_t>(hits.size()) * pages_.page_size();
    const int64_t n_new = n_tokens - n_cached;
    const int64_t n_fed = chunked() ? std::min(n_new, budget) : n_new;
    const bool unsplit_over_budget = !chunked() && !first && n_new > budget;
    if (unsplit_over_budget || !make_free(pages_.pages_for(n_tokens) - static_cast<int64_t>(hits.size()))) {
      for (int32_t page : hits) pages_.release(page);
      break;
    }
    seq->pages = {.pages = std::move(hits), .n_tokens = n_cached};
    pages_.append(seq->pages, n_new);
    seq->n_cached_tokens = n_cached;
    seq->n_computed_tokens = n_cached + n_fed;
    waiting_.pop_front();
    seq->status = SequenceStatus::Running;
    running_.push_back(seq);
    batch.chunks.push_back({.sequence = seq, .start = n_cached, .n_tokens = n_fed, .decode = false});
    budget -= n_fed;
    first = false;
  }
}

void Scheduler::preempt(Sequence* seq) {
  ++n_preemptions_;
  requeue_front(seq);
}

void Scheduler::requeue_front(Sequence* seq) {
  pages_.free(seq->pages);
  seq->n_computed_tokens = 0;
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
