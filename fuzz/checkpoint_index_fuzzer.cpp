// model.safetensors.index.json text, parsed as Checkpoint::open reads it. An accepted index maps every tensor to a
// plain file name inside the checkpoint directory (never a path that leaves it).
#include <filesystem>

#include "fuzz/fuzz_util.h"
#include "io/checkpoint.h"
#include "io/json_file.h"

using namespace fp4serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::allow_error([&] {
    const nlohmann::json index = parse_json_text(fuzz::as_text(data, size), "model.safetensors.index.json");
    const std::map<std::string, std::string> shard_of = parse_weight_map(index, "model.safetensors.index.json");
    FUZZ_EXPECT(!shard_of.empty(), "an accepted index maps no tensor");
    FUZZ_EXPECT(shard_of.size() == index["weight_map"].size(), "{} tensors parsed from {} weight_map entries",
                shard_of.size(), index["weight_map"].size());
    for (const auto& [tensor, shard] : shard_of) {
      const std::filesystem::path inside = std::filesystem::path("/checkpoint") / shard;
      FUZZ_EXPECT(inside.parent_path() == "/checkpoint" && shard != "." && shard != "..",
                  "tensor '{}' maps to '{}', outside the directory", tensor, shard);
    }
  });
  return 0;
}
