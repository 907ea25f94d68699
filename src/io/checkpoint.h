// An HF checkpoint directory: either model.safetensors or model.safetensors.index.json naming shard files. open()
// validates the index against the shards: every tensor lives in exactly one shard, the one the index names, and
// every shard tensor is listed. Pointers and views it hands out stay valid while the Checkpoint lives.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"

namespace fp4serve {

inline constexpr std::string_view kSingleSafetensorsFile = "model.safetensors";
inline constexpr std::string_view kSafetensorsIndexFile = "model.safetensors.index.json";

// model.safetensors.index.json's "weight_map": tensor name -> shard file name, every name a plain file name (no
// directory part, so an index cannot point outside its directory). `source` names the index in errors.
std::map<std::string, std::string> parse_weight_map(const nlohmann::json& index, std::string_view source);

struct CheckpointTensor {
  const SafetensorsFile* shard;    // the file holding it: shard->path(), shard->read() for staged copies
  const TensorInfo* info;          // name, dtype, shape, offset in the shard, nbytes
  std::span<const uint8_t> bytes;  // zero-copy view when mapped; empty when opened with map = false
};

struct CheckpointOptions {
  bool map = true;                          // false: no mmap, read tensors through CheckpointTensor::shard->read()
  FileOpener open_file = open_posix_file;   // how unmapped shards are opened (tests inject faults here)
};

class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir, const CheckpointOptions& options = {});

  const std::filesystem::path& dir() const { return dir_; }
  std::vector<std::string> tensor_names() const;  // sorted
  size_t num_tensors() const { return tensors_.size(); }
  const CheckpointTensor* find(std::string_view name) const;  // nullptr when absent
  const CheckpointTensor& tensor(std::string_view name) const;  // throws naming the directory and tensor
  const std::vector<SafetensorsFile>& shards() const { return shards_; }

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, CheckpointTensor, std::less<>> tensors_;
};

// One output shard: its file name and the tensors it holds, in write order.
struct ShardPlan {
  std::string file_name = {};  // model-0000i-of-0000N.safetensors
  std::vector<TensorDecl> tensors = {};
  uint64_t nbytes = 0;  // sum of its tensors' bytes
};

// Greedy in order: a tensor joins the current shard unless that would pass max_shard_bytes (a tensor larger than
// the limit gets a shard of its own).
std::vector<ShardPlan> plan_shards(const std::vector<TensorDecl>& tensors, uint64_t max_shard_bytes);

// Writes a sharded checkpoint in two passes: add() declares every tensor, write() then asks `produce` for each
// tensor's bytes in order, so memory holds two tensors at a time (two buffers the size of the largest tensor: one
// being written to disk by a helper thread while `produce` fills the other).
// Shards appear via rename when complete; the index is written last, so a reader that sees the index sees all.
class CheckpointWriter {
 public:
  using TensorProducer = std::function<void(const TensorDecl& tensor, std::span<uint8_t> out)>;

  // Creates `dir` if needed; refuses a directory that already holds a checkpoint.
  CheckpointWriter(std::filesystem::path dir, uint64_t max_shard_bytes);
  void add(TensorDecl tensor);
  void write(const TensorProducer& produce);

 private:
  std::filesystem::path dir_;
  uint64_t max_shard_bytes_;
  std::vector<TensorDecl> tensors_;
  std::set<std::string, std::less<>> declared_names_;
};

}  // namespace fp4serve
