#include "server/output_text.h"

#include <algorithm>

namespace fp4serve {

OutputText::OutputText(const Tokenizer& tokenizer, std::vector<std::string> stop_strings, bool skip_special_tokens)
    : decoder_(tokenizer, skip_special_tokens), stop_strings_(std::move(stop_strings)) {
  std::erase_if(stop_strings_, [](const std::string& s) { return s.empty(); });
}

bool OutputText::push(const GeneratedToken& token) {
  if (matched_stop_) return false;
  tokens_.push_back(token);
  const size_t searched_until = decoded_.size();
  decoded_ += decoder_.push(token.id);
  // A match can only involve the new text: start where the longest stop string could still reach back.
  size_t longest = 0;
  for (const std::string& stop : stop_strings_) longest = std::max(longest, stop.size());
  const size_t from = searched_until >= longest ? searched_until - longest + 1 : 0;
  size_t best = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    const size_t at = decoded_.find(stop, from);
    if (at < best) best = at, matched_stop_ = stop;
  }
  if (best != std::string::npos) {
    decoded_.resize(best);
    release(decoded_.size());
  } else {
    release(decoded_.size() - held_back_tail());
  }
  return true;
}

void OutputText::finish() {
  if (!matched_stop_) decoded_ += decoder_.finish();
  release(decoded_.size());
}

std::string OutputText::take_delta() {
  std::string delta = released_.substr(delta_start_);
  delta_start_ = released_.size();
  return delta;
}

void OutputText::release(size_t end) {
  if (end > released_.size()) released_.append(decoded_, released_.size(), end - released_.size());
}

size_t OutputText::held_back_tail() const {
  size_t held = 0;
  for (const std::string& stop : stop_strings_) {
    for (size_t n = std::min(stop.size() - 1, decoded_.size()); n > held; --n) {
      if (decoded_.compare(decoded_.size() - n, n, stop, 0, n) == 0) {
        held = n;
        break;
      }
    }
  }
  return held;
}

}  // namespace fp4serve
