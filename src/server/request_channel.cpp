#include "server/request_channel.h"

namespace fp4serve {

void RequestChannel::admitted(std::string weight_version) {
  {
    std::lock_guard lock(mutex_);
    weight_version_ = std::move(weight_version);
  }
  changed_.notify_all();
}

void RequestChannel::push_input_logprobs(std::vector<PositionLogprobs> input_logprobs) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    input_logprobs_ = std::move(input_logprobs);
  }
  changed_.notify_all();
}

void RequestChannel::push(GeneratedToken token) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    tokens_.push_back(std::move(token));
  }
  changed_.notify_all();
}

void RequestChannel::close(GenerateResult result) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    result_ = std::move(result);
  }
  changed_.notify_all();
}

void RequestChannel::close_with_error(ChannelError error) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    error_ = std::move(error);
  }
  changed_.notify_all();
}

RequestChannel::News RequestChannel::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return weight_version_ || input_logprobs_ || !tokens_.empty() || result_ || error_;
  });
  News news;
  news.weight_version = std::exchange(weight_version_, std::nullopt);
  news.input_logprobs = std::exchange(input_logprobs_, std::nullopt);
  news.tokens.swap(tokens_);
  news.result = std::exchange(result_, std::nullopt);
  news.error = std::exchange(error_, std::nullopt);
  return news;
}

}  // namespace fp4serve
