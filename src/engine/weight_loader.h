// Loads checkpoint directories, or complete sets of named tensors held in memory, into a model's EXISTING
// parameters, transactionally, for the first load and for every reload alike (so a reload of B gives the same
// bytes as a fresh start on B):
//   1. validate: every binding resolves to exactly one checkpoint tensor of the right dtype and shape, no unknown
//      tensors; the staging memory of the whole load (rollback included) is allocated; every byte is read once,
//      scales finite and > 0, chunk digests recorded; no shard may have been modified in place or replaced since
//      it was opened. Nothing live changes.
//   2. commit: re-read chunk by chunk through the staging buffers, check each chunk's digest, copy into the
//      parameters (pointers never change), then post-process once.
// Both passes split the chunks between LoadOptions::threads threads (positioned reads: one open file serves them
// all), each with its own staging buffer; the commit starts only once every thread's validation is done, and a
// failure is reported as one thread would have met it first (the lowest chunk in load order).
// A failure in 1 (running out of memory included) leaves the parameters byte-identical. A failure in 2 (a file
// rewritten or unreadable after validation, memory exhausted while post-processing) restores the previous source,
// whose files stay open from its own load (for an in-memory load: the `restore` set the caller passes); only if
// that fails too, or there is nothing to restore from, is the model Inconsistent (and must not serve) until a load
// succeeds. An in-memory load keeps nothing after the call, so after one the next load's write phase has nothing to
// restore. Not thread-safe: the engine thread owns it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "io/file_reader.h"
#include "quant/loadable.h"

namespace fp4serve {

enum class SourceFormat {
  Native,      // the checkpoint has the model's format (NVFP4 for an NVFP4 model, bf16 for a bf16 one)
  Bf16Online,  // a bf16 checkpoint loaded into an NVFP4 model: quantized on the fly (quant/group_quant.h)
};

// Allocates a load's staging memory (throws std::bad_alloc when there is none); tests inject exhaustion here.
using StagingAllocator = std::function<std::unique_ptr<uint8_t[]>(size_t bytes)>;
std::unique_ptr<uint8_t[]> allocate_staging_memory(size_t bytes);

// min(hardware threads, 8): enough to approach page-cache read bandwidth (the hashing costs about as much as the
// reading) without taking every core of a large host; measured only up to 2 threads so far.
int default_load_threads();

struct LoadOptions {
  // Host staging shared by the threads: each reads chunks of staging_bytes / threads through a buffer of its own
  // (two page-locked ones for a model on the GPU, so that a chunk is read while the previous one is copied).
  size_t staging_bytes = size_t{64} << 20;
  // Threads that read and digest chunks in both passes; a load uses at most one per chunk of data it holds, so a
  // small checkpoint stays on the calling thread.
  int threads = default_load_threads();
  FileOpener open_file = open_posix_file;   // tests inject I/O faults here
  StagingAllocator allocate_staging = allocate_staging_memory;
  std::function<void()> between_validate_and_commit{};  // tests change files here
};

// A tensor the caller holds in host memory, named, typed and shaped as a checkpoint of the model's format holds it.
struct NamedTensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::span<const uint8_t> bytes;  // C order, little-endian, prod(shape) * dtype_size(dtype); outlives the load
};

struct LoadResult {
  std::string source;            // the directory loaded, or the in-memory source's name
  SourceFormat format;
  uint64_t tensors = 0;          // checkpoint tensors loaded
  uint64_t bytes = 0;            // checkpoint bytes loaded (each read twice: validate and commit)
  // Allocated for this load, rollback's too: per thread, its chunk buffer(s) and one quantization group.
  uint64_t peak_staging_bytes = 0;
  int threads = 1;  // threads that read the checkpoint
  double validate_seconds = 0, commit_seconds = 0, post_process_seconds = 0;
};

class WeightLoader {
 public:
  enum class State { Empty, Loaded, Inconsistent };

  explicit WeightLoader(LoadableModel& model, LoadOptions options = {});
  ~WeightLoader();

  // Throws Error naming the file and tensor on failure; see the header comment for the state afterwards.
  LoadResult load(const std::filesystem::path& dir, SourceFormat format);
  // Every tensor the model needs, in its own format (Native), named `source` in errors; `restore` (the same
  // contract: the served weights, exported) is written back if the write phase fails (empty: nothing to restore).
  LoadResult load(std::string_view source, std::span<const NamedTensor> tensors, std::span<const NamedTensor> restore);

  State state() const { return state_; }
  std::string current_source() const;  // "" before the first successful load

 private:
  struct Plan;
  struct Staging;
  std::unique_ptr<Plan> plan_directory(const std::filesystem::path& dir, SourceFormat format) const;
  std::unique_ptr<Plan> plan_memory(std::string_view source, std::span<const NamedTensor> tensors) const;
  void resolve(Plan& plan) const;
  Staging allocate_staging(const Plan& plan, const Plan* restore) const;
  void read_and_digest(Plan& plan, Staging& staging, LoadResult& result) const;
  void commit(const Plan& plan, Staging& staging);
  void commit_groups(const Plan& plan, Staging& staging);
  // Validates, then writes `plan`; on a failed write restores `restore` (null: nothing to restore from).
  LoadResult validate_and_commit(Plan& plan, Plan* restore);

  LoadableModel& model_;
  LoadOptions options_;
  uint64_t chunk_bytes_;  // the unit of reads and digests: staging_bytes / threads
  State state_ = State::Empty;
  std::unique_ptr<Plan> current_;  // the plan of the weights now served when it can be read again: the rollback source
  std::string current_source_;
};

}  // namespace fp4serve
