// A digest of the logical weights: what a trainer wrote, independent of the layouts the server derived. The model's
// digest (from export_logical, layouts inverted) equals the digest of the checkpoint directory it was loaded from,
// so a trainer can check that the server holds exactly its weights. Definition (reproducible in any language):
// XXH64 (seed 0) over the tensors in byte-wise sorted name order, each contributing its name, a 0 byte, its
// safetensors dtype name, a 0 byte, its dims as little-endian int64, then its raw bytes. Printed as 16 hex digits.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "quant/loadable.h"

namespace fp4serve {

uint64_t weights_digest(std::vector<std::pair<std::string, Tensor>> tensors);
uint64_t model_weights_digest(const LoadableModel& model);
uint64_t checkpoint_digest(const std::filesystem::path& dir);
std::string digest_hex(uint64_t digest);

}  // namespace fp4serve
