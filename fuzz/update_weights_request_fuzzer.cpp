// A /update_weights_from_disk request body, parsed and validated as the handler does (parse_body_text,
// parse_update_weights_request). An accepted request names a non-empty model_path; nothing else is touched (the
// handler resolves the path afterwards).
#include "fuzz/fuzz_util.h"
#include "server/http_server.h"

using namespace fp4serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const nlohmann::json body = parse_body_text(fuzz::as_text(data, size));
    const ReloadRequest request = parse_update_weights_request(body);
    FUZZ_EXPECT(!request.model_path.empty(), "an accepted reload has no model_path");
    FUZZ_EXPECT(request.model_path == body.at("model_path").get<std::string>(), "model_path changed while parsing");
    FUZZ_EXPECT(!request.weight_version || body.at("weight_version").is_string(), "weight_version from a non-string");
  });
  return 0;
}
