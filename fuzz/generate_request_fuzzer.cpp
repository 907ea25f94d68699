// A /generate request body, parsed and validated as the handler does (parse_body_text, parse_generate_request),
// then fanned out into engine jobs. An accepted request has non-empty prompts of token ids inside int32, one rid
// per prompt, fields inside their documented ranges, and n jobs per prompt.
#include "fuzz/fuzz_util.h"
#include "server/http_util.h"
#include "server/native_api.h"

using namespace fp4serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const GenerateApiRequest request =
        parse_generate_request(fuzz::bundled_tokenizer(), parse_body_text(fuzz::as_text(data, size)));
    FUZZ_EXPECT(!request.prompts.empty(), "an accepted request has no prompt");
    for (const std::vector<int32_t>& prompt : request.prompts) {
      FUZZ_EXPECT(!prompt.empty(), "an accepted request has an empty prompt");
      for (int32_t id : prompt) FUZZ_EXPECT(id >= 0, "negative token id {}", id);
    }
    FUZZ_EXPECT(request.rids.size() == request.prompts.size(), "{} rids for {} prompts", request.rids.size(),
                request.prompts.size());
    FUZZ_EXPECT(request.spec.n >= 1 && request.spec.n <= kMaxSamplesPerPrompt, "n = {}", request.spec.n);
    FUZZ_EXPECT(request.spec.max_new_tokens >= 0, "max_new_tokens = {}", request.spec.max_new_tokens);
    FUZZ_EXPECT(request.top_logprobs_num >= 0 && request.top_logprobs_num <= kMaxTopLogprobs,
                "top_logprobs_num = {}", request.top_logprobs_num);
    FUZZ_EXPECT(request.logprob_start_len >= -1, "logprob_start_len = {}", request.logprob_start_len);
    FUZZ_EXPECT(request.spec.stop.size() <= kMaxStopStrings, "{} stop strings", request.spec.stop.size());
    for (size_t i = 0; i < request.prompts.size(); ++i) {
      const std::vector<GenerationJob> jobs = make_jobs({request.prompts[i]}, request.spec, request.rids[i]);
      FUZZ_EXPECT(jobs.size() == static_cast<size_t>(request.spec.n), "{} jobs for n = {}", jobs.size(),
                  request.spec.n);
    }
  });
  return 0;
}
