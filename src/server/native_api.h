// SGLang's native /generate: text or input_ids (one prompt or a batch), sampling_params, n samples, logprobs,
// streaming. Results carry meta_info with the rid, token counts, finish reason and the weight_version that produced
// them. Streamed chunks are cumulative (each holds the whole text and ids so far), as SGLang's are.
#pragma once
#include <httplib.h>

#include "server/http_util.h"
#include "server/request_fields.h"

namespace fp4serve {

// A /generate body, validated: prompts tokenized, sampling fields checked, one rid per prompt.
struct GenerateApiRequest {
  std::vector<std::vector<int32_t>> prompts;
  bool batch = false;
  SamplingSpec spec;
  bool return_logprob = false;
  int64_t logprob_start_len = -1;  // -1: the last prompt token (SGLang's default), so nothing is computed
  int32_t top_logprobs_num = 0;
  bool with_token_ids_logprob = false;
  bool stream = false;
  std::vector<std::string> rids;  // one per prompt
};

// Throws Error naming the field at fault. Pure: reads nothing but `body` (and the tokenizer).
GenerateApiRequest parse_generate_request(const Tokenizer& tokenizer, const nlohmann::json& body);

void handle_generate(const ApiContext& context, const httplib::Request& request, httplib::Response& response);

// SGLang's finish_reason object for a run that ended: {"type": "stop", "matched": id|"text"}, {"type": "length",
// "length": n}, {"type": "abort", "message": ...}.
nlohmann::json finish_reason_json(const GenerationRun& run);

}  // namespace fp4serve
