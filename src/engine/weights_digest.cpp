#include "engine/weights_digest.h"

#include <fmt/format.h>

#include <algorithm>

#include "io/checkpoint.h"
#include "io/xxhash64.h"

namespace fp4serve {

namespace {

void add_tensor_header(Xxh64& h, const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  const uint8_t zero = 0;
  h.update(name);
  h.update({&zero, 1});
  h.update(dtype_name(dtype));
  h.update({&zero, 1});
  for (int64_t d : shape) h.update({reinterpret_cast<const uint8_t*>(&d), sizeof d});
}

}  // namespace

uint64_t weights_digest(std::vector<std::pair<std::string, Tensor>> tensors) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  Xxh64 h;
  for (const auto& [name, tensor] : tensors) {
    Tensor host = tensor.device() == Device::CPU ? tensor : to_host(tensor);
    add_tensor_header(h, name, host.dtype, host.shape);
    h.update({host.raw(), host.nbytes()});
  }
  return h.digest();
}

uint64_t model_weights_digest(const LoadableModel& model) { return weights_digest(model.export_logical()); }

uint64_t checkpoint_digest(const std::filesystem::path& dir) {
  Checkpoint ckpt = Checkpoint::open(dir);
  Xxh64 h;
  for (const auto& name : ckpt.tensor_names()) {  // sorted
    const CheckpointTensor& t = ckpt.tensor(name);
    add_tensor_header(h, name, t.info->dtype, t.info->shape);
    h.update(t.bytes);
  }
  return h.digest();
}

std::string digest_hex(uint64_t digest) { return fmt::format("{:016x}", digest); }

}  // namespace fp4serve
