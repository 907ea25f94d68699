// A safetensors file's bytes, parsed as SafetensorsFile reads a shard. An accepted file's tensors lie inside it,
// after the header, and tile the data buffer exactly; every tensor is found by name and reads back its own bytes.
#include <cstring>
#include <memory>

#include "fuzz/fuzz_util.h"
#include "io/memory_file.h"
#include "io/safetensors.h"

using namespace fp4serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const SafetensorsFile file =
        SafetensorsFile::open_unmapped(std::make_unique<MemoryFile>("fuzz.safetensors", std::span(data, size)));
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | data[i];
    const uint64_t data_start = 8 + header_bytes;
    uint64_t covered_to = data_start;
    for (const TensorInfo& tensor : file.tensors()) {
      FUZZ_EXPECT(tensor.offset == covered_to, "tensor '{}' at {} does not start where the previous ended ({})",
                  tensor.name, tensor.offset, covered_to);
      FUZZ_EXPECT(tensor.nbytes <= size - tensor.offset, "tensor '{}' [{}, +{}) runs past the {} byte file",
                  tensor.name, tensor.offset, tensor.nbytes, size);
      FUZZ_EXPECT(tensor.nbytes == shape_numel(tensor.shape, "fuzz") * dtype_size(tensor.dtype),
                  "tensor '{}' holds {} bytes, not its shape's", tensor.name, tensor.nbytes);
      FUZZ_EXPECT(file.find(tensor.name) == &tensor, "tensor '{}' is not found by its name", tensor.name);
      covered_to = tensor.offset + tensor.nbytes;
      if (tensor.nbytes == 0) continue;
      uint8_t first = 0, last = 0;
      file.read(tensor, 0, {&first, 1});
      file.read(tensor, tensor.nbytes - 1, {&last, 1});
      FUZZ_EXPECT(first == data[tensor.offset] && last == data[tensor.offset + tensor.nbytes - 1],
                  "tensor '{}' reads back other bytes", tensor.name);
    }
    FUZZ_EXPECT(covered_to == size, "tensors end at {} but the file has {} bytes", covered_to, size);
  });
  return 0;
}
