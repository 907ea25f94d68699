#include "engine/weight_loader.h"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "format/bf16.h"
#include "io/checkpoint.h"
#include "io/xxhash64.h"
#include "quant/group_quant.h"

namespace fp4serve {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string where(const CheckpointTensor& t) { return fmt::format("{}: tensor '{}'", t.shard->path(), t.info->name); }

// Rejects values a served model must never hold; raw e2m1 bytes can hold anything.
void check_values(const CheckpointTensor& t, BindingRole role, std::span<const uint8_t> bytes) {
  switch (t.info->dtype) {
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
      for (uint8_t b : bytes) {
        FP4_CHECK((b & 0x7F) != 0x7F, "{}: block scale is NaN (e4m3 code 0x{:02X})", where(t), b);
        FP4_CHECK(b == 0x80 || (b & 0x80) == 0, "{}: block scale is negative (e4m3 code 0x{:02X})", where(t), b);
      }
      break;
    case DType::BF16:
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

// A validated checkpoint: which tensor goes where, and the digest of every staging-sized chunk of it.
struct WeightLoader::Plan {
  std::filesystem::path dir;
  SourceFormat format;
  Checkpoint checkpoint;  // keeps the shard files open between validation and commit, and for rollback
  struct Copy {
    CheckpointBinding binding;
    const CheckpointTensor* tensor;
    std::vector<uint64_t> chunk_digests;
  };
  struct Group {
    OnlineQuantGroup group;
    std::vector<const CheckpointTensor*> members;
    std::vector<std::vector<uint64_t>> chunk_digests;  // per member
  };
  std::vector<Copy> copies;
  std::vector<Group> groups;
};

WeightLoader::WeightLoader(LoadableModel& model, LoadOptions options) : model_(model), options_(std::move(options)) {
  FP4_CHECK(options_.staging_bytes >= 4096, "staging buffer of {} bytes is too small", options_.staging_bytes);
}

WeightLoader::~WeightLoader() = default;

std::string WeightLoader::current_source() const { return current_ ? current_->dir.string() : ""; }

namespace {

// Reads a tensor in chunks of `chunk_bytes` (the unit of the recorded digests) through `staging`, which holds
// at least min(chunk_bytes, the tensor's size); `visit(chunk_index, bytes)` sees each chunk.
template <typename Visit>
void for_each_chunk(const CheckpointTensor& t, uint64_t chunk_bytes, std::vector<uint8_t>& staging, Visit&& visit) {
  uint64_t n = t.info->nbytes;
  uint64_t chunk = 0;
  for (uint64_t done = 0; done < n; done += chunk_bytes, ++chunk) {
    uint64_t len = std::min(chunk_bytes, n - done);
    if (staging.size() < len) staging.resize(len);
    std::span<uint8_t> dst(staging.data(), len);
    t.shard->read(*t.info, done, dst);
    visit(chunk, std::span<const uint8_t>(dst));
  }
}

}  // namespace

std::unique_ptr<WeightLoader::Plan> WeightLoader::validate(const std::filesystem::path& dir, SourceFormat format,
                                                           LoadResult& result) {
  auto plan = std::unique_ptr<Plan>(
      new Plan{dir, format, Checkpoint::open(dir, {.map = false, .open_file = options_.open_file}), {}, {}});
  const Checkpoint& ckpt = plan->checkpoint;
  ParameterSet& params = model_.params();

  std::vector<CheckpointBinding> bindings = model_.checkpoint_bindings();
  std::set<std::string> quantized_params;
  if (format == SourceFormat::Bf16Online) {
    FP4_CHECK(model_.is_nvfp4(), "{}: a bf16 checkpoint can be quantized on load only into an NVFP4 model",
              dir.string());
    for (auto& g : model_.online_quant_groups()) {
      quantized_params.insert({g.weight_param, g.block_scale_param, g.global_scale_param});
      plan->groups.push_back({std::move(g), {}, {}});
    }
  }

  std::set<std::string, std::less<>> consumed;
  auto resolve = [&](const std::string& name, DType dtype, const Shape& shape) -> const CheckpointTensor* {
    FP4_CHECK(consumed.insert(name).second, "internal error: checkpoint tensor '{}' is bound twice", name);
    const CheckpointTensor* t = ckpt.find(name);
    if (t == nullptr) return nullptr;
    FP4_CHECK(t->info->dtype == dtype, "{}: dtype is {}, expected {}", where(*t), dtype_name(t->info->dtype),
              dtype_name(dtype));
    FP4_CHECK(t->info->shape == shape, "{}: shape is {}, expected {}", where(*t), shape_to_string(t->info->shape),
              shape_to_string(shape));
    return t;
  };

  for (auto& b : bindings) {
    if (quantized_params.contains(b.param)) continue;  // written by online quantization instead
    bool optional = b.optional || (format == SourceFormat::Bf16Online && b.role == BindingRole::InputScale);
    const CheckpointTensor* t = resolve(b.checkpoint_name, b.dtype, b.shape);
    if (t == nullptr) {
      FP4_CHECK(optional, "{}: tensor '{}' is missing (expected {} {})", dir.string(), b.checkpoint_name,
                dtype_name(b.dtype), shape_to_string(b.shape));
      continue;
    }
    const Tensor& param = params.get(b.param);
    FP4_CHECK(b.byte_offset + t->info->nbytes <= param.nbytes(),
              "internal error: binding of '{}' overruns parameter '{}'", b.checkpoint_name, b.param);
    plan->copies.push_back({std::move(b), t, {}});
  }
  for (auto& g : plan->groups) {
    for (size_t i = 0; i < g.group.checkpoint_names.size(); ++i) {
      const std::string& name = g.group.checkpoint_names[i];
      const CheckpointTensor* t = resolve(name, DType::BF16, {g.group.n_rows[i], g.group.in_features});
      FP4_CHECK(t != nullptr, "{}: tensor '{}' is missing (expected BF16 [{}, {}])", dir.string(), name,
                g.group.n_rows[i], g.group.in_features);
      g.members.push_back(t);
    }
  }

  std::vector<std::string> unknown;
  for (const auto& name : ckpt.tensor_names())
    if (!consumed.contains(name)) unknown.push_back(name);
  if (!unknown.empty()) {
    if (unknown.size() > 5) unknown.resize(5), unknown.push_back("...");
    fail("{}: tensors not part of this model ({} in all): {}", dir.string(), ckpt.num_tensors() - consumed.size(),
         fmt::join(unknown, ", "));
  }

  // Read everything once: proves every byte is readable, checks values, records chunk digests for the commit.
  std::vector<uint8_t> staging;
  auto digest_tensor = [&](const CheckpointTensor& t, BindingRole role, std::vector<uint64_t>& digests) {
    for_each_chunk(t, options_.staging_bytes, staging, [&](uint64_t, std::span<const uint8_t> bytes) {
      check_values(t, role, bytes);
      digests.push_back(xxh64(bytes));
    });
    result.bytes += t.info->nbytes;
    ++result.tensors;
  };
  for (auto& c : plan->copies) digest_tensor(*c.tensor, c.binding.role, c.chunk_digests);
  for (auto& g : plan->groups) {
    g.chunk_digests.resize(g.members.size());
    for (size_t i = 0; i < g.members.size(); ++i) digest_tensor(*g.members[i], BindingRole::Weight, g.chunk_digests[i]);
  }
  return plan;
}

void WeightLoader::commit(const Plan& plan, LoadResult& result) {
  ParameterSet& params = model_.params();
  const uint64_t chunk_bytes = options_.staging_bytes;
  std::vector<uint8_t> staging;
  auto check_digest = [](const CheckpointTensor& t, const std::vector<uint64_t>& digests, uint64_t chunk,
                         std::span<const uint8_t> bytes) {
    FP4_CHECK(chunk < digests.size() && xxh64(bytes) == digests[chunk],
              "{}: bytes changed on disk after validation (chunk {})", where(t), chunk);
  };

  for (const auto& c : plan.copies) {
    const Tensor& param = params.get(c.binding.param);
    for_each_chunk(*c.tensor, chunk_bytes, staging, [&](uint64_t chunk, std::span<const uint8_t> bytes) {
      check_digest(*c.tensor, c.chunk_digests, chunk, bytes);
      copy_bytes(param.device(), param.raw() + c.binding.byte_offset + chunk * chunk_bytes, Device::CPU,
                 bytes.data(), bytes.size());
    });
  }

  // Online quantization: a group's bf16 members, then its NVFP4 output, are held at once (bounded by one group).
  uint64_t peak = 0;
  std::vector<std::vector<bf16_bits>> member_values;
  std::vector<uint8_t> packed, scales;
  for (const auto& g : plan.groups) {
    int64_t k = g.group.in_features;
    int64_t rows = 0;
    member_values.resize(g.members.size());
    std::vector<GroupMember> members;
    for (size_t i = 0; i < g.members.size(); ++i) {
      const CheckpointTensor& t = *g.members[i];
      member_values[i].resize(t.info->nbytes / 2);
      auto* out = reinterpret_cast<uint8_t*>(member_values[i].data());
      for_each_chunk(t, chunk_bytes, staging, [&](uint64_t chunk, std::span<const uint8_t> bytes) {
        check_digest(t, g.chunk_digests[i], chunk, bytes);
        std::memcpy(out + chunk * chunk_bytes, bytes.data(), bytes.size());
      });
      members.push_back({member_values[i], g.group.n_rows[i]});
      rows += g.group.n_rows[i];
    }
    packed.resize(rows * k / 2);
    scales.resize(rows * k / 16);
    peak = std::max<uint64_t>(peak, rows * k * 2 + packed.size() + scales.size());
    float global_scale = quantize_group(members, k, packed.data(), scales.data(), g.group.weight_param);
    const Tensor& w = params.get(g.group.weight_param);
    const Tensor& s = params.get(g.group.block_scale_param);
    const Tensor& gs = params.get(g.group.global_scale_param);
    copy_bytes(w.device(), w.raw() + g.group.weight_byte_offset, Device::CPU, packed.data(), packed.size());
    copy_bytes(s.device(), s.raw() + g.group.block_scale_byte_offset, Device::CPU, scales.data(), scales.size());
    for (size_t slot : g.group.global_scale_slots)
      copy_bytes(gs.device(), gs.raw() + slot * sizeof(float), Device::CPU, &global_scale, sizeof(float));
  }
  result.peak_staging_bytes = std::max<uint64_t>(result.peak_staging_bytes, staging.size() + peak);
  model_.mark_raw_weights_loaded();
}

LoadResult WeightLoader::load(const std::filesystem::path& dir, SourceFormat format) {
  LoadResult result{.source = dir.string(), .format = format};
  auto start = std::chrono::steady_clock::now();
  std::unique_ptr<Plan> plan = validate(dir, format, result);  // throws with the parameters untouched
  result.validate_seconds = seconds_since(start);
  if (options_.between_validate_and_commit) options_.between_validate_and_commit();

  auto write_and_derive = [&](const Plan& p, LoadResult& r) {
    auto t0 = std::chrono::steady_clock::now();
    commit(p, r);
    r.commit_seconds = seconds_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    model_.process_weights_after_loading();
    r.post_process_seconds = seconds_since(t1);
  };
  try {
    write_and_derive(*plan, result);
  } catch (const Error& e) {
    std::string reason = e.what();
    if (!current_) {
      state_ = State::Inconsistent;
      fail("loading {} failed while writing parameters: {}; no previous weights to restore, the model cannot serve "
           "until a load succeeds", dir.string(), reason);
    }
    spdlog::warn("loading {} failed while writing parameters ({}); restoring {}", dir.string(), reason,
                 current_->dir.string());
    try {
      LoadResult restore{.source = current_->dir.string(), .format = current_->format};
      write_and_derive(*current_, restore);
    } catch (const Error& restore_error) {
      state_ = State::Inconsistent;
      std::string previous = current_->dir.string();
      current_.reset();
      fail("loading {} failed while writing parameters: {}; restoring the previous weights from {} failed too: {}; "
           "the model is inconsistent and will not serve until a load succeeds",
           dir.string(), reason, previous, restore_error.what());
    }
    state_ = State::Loaded;
    fail("loading {} failed while writing parameters: {}; the previous weights from {} were restored", dir.string(),
         reason, current_->dir.string());
  }
  current_ = std::move(plan);
  state_ = State::Loaded;
  return result;
}

}  // namespace fp4serve
