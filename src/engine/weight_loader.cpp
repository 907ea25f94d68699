#include "engine/weight_loader.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "format/bf16.h"
#include "io/checkpoint.h"
#include "io/xxhash64.h"
#include "quant/group_quant.h"
#include "tensor/cuda_memory.h"

namespace fp4serve {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One tensor of a load source: in a checkpoint shard, or in host memory the caller holds.
struct SourceTensor {
  std::string location;  // the shard file, or the in-memory source's name
  TensorInfo info;       // offset unused for in-memory tensors
  const SafetensorsFile* shard = nullptr;
  std::span<const uint8_t> memory;

  // Copies dst.size() bytes starting `offset` bytes into the tensor; a failed read names the tensor too.
  void read(uint64_t offset, std::span<uint8_t> dst) const {
    if (shard == nullptr) {
      std::memcpy(dst.data(), memory.data() + offset, dst.size());
      return;
    }
    try {
      shard->read(info, offset, dst);
    } catch (const Error& e) {
      fail("{} (reading tensor '{}')", e.what(), info.name);
    }
  }
  uint64_t chunks(uint64_t chunk_bytes) const { return (info.nbytes + chunk_bytes - 1) / chunk_bytes; }
  // Chunk `index`'s bytes: [index * chunk_bytes, +size).
  uint64_t chunk_size(uint64_t index, uint64_t chunk_bytes) const {
    return std::min(chunk_bytes, info.nbytes - index * chunk_bytes);
  }
};

std::string where(const SourceTensor& t) { return fmt::format("{}: tensor '{}'", t.location, t.info.name); }

// Runs job(worker, i) once for every i in [0, n) on `workers` threads (the calling thread is worker 0), taking the
// i in increasing order. Once a job has thrown no new one starts; the error of the lowest failed i is rethrown:
// every lower i had been taken already and ran to its end, so it is the error one thread would have met first.
template <typename Job>
void run_on_threads(int workers, size_t n, const Job& job) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  size_t first_failed = n;
  std::exception_ptr error;
  auto work = [&](int worker) {
    for (size_t i = 0; !failed && (i = next.fetch_add(1)) < n;) {
      try {
        job(worker, i);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (i < first_failed) first_failed = i, error = std::current_exception();
        failed = true;
      }
    }
  };
  {
    std::vector<std::jthread> threads;
    for (int w = 1; w < workers && static_cast<size_t>(w) < n; ++w) threads.emplace_back(work, w);
    work(0);
  }  // joined
  if (error) std::rethrow_exception(error);
}

// Word-at-a-time scans for check_values: 8 bytes a step without an early exit, about twice the speed of the byte
// loops with their early exit (measured on the 2-core workstation); only a chunk they flag is walked again to name
// the bad value.
// bad_lanes(word) has a lane's top bit set for each bad lane; a partial last word is padded with zeros (valid).
bool any_bad_lane(std::span<const uint8_t> bytes, uint64_t (*bad_lanes)(uint64_t)) {
  uint64_t bad = 0, word = 0;
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::memcpy(&word, bytes.data() + i, 8);
    bad |= bad_lanes(word);
  }
  if (i < bytes.size()) {
    word = 0;
    std::memcpy(&word, bytes.data() + i, bytes.size() - i);
    bad |= bad_lanes(word);
  }
  return bad != 0;
}
// e4m3 bytes that are NaN (s1111111) or negative other than -0 (0x80): low7 + 0x7F carries into the top bit when
// low7 != 0, low7 + 0x01 when low7 == 0x7F; neither carries past its byte.
uint64_t bad_e4m3_bytes(uint64_t word) {
  constexpr uint64_t k7F = 0x7F7F7F7F7F7F7F7Full, k80 = 0x8080808080808080ull, k01 = 0x0101010101010101ull;
  const uint64_t low7 = word & k7F;
  return (word & k80 & (low7 + k7F)) | ((low7 + k01) & k80);
}
// bf16 lanes whose exponent is all ones (NaN or Inf): exponent bits + 0x0080 reach 0x8000 only then.
uint64_t bad_bf16_lanes(uint64_t word) {
  return ((word & 0x7F807F807F807F80ull) + 0x0080008000800080ull) & 0x8000800080008000ull;
}

// Rejects values a served model must never hold; raw e2m1 bytes can hold anything.
void check_values(const SourceTensor& t, BindingRole role, std::span<const uint8_t> bytes) {
  switch (t.info.dtype) {
    case DType::F32:
      if (role == BindingRole::GlobalScale || role == BindingRole::InputScale) {
        for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
          float v;
          std::memcpy(&v, bytes.data() + i, 4);
          FP4_CHECK(std::isfinite(v) && v > 0, "{}: scale value {} must be finite and > 0", where(t), v);
        }
      }
      break;
    case DType::F8_E4M3:
      if (!any_bad_lane(bytes, bad_e4m3_bytes)) break;
      for (uint8_t b : bytes) {
        FP4_CHECK((b & 0x7F) != 0x7F, "{}: block scale is NaN (e4m3 code 0x{:02X})", where(t), b);
        FP4_CHECK(b == 0x80 || (b & 0x80) == 0, "{}: block scale is negative (e4m3 code 0x{:02X})", where(t), b);
      }
      break;
    case DType::BF16:
      if (!any_bad_lane(bytes, bad_bf16_lanes)) break;
      for (size_t i = 0; i + 2 <= bytes.size(); i += 2) {
        bf16_bits v;
        std::memcpy(&v, bytes.data() + i, 2);
        FP4_CHECK((v & 0x7F80) != 0x7F80, "{}: value {} is NaN or Inf", where(t), bf16_to_float(v));
      }
      break;
    default:
      break;
  }
}

}  // namespace

// A validated source: which tensor goes where, and the digest of every staging-sized chunk of it.
struct WeightLoader::Plan {
  std::string source;  // the directory, or the in-memory source's name
  SourceFormat format;
  std::optional<Checkpoint> checkpoint;  // directories: keeps the shard files open until commit, and for rollback
  std::map<std::string, SourceTensor, std::less<>> tensors;  // every tensor of the source
  struct Copy {
    CheckpointBinding binding;
    const SourceTensor* tensor;
    std::vector<uint64_t> chunk_digests;
  };
  struct Group {
    OnlineQuantGroup group;
    std::vector<const SourceTensor*> members;
    std::vector<std::vector<uint64_t>> chunk_digests;  // per member
  };
  std::vector<Copy> copies;
  std::vector<Group> groups;
  bool digested = false;  // read_and_digest() has recorded the chunk digests the commit checks

  uint64_t total_bytes() const {
    uint64_t total = 0;
    for (const auto& c : copies) total += c.tensor->info.nbytes;
    for (const auto& g : groups)
      for (const auto* t : g.members) total += t->info.nbytes;
    return total;
  }
  uint64_t largest_tensor_bytes() const {
    uint64_t largest = 0;
    for (const auto& c : copies) largest = std::max(largest, c.tensor->info.nbytes);
    for (const auto& g : groups)
      for (const auto* t : g.members) largest = std::max(largest, t->info.nbytes);
    return largest;
  }
  // One online quantization group at a time: its bf16 members, then its packed weights and block scales.
  uint64_t largest_group_bytes() const {
    uint64_t largest = 0;
    for (const auto& g : groups) {
      uint64_t rows = 0;
      for (int64_t n : g.group.n_rows) rows += static_cast<uint64_t>(n);
      const uint64_t k = static_cast<uint64_t>(g.group.in_features);
      largest = std::max(largest, rows * k * 2 + rows * k / 2 + rows * k / 16);
    }
    return largest;
  }
};

// All the memory a load stages through, taken before any live byte changes: per worker thread, a chunk buffer and
// (for online quantization) a group buffer. For a model on the GPU a worker's chunk buffer is the current one of its
// two page-locked buffers, with a copy stream of its own: it reads a chunk into one while the other's copy to the
// device runs.
struct WeightLoader::Staging {
  int workers = 1;
  std::unique_ptr<uint8_t[]> memory;  // the workers' group buffers, then (no GPU) their chunk buffers
  std::vector<std::unique_ptr<cuda::PinnedUploader>> uploaders;  // one per worker for a model on the GPU
  uint64_t chunk_bytes = 0, group_bytes = 0;  // per worker; multiples of 64, so every buffer stays aligned

  std::span<uint8_t> chunk(int worker) {
    if (!uploaders.empty()) return {uploaders[static_cast<size_t>(worker)]->buffer(), chunk_bytes};
    return {memory.get() + workers * group_bytes + worker * chunk_bytes, chunk_bytes};
  }
  std::span<uint8_t> group(int worker) { return {memory.get() + worker * group_bytes, group_bytes}; }
  uint64_t total_bytes() const {
    return workers * (chunk_bytes * (uploaders.empty() ? 1 : kUploadBuffers) + group_bytes);
  }
  // Waits for every worker's copies to the device (also after a failure: a restore must not race them).
  void finish_uploads() {
    for (auto& uploader : uploaders) uploader->finish();
  }
  static constexpr int kUploadBuffers = 2;
};

int default_load_threads() {
  return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 8);
}

std::unique_ptr<uint8_t[]> allocate_staging_memory(size_t bytes) {
  return std::make_unique_for_overwrite<uint8_t[]>(bytes);
}

WeightLoader::WeightLoader(LoadableModel& model, LoadOptions options) : model_(model), options_(std::move(options)) {
  FP4_CHECK(options_.staging_bytes >= 4096, "staging buffer of {} bytes is too small", options_.staging_bytes);
  FP4_CHECK(options_.threads >= 1 && options_.threads <= 256, "load threads: {} (expected 1 to 256)",
            options_.threads);
  chunk_bytes_ = std::max<uint64_t>(64, options_.staging_bytes / static_cast<uint64_t>(options_.threads) / 64 * 64);
}

WeightLoader::~WeightLoader() = default;

std::string WeightLoader::current_source() const { return current_source_; }

std::unique_ptr<WeightLoader::Plan> WeightLoader::plan_directory(const std::filesystem::path& dir,
                                                                 SourceFormat format) const {
  auto plan = std::unique_ptr<Plan>(new Plan{dir.string(), format, {}, {}, {}, {}});
  plan->checkpoint = Checkpoint::open(dir, {.map = false, .open_file = options_.open_file});
  for (const std::string& name : plan->checkpoint->tensor_names()) {
    const CheckpointTensor& t = plan->checkpoint->tensor(name);
    plan->tensors.emplace(name,
                          SourceTensor{.location = t.shard->path(), .info = *t.info, .shard = t.shard, .memory = {}});
  }
  resolve(*plan);
  return plan;
}

std::unique_ptr<WeightLoader::Plan> WeightLoader::plan_memory(std::string_view source,
                                                              std::span<const NamedTensor> tensors) const {
  auto plan = std::unique_ptr<Plan>(new Plan{std::string(source), SourceFormat::Native, {}, {}, {}, {}});
  for (const NamedTensor& t : tensors) {
    const uint64_t nbytes = static_cast<uint64_t>(shape_numel(t.shape, t.name)) * dtype_size(t.dtype);
    FP4_CHECK(nbytes == t.bytes.size(), "{}: tensor '{}' holds {} bytes, its dtype {} and shape {} need {}", source,
              t.name, t.bytes.size(), dtype_name(t.dtype), shape_to_string(t.shape), nbytes);
    const bool inserted =
        plan->tensors
            .emplace(t.name, SourceTensor{.location = std::string(source),
                                          .info = {.name = t.name, .dtype = t.dtype, .shape = t.shape, .offset = 0,
                                                   .nbytes = nbytes},
                                          .shard = nullptr,
                                          .memory = t.bytes})
            .second;
    FP4_CHECK(inserted, "{}: tensor '{}' is given twice", source, t.name);
  }
  resolve(*plan);
  return plan;
}

void WeightLoader::resolve(Plan& plan) const {
  const std::string& source = plan.source;
  const SourceFormat format = plan.format;
  ParameterSet& params = model_.params();

  std::vector<CheckpointBinding> bindings = model_.checkpoint_bindings();
  std::set<std::string> quantized_params;
  if (format == SourceFormat::Bf16Online) {
    FP4_CHECK(model_.is_nvfp4(), "{}: a bf16 checkpoint can be quantized on load only into an NVFP4 model", source);
    for (auto& g : model_.online_quant_groups()) {
      quantized_params.insert({g.weight_param, g.block_scale_param, g.global_scale_param});
      plan.groups.push_back({std::move(g), {}, {}});
    }
  }

  std::set<std::string, std::less<>> consumed;
  auto resolve_tensor = [&](const std::string& name, DType dtype, const Shape& shape) -> const SourceTensor* {
    FP4_CHECK(consumed.insert(name).second, "internal error: checkpoint tensor '{}' is bound twice", name);
    const auto it = plan.tensors.find(name);
    if (it == plan.tensors.end()) return nullptr;
    const SourceTensor* t = &it->second;
    FP4_CHECK(t->info.dtype == dtype, "{}: dtype is {}, expected {}", where(*t), dtype_name(t->info.dtype),
              dtype_name(dtype));
    FP4_CHECK(t->info.shape == shape, "{}: shape is {}, expected {}", where(*t), shape_to_string(t->info.shape),
              shape_to_string(shape));
    return t;
  };

  for (auto& b : bindings) {
    if (quantized_params.contains(b.param)) continue;  // written by online quantization instead
    bool optional = b.optional || (format == SourceFormat::Bf16Online && b.role == BindingRole::InputScale);
    const SourceTensor* t = resolve_tensor(b.checkpoint_name, b.dtype, b.shape);
    if (t == nullptr) {
      FP4_CHECK(optional, "{}: tensor '{}' is missing (expected {} {})", source, b.checkpoint_name,
                dtype_name(b.dtype), shape_to_string(b.shape));
      continue;
    }
    const Tensor& param = params.get(b.param);
    FP4_CHECK(b.byte_offset + t->info.nbytes <= param.nbytes(),
              "internal error: binding of '{}' overruns parameter '{}'", b.checkpoint_name, b.param);
    plan.copies.push_back({std::move(b), t, {}});
  }
  for (auto& g : plan.groups) {
    for (size_t i = 0; i < g.group.checkpoint_names.size(); ++i) {
      const std::string& name = g.group.checkpoint_names[i];
      const SourceTensor* t = resolve_tensor(name, DType::BF16, {g.group.n_rows[i], g.group.in_features});
      FP4_CHECK(t != nullptr, "{}: tensor '{}' is missing (expected BF16 [{}, {}])", source, name,
                g.group.n_rows[i], g.group.in_features);
      g.members.push_back(t);
    }
  }

  std::vector<std::string> unknown;
  for (const auto& [name, t] : plan.tensors)
    if (!consumed.contains(name)) unknown.push_back(name);
  if (!unknown.empty()) {
    const size_t n_unknown = unknown.size();
    if (unknown.size() > 5) unknown.resize(5), unknown.push_back("...");
    fail("{}: tensors not part of this model ({} in all): {}", source, n_unknown, fmt::join(unknown, ", "));
  }
}

// Sized for the new plan and for the rollback one, so a failed commit can restore without allocating. One worker
// per chunk of data, up to options_.threads.
WeightLoader::Staging WeightLoader::allocate_staging(const Plan& plan, const Plan* restore) const {
  Staging staging;
  uint64_t largest_tensor = plan.largest_tensor_bytes(), largest_group = plan.largest_group_bytes();
  uint64_t total = plan.total_bytes();
  if (restore != nullptr) {
    largest_tensor = std::max(largest_tensor, restore->largest_tensor_bytes());
    largest_group = std::max(largest_group, restore->largest_group_bytes());
    total = std::max(total, restore->total_bytes());
  }
  staging.workers = static_cast<int>(std::clamp<uint64_t>((total + chunk_bytes_ - 1) / chunk_bytes_, 1,
                                                          static_cast<uint64_t>(options_.threads)));
  staging.chunk_bytes = (std::min(chunk_bytes_, largest_tensor) + 63) / 64 * 64;
  staging.group_bytes = (largest_group + 63) / 64 * 64;
  auto on_device = [&](const Plan::Copy& c) { return model_.params().get(c.binding.param).device() == Device::CUDA; };
  const bool to_device =
      std::ranges::any_of(plan.copies, on_device) || (restore && std::ranges::any_of(restore->copies, on_device));
  if (to_device) {
    try {
      for (int w = 0; w < staging.workers; ++w)
        staging.uploaders.push_back(
            std::make_unique<cuda::PinnedUploader>(staging.chunk_bytes, Staging::kUploadBuffers));
    } catch (const Error& e) {
      fail("{}: cannot allocate {} x {} x {} bytes of page-locked staging memory for the load ({}); nothing was "
           "changed", plan.source, staging.workers, Staging::kUploadBuffers, staging.chunk_bytes, e.what());
    }
  }
  // What group() and, without the uploaders, chunk() take.
  const uint64_t pageable = staging.workers * (staging.group_bytes + (to_device ? 0 : staging.chunk_bytes));
  try {
    staging.memory = options_.allocate_staging(pageable);
  } catch (const std::bad_alloc&) {
    fail("{}: cannot allocate {} bytes of staging memory for the load (out of memory); nothing was changed",
         plan.source, pageable);
  }
  return staging;
}

// Reads everything once: proves every byte is readable, checks values, records chunk digests for the commit; then
// checks that no file changed while it was read (a shard rewritten after an earlier one was read would otherwise
// give digests of a mix of two checkpoints, which the commit would faithfully load).
void WeightLoader::read_and_digest(Plan& plan, Staging& staging, LoadResult& result) const {
  struct Job {
    const SourceTensor* tensor;
    BindingRole role;
    uint64_t index;
    uint64_t* digest;
  };
  std::vector<Job> jobs;
  auto add_jobs = [&](const SourceTensor& t, BindingRole role, std::vector<uint64_t>& digests) {
    digests.assign(t.chunks(chunk_bytes_), 0);
    for (uint64_t i = 0; i < digests.size(); ++i) jobs.push_back({&t, role, i, &digests[i]});
    result.bytes += t.info.nbytes;
    ++result.tensors;
  };
  for (auto& c : plan.copies) add_jobs(*c.tensor, c.binding.role, c.chunk_digests);
  for (auto& g : plan.groups) {
    g.chunk_digests.resize(g.members.size());
    for (size_t i = 0; i < g.members.size(); ++i) add_jobs(*g.members[i], BindingRole::Weight, g.chunk_digests[i]);
  }
  run_on_threads(staging.workers, jobs.size(), [&](int worker, size_t j) {
    const Job& job = jobs[j];
    std::span<uint8_t> bytes = staging.chunk(worker).first(job.tensor->chunk_size(job.index, chunk_bytes_));
    job.tensor->read(job.index * chunk_bytes_, bytes);
    check_values(*job.tensor, job.role, bytes);
    *job.digest = xxh64(bytes);
  });
  plan.digested = true;
  if (!plan.checkpoint) return;
  for (const auto& shard : plan.checkpoint->shards()) {
    if (auto change = shard.change_since_open())
      fail("{}: {} while the reload read the checkpoint; nothing was changed: reload once the checkpoint is written "
           "completely (write a new directory, or replace files by rename)", shard.path(), *change);
  }
}

namespace {

void check_digest(const SourceTensor& t, const std::vector<uint64_t>& digests, uint64_t chunk,
                  std::span<const uint8_t> bytes) {
  FP4_CHECK(chunk < digests.size() && xxh64(bytes) == digests[chunk], "{}: bytes changed {} after validation "
            "(chunk {})", where(t), t.shard != nullptr ? "on disk" : "in memory", chunk);
}

}  // namespace

void WeightLoader::commit(const Plan& plan, Staging& staging) {
  struct Job {
    const Plan::Copy* copy;
    const Tensor* param;
    uint64_t index;
  };
  std::vector<Job> jobs;
  for (const auto& c : plan.copies) {
    const Tensor* param = &model_.params().get(c.binding.param);
    for (uint64_t i = 0; i < c.tensor->chunks(chunk_bytes_); ++i) jobs.push_back({&c, param, i});
  }
  try {
    run_on_threads(staging.workers, jobs.size(), [&](int worker, size_t j) {
      const Job& job = jobs[j];
      const SourceTensor& t = *job.copy->tensor;
      std::span<uint8_t> bytes = staging.chunk(worker).first(t.chunk_size(job.index, chunk_bytes_));
      t.read(job.index * chunk_bytes_, bytes);
      check_digest(t, job.copy->chunk_digests, job.index, bytes);
      uint8_t* dst = job.param->raw() + job.copy->binding.byte_offset + job.index * chunk_bytes_;
      if (job.param->device() == Device::CUDA)
        staging.uploaders[static_cast<size_t>(worker)]->upload(dst, bytes.size());  // bytes lie in its buffer()
      else
        copy_bytes(job.param->device(), dst, Device::CPU, bytes.data(), bytes.size());
    });
  } catch (...) {
    staging.finish_uploads();
    throw;
  }
  staging.finish_uploads();
  commit_groups(plan, staging);
  model_.mark_raw_weights_loaded();
}

// Online quantization, a group per job: its bf16 members read into the worker's group buffer (each chunk's digest
// checked there), quantized behind them in the same buffer, then written to the parameters.
void WeightLoader::commit_groups(const Plan& plan, Staging& staging) {
  ParameterSet& params = model_.params();
  run_on_threads(staging.workers, plan.groups.size(), [&](int worker, size_t j) {
    const Plan::Group& g = plan.groups[j];
    const int64_t k = g.group.in_features;
    uint8_t* next = staging.group(worker).data();
    std::vector<GroupMember> members;
    int64_t rows = 0;
    for (size_t i = 0; i < g.members.size(); ++i) {
      const SourceTensor& t = *g.members[i];
      for (uint64_t chunk = 0; chunk < t.chunks(chunk_bytes_); ++chunk) {
        std::span<uint8_t> bytes(next + chunk * chunk_bytes_, t.chunk_size(chunk, chunk_bytes_));
        t.read(chunk * chunk_bytes_, bytes);
        check_digest(t, g.chunk_digests[i], chunk, bytes);
      }
      members.push_back({{reinterpret_cast<const bf16_bits*>(next), t.info.nbytes / 2}, g.group.n_rows[i]});
      next += t.info.nbytes;
      rows += g.group.n_rows[i];
    }
    uint8_t* packed = next;
    uint8_t* scales = packed + rows * k / 2;
    float global_scale = quantize_group(members, k, packed, scales, g.group.weight_param);
    const Tensor& w = params.get(g.group.weight_param);
    const Tensor& s = params.get(g.group.block_scale_param);
    const Tensor& gs = params.get(g.group.global_scale_param);
    copy_bytes(w.device(), w.raw() + g.group.weight_byte_offset, Device::CPU, packed, rows * k / 2);
    copy_bytes(s.device(), s.raw() + g.group.block_scale_byte_offset, Device::CPU, scales, rows * k / 16);
    for (size_t slot : g.group.global_scale_slots)
      copy_bytes(gs.device(), gs.raw() + slot * sizeof(float), Device::CPU, &global_scale, sizeof(float));
  });
}

LoadResult WeightLoader::load(const std::filesystem::path& dir, SourceFormat format) {
  std::unique_ptr<Plan> plan = plan_directory(dir, format);
  LoadResult result = validate_and_commit(*plan, current_.get());
  current_ = std::move(plan);
  return result;
}

LoadResult WeightLoader::load(std::string_view source, std::span<const NamedTensor> tensors,
                              std::span<const NamedTensor> restore) {
  std::unique_ptr<Plan> plan = plan_memory(source, tensors);
  std::unique_ptr<Plan> restore_plan =
      restore.empty() ? nullptr : plan_memory(fmt::format("{} (the weights served before it)", source), restore);
  LoadResult result = validate_and_commit(*plan, restore_plan.get());
  current_.reset();  // its bytes are the caller's: nothing to re-read for a later rollback
  return result;
}

// Validation throws with the parameters untouched; a failed write restores `restore` where there is one.
LoadResult WeightLoader::validate_and_commit(Plan& plan, Plan* restore) {
  LoadResult result{.source = plan.source, .format = plan.format};
  auto start = std::chrono::steady_clock::now();
  Staging staging = allocate_staging(plan, restore);
  result.peak_staging_bytes = staging.total_bytes();
  result.threads = staging.workers;
  read_and_digest(plan, staging, result);
  if (restore != nullptr && !restore->digested) {  // an in-memory restore set, read here for the first time
    LoadResult restore_read{.source = restore->source, .format = restore->format};
    read_and_digest(*restore, staging, restore_read);
  }
  result.validate_seconds = seconds_since(start);
  if (options_.between_validate_and_commit) options_.between_validate_and_commit();

  auto write_and_derive = [&](const Plan& p, LoadResult& r) {
    auto t0 = std::chrono::steady_clock::now();
    commit(p, staging);
    r.commit_seconds = seconds_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    model_.process_weights_after_loading();
    r.post_process_seconds = seconds_since(t1);
  };
  // Anything thrown here (an Error, std::bad_alloc from post-processing) has left a partly written model.
  try {
    write_and_derive(plan, result);
  } catch (const std::exception& e) {
    std::string reason = e.what();
    if (restore == nullptr) {
      state_ = State::Inconsistent;
      current_.reset();
      current_source_.clear();
      fail("loading {} failed while writing parameters: {}; no previous weights to restore (none were loaded, or "
           "they came from tensors in memory), the model cannot serve until a load succeeds",
           plan.source, reason);
    }
    spdlog::warn("loading {} failed while writing parameters ({}); restoring {}", plan.source, reason,
                 restore->source);
    try {
      LoadResult restored{.source = restore->source, .format = restore->format};
      write_and_derive(*restore, restored);
    } catch (const std::exception& restore_error) {
      const std::string previous = restore->source;  // `restore` may be current_, reset here
      state_ = State::Inconsistent;
      current_.reset();
      current_source_.clear();
      fail("loading {} failed while writing parameters: {}; restoring the previous weights from {} failed too: {}; "
           "the model is inconsistent and will not serve until a load succeeds",
           plan.source, reason, previous, restore_error.what());
    }
    state_ = State::Loaded;
    fail("loading {} failed while writing parameters: {}; the previous weights from {} were restored", plan.source,
         reason, restore->source);
  }
  current_source_ = plan.source;
  state_ = State::Loaded;
  return result;
}

}  // namespace fp4serve
