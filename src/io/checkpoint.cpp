#include "io/checkpoint.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <future>

#include "common/error.h"
#include "io/json_file.h"

namespace fp4serve {

namespace {

namespace fs = std::filesystem;

// Shard names come from a file we did not write: only plain names inside the directory are allowed.
void check_shard_file_name(std::string_view source, const std::string& tensor, const std::string& shard) {
  const fs::path as_path(shard);
  FP4_CHECK(!shard.empty() && shard != "." && shard != ".." && as_path.filename() == as_path,
            "{}: tensor '{}' maps to '{}', which is not a plain file name in the checkpoint directory", source,
            tensor, shard);
}

std::vector<std::string> other_safetensors_files(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors") names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

std::map<std::string, std::string> parse_weight_map(const nlohmann::json& index, std::string_view source) {
  FP4_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
            "{}: expected an object with a 'weight_map' object (tensor name -> shard file)", source);
  std::map<std::string, std::string> shard_of;
  for (const auto& [tensor, shard_json] : index["weight_map"].items()) {
    FP4_CHECK(shard_json.is_string(), "{}: weight_map['{}'] must be a shard file name, got {}", source, tensor,
              json_type_name(shard_json));
    const std::string& shard = shard_json.get_ref<const std::string&>();
    check_shard_file_name(source, tensor, shard);
    shard_of.emplace(tensor, shard);
  }
  FP4_CHECK(!shard_of.empty(), "{}: weight_map is empty", source);
  return shard_of;
}

Checkpoint Checkpoint::open(const fs::path& dir, const CheckpointOptions& options) {
  std::error_code ec;
  FP4_CHECK(fs::is_directory(dir, ec), "{}: not a directory (expected an HF checkpoint directory)", dir.string());
  const fs::path single_path = dir / kSingleSafetensorsFile, index_path = dir / kSafetensorsIndexFile;
  const bool has_single = fs::exists(single_path), has_index = fs::exists(index_path);
  FP4_CHECK(!(has_single && has_index),
            "{}: holds both {} and {}; which one is the checkpoint is ambiguous: remove the stale one", dir.string(),
            kSingleSafetensorsFile, kSafetensorsIndexFile);
  if (!has_single && !has_index) {
    const auto others = other_safetensors_files(dir);
    fail("{}: no {} or {} found{}", dir.string(), kSingleSafetensorsFile, kSafetensorsIndexFile,
         others.empty() ? std::string(fs::is_empty(dir) ? " (directory is empty)" : " (no .safetensors files)")
                        : fmt::format("; it holds {} without an index naming them", fmt::join(others, ", ")));
  }

  auto open_shard = [&](const fs::path& path) {
    return options.map ? SafetensorsFile::open(path) : SafetensorsFile::open_unmapped(options.open_file(path));
  };

  Checkpoint checkpoint;
  checkpoint.dir_ = dir;
  std::map<std::string, std::string> index_shard_of;  // from the index: tensor -> shard file name
  if (has_single) {
    checkpoint.shards_.push_back(open_shard(single_path));
  } else {
    const std::string index_name = index_path.string();
    index_shard_of = parse_weight_map(read_json_file(index_path), index_name);
    std::map<std::string, size_t> shard_number;  // shard file name -> position in shards_
    for (const auto& [tensor, shard] : index_shard_of) {
      if (shard_number.contains(shard)) continue;
      FP4_CHECK(fs::is_regular_file(dir / shard), "{}: shard '{}' (holding tensor '{}') does not exist in {}",
                index_name, shard, tensor, dir.string());
      shard_number.emplace(shard, 0);
    }
    // Open in file-name order so shards() reads model-00001, model-00002, ... sequentially.
    for (auto& [shard, number] : shard_number) {
      number = checkpoint.shards_.size();
      checkpoint.shards_.push_back(open_shard(dir / shard));
    }
  }

  // What the shards actually hold; a name in two shards is an error whatever the index says.
  for (const SafetensorsFile& shard : checkpoint.shards_) {
    for (const TensorInfo& info : shard.tensors()) {
      const auto bytes = shard.is_mapped() ? shard.bytes(info) : std::span<const uint8_t>{};
      auto [it, inserted] = checkpoint.tensors_.emplace(info.name, CheckpointTensor{&shard, &info, bytes});
      FP4_CHECK(inserted, "{}: tensor '{}' appears in two shards: {} and {}", dir.string(), info.name,
                it->second.shard->path(), shard.path());
    }
  }
  if (has_index) {
    const std::string index_name = index_path.string();
    for (const auto& [tensor, shard] : index_shard_of) {
      const CheckpointTensor* found = checkpoint.find(tensor);
      FP4_CHECK(found != nullptr, "{}: tensor '{}' is mapped to shard '{}' but no shard holds it", index_name, tensor,
                shard);
      const std::string actual = fs::path(found->shard->path()).filename().string();
      FP4_CHECK(actual == shard, "{}: tensor '{}' is mapped to shard '{}' but is stored in '{}'", index_name, tensor,
                shard, actual);
    }
    for (const auto& [tensor, location] : checkpoint.tensors_)
      FP4_CHECK(index_shard_of.contains(tensor), "{}: tensor '{}' in shard {} is missing from the index weight_map",
                index_name, tensor, location.shard->path());
  }
  return checkpoint;
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) names.push_back(name);
  return names;
}

const CheckpointTensor* Checkpoint::find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const CheckpointTensor& Checkpoint::tensor(std::string_view name) const {
  const CheckpointTensor* found = find(name);
  FP4_CHECK(found != nullptr, "{}: checkpoint has no tensor named '{}'", dir_.string(), name);
  return *found;
}

// ---------------------------------------------------------------------------------------------------------- writer

std::vector<ShardPlan> plan_shards(const std::vector<TensorDecl>& tensors, uint64_t max_shard_bytes) {
  FP4_CHECK(max_shard_bytes > 0, "plan_shards: max_shard_bytes must be positive");
  std::vector<ShardPlan> shards;
  for (const TensorDecl& tensor : tensors) {
    const uint64_t nbytes = tensor.nbytes();
    if (shards.empty() || (!shards.back().tensors.empty() && shards.back().nbytes + nbytes > max_shard_bytes))
      shards.emplace_back();
    shards.back().tensors.push_back(tensor);
    shards.back().nbytes += nbytes;
  }
  for (size_t i = 0; i < shards.size(); ++i)
    shards[i].file_name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
  return shards;
}

CheckpointWriter::CheckpointWriter(fs::path dir, uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  FP4_CHECK(max_shard_bytes_ > 0, "{}: max shard size must be positive", dir_.string());
  std::error_code ec;
  fs::create_directories(dir_, ec);
  FP4_CHECK(!ec, "{}: cannot create directory: {}", dir_.string(), ec.message());
  for (std::string_view existing : {kSingleSafetensorsFile, kSafetensorsIndexFile})
    FP4_CHECK(!fs::exists(dir_ / existing), "{}: already holds {}; refusing to overwrite a checkpoint (choose a new "
              "directory or remove it)", dir_.string(), existing);
}

void CheckpointWriter::add(TensorDecl tensor) {
  FP4_CHECK(declared_names_.insert(tensor.name).second, "{}: tensor '{}' added twice", dir_.string(), tensor.name);
  tensor.nbytes();  // validates the shape now rather than mid-write
  tensors_.push_back(std::move(tensor));
}

void CheckpointWriter::write(const TensorProducer& produce) {
  FP4_CHECK(!tensors_.empty(), "{}: no tensors to write", dir_.string());
  const std::vector<ShardPlan> shards = plan_shards(tensors_, max_shard_bytes_);
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total_size = 0;
  // Tensor i is written by a helper thread while `produce` makes tensor i + 1 in the other buffer: generating or
  // quantizing and writing overlap (synth --format nvfp4 is otherwise half write time).
  std::vector<uint8_t> buffers[2];
  std::future<void> pending;  // the write of the previous tensor
  const auto wait_pending = [&pending] {
    if (pending.valid()) pending.get();  // rethrows the write's error
  };
  size_t index = 0;
  for (const ShardPlan& shard : shards) {
    SafetensorsWriter writer(dir_ / shard.file_name, shard.tensors, {{"format", "pt"}});
    try {
      for (const TensorDecl& tensor : shard.tensors) {
        std::vector<uint8_t>& buffer = buffers[index++ % 2];
        buffer.resize(tensor.nbytes());
        produce(tensor, buffer);
        wait_pending();
        pending = std::async(std::launch::async, [&writer, &tensor, &buffer] { writer.write(tensor.name, buffer); });
        weight_map[tensor.name] = shard.file_name;
      }
      wait_pending();
    } catch (...) {
      if (pending.valid()) pending.wait();  // the writer and buffer must outlive the write; its error is secondary
      throw;
    }
    writer.finish();
    total_size += shard.nbytes;
  }
  write_json_file(dir_ / kSafetensorsIndexFile,
                  nlohmann::json{{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}});
}

}  // namespace fp4serve
