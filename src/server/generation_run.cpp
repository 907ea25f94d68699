#include "server/generation_run.h"

namespace fp4serve {

GenerationRun::GenerationRun(EngineService& service, const Tokenizer& tokenizer, GenerationJob job,
                             std::string_view name)
    : service_(service),
      output_(tokenizer, std::move(job.stop_strings), job.skip_special_tokens),
      rid_(job.rid),
      prompt_(job.request.input_ids),
      max_new_tokens_(job.request.max_new_tokens),
      start_(std::chrono::steady_clock::now()) {
  channel_ = service_.submit(std::move(job.request), job.rid, name);
}

GenerationRun::~GenerationRun() {
  if (!ended_ && !cancelled_) service_.cancel(channel_->ticket());
}

bool GenerationRun::poll(std::chrono::milliseconds timeout) {
  if (ended_) return false;
  RequestChannel::News news = channel_->wait(timeout);
  if (news.weight_version) weight_version_ = std::move(news.weight_version);
  if (news.input_logprobs) input_logprobs_ = std::move(*news.input_logprobs);
  for (const GeneratedToken& token : news.tokens) {
    if (!output_.push(token) && !cancelled_) {
      // A stop string matched: the output is complete; the engine need not run further.
      service_.cancel(channel_->ticket());
      cancelled_ = true;
    }
  }
  if (news.ended()) {
    output_.finish();
    result_ = std::move(news.result);
    if (result_) weight_version_ = result_->weight_version;
    error_ = std::move(news.error);
    ended_ = true;
  }
  return news.input_logprobs || !news.tokens.empty() || news.ended();
}

double GenerationRun::seconds_elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

}  // namespace fp4serve
