// SGLang's native /generate: text or input_ids (one prompt or a batch), sampling_params, n samples, logprobs,
// streaming. Results carry meta_info with the rid, token counts, finish reason and the weight_version that produced
// them. Streamed chunks are cumulative (each holds the whole text and ids so far), as SGLang's are.
#pragma once
#include <httplib.h>

#include "server/http_util.h"

namespace fp4serve {

void handle_generate(const ApiContext& context, const httplib::Request& request, httplib::Response& response);

// SGLang's finish_reason object for a run that ended: {"type": "stop", "matched": id|"text"}, {"type": "length",
// "length": n}, {"type": "abort", "message": ...}.
nlohmann::json finish_reason_json(const GenerationRun& run);

}  // namespace fp4serve
