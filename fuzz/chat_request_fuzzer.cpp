// A /v1/chat/completions request body, parsed and validated as the handler does (parse_body_text,
// parse_chat_request with the bundled model's chat template and tokenizer). An accepted request has one non-empty
// prompt, max_new_tokens inside the context room unless given, and fields inside their documented ranges.
#include "fuzz/fuzz_util.h"
#include "server/http_util.h"
#include "server/openai_api.h"

using namespace fp4serve;

namespace {
constexpr int64_t kContextRoom = 4096;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const nlohmann::json body = parse_body_text(fuzz::as_text(data, size));
    const OpenAiRequest request =
        parse_chat_request(fuzz::bundled_tokenizer(), fuzz::bundled_chat_template(), kContextRoom, body);
    FUZZ_EXPECT(request.api == OpenAiEndpoint::Chat, "a chat request parsed as completions");
    FUZZ_EXPECT(request.prompts.size() == 1 && !request.prompts[0].empty(), "an accepted chat has no prompt");
    for (int32_t id : request.prompts[0])
      FUZZ_EXPECT(id >= 0 && id < fuzz::bundled_tokenizer().vocab_size(), "prompt id {} outside the vocabulary", id);
    FUZZ_EXPECT(request.spec.max_new_tokens >= 0, "max_new_tokens = {}", request.spec.max_new_tokens);
    if (!body.contains("max_tokens") && !body.contains("max_completion_tokens"))
      FUZZ_EXPECT(request.spec.max_new_tokens + static_cast<int64_t>(request.prompts[0].size()) <= kContextRoom ||
                      request.spec.max_new_tokens == 0,
                  "the default max_new_tokens {} overruns the context", request.spec.max_new_tokens);
    FUZZ_EXPECT(request.top_logprobs >= 0 && request.top_logprobs <= kMaxTopLogprobs, "top_logprobs = {}",
                request.top_logprobs);
    FUZZ_EXPECT(request.top_logprobs == 0 || request.logprobs, "top_logprobs without logprobs");
    FUZZ_EXPECT(request.spec.n >= 1 && request.spec.n <= kMaxSamplesPerPrompt, "n = {}", request.spec.n);
  });
  return 0;
}
