// A /update_weights_from_tensor request body, parsed and validated as the handler does (parse_body_text,
// parse_update_weights_from_tensor_request). An accepted request holds tensors whose bytes are exactly what their
// dtype and size need: inline data of that length, or a CUDA IPC tensor that lies inside its storage.
#include "fuzz/fuzz_util.h"
#include "server/http_server.h"
#include "server/tensor_update.h"

using namespace fp4serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const nlohmann::json body = parse_body_text(fuzz::as_text(data, size));
    const TensorUpdateRequest request = parse_update_weights_from_tensor_request(body);
    FUZZ_EXPECT(!request.tensors.empty(), "an accepted update has no tensors");
    for (const SerializedTensor& t : request.tensors) {
      FUZZ_EXPECT(!t.name.empty(), "{}: an accepted tensor has no name", t.where);
      if (t.cuda_ipc) {
        FUZZ_EXPECT(t.data.empty(), "{}: both inline data and a CUDA IPC handle", t.where);
        FUZZ_EXPECT(static_cast<uint64_t>(t.storage_offset) * dtype_size(t.dtype) + t.nbytes() <=
                        t.cuda_ipc->storage_size_bytes,
                    "{}: the tensor ends past its storage", t.where);
      } else {
        FUZZ_EXPECT(t.data.size() == t.nbytes(), "{}: {} bytes of data for {} needed", t.where, t.data.size(),
                    t.nbytes());
      }
    }
  });
  return 0;
}
