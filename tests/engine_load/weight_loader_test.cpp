// The transactional loader against a small model stand-in whose "post-processing" is a byte permutation done in
// place, as the real layouts are: a load that touched derived bytes without re-deriving them would show.
#include "engine/weight_loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <utility>

#include "common/error.h"
#include "format/bf16.h"
#include "format/nvfp4.h"
#include "io/safetensors.h"
#include "quant/group_quant.h"
#include "support/faulty_files.h"

namespace fp4serve {
namespace {

namespace fs = std::filesystem;

// Raw parameters: "q.weight" u8 [4, 8] (two shards of 2 rows), "q.weight_scale" e4m3 [4, 1], "q.weight_scale_2" f32
// [2], "norm" bf16 [16]. Post-processing reverses q.weight's bytes in place and writes "q.alpha" = ws2 * 2.
class FakeModel : public LoadableModel {
 public:
  FakeModel() {
    params_.add("q.weight", Tensor::empty({4, 8}, DType::U8, Device::CPU));
    params_.add("q.weight_scale", Tensor::empty({4, 1}, DType::F8_E4M3, Device::CPU));
    params_.add("q.weight_scale_2", Tensor::empty({2}, DType::F32, Device::CPU));
    params_.add("norm", Tensor::empty({16}, DType::BF16, Device::CPU));
  }
  ParameterSet& params() override { return params_; }
  std::vector<CheckpointBinding> checkpoint_bindings() const override {
    std::vector<CheckpointBinding> b;
    for (int s = 0; s < 2; ++s) {
      std::string p = "q" + std::to_string(s);
      b.push_back({p + ".weight", DType::U8, {2, 8}, "q.weight", size_t(16 * s), BindingRole::Weight});
      b.push_back({p + ".weight_scale", DType::F8_E4M3, {2, 1}, "q.weight_scale", size_t(2 * s), BindingRole::BlockScale});
      b.push_back({p + ".weight_scale_2", DType::F32, {}, "q.weight_scale_2", size_t(4 * s), BindingRole::GlobalScale});
    }
    b.push_back({"norm", DType::BF16, {16}, "norm", 0, BindingRole::Norm});
    return b;
  }
  std::vector<OnlineQuantGroup> online_quant_groups() const override {
    return {{{"q0.weight", "q1.weight"}, {2, 2}, 16, "q.weight", "q.weight_scale", "q.weight_scale_2", 0, 0, {0, 1}}};
  }
  bool is_nvfp4() const override { return true; }
  void mark_raw_weights_loaded() override { raw_ = true; }
  void process_weights_after_loading() override {
    FP4_CHECK(raw_, "post-processing without a fresh load");
    raw_ = false;
    auto w = params_.get("q.weight").span<uint8_t>();
    std::reverse(w.begin(), w.end());
    if (std::exchange(fail_next_post_process, false)) throw std::bad_alloc();
    auto ws2 = params_.get("q.weight_scale_2").span<float>();
    Tensor alpha = Tensor::empty({2}, DType::F32, Device::CPU);
    for (int i = 0; i < 2; ++i) alpha.data<float>()[i] = ws2[i] * 2;
    params_.copy_or_rebind("q.alpha", alpha);
    ++post_processed;
  }
  std::vector<std::pair<std::string, Tensor>> export_logical() const override { return {}; }
  std::map<std::string, std::vector<uint8_t>> snapshot() const {
    std::map<std::string, std::vector<uint8_t>> out;
    for (const auto& name : params_.names()) {
      const Tensor& t = params_.get(name);
      out[name].assign(t.raw(), t.raw() + t.nbytes());
    }
    return out;
  }
  int post_processed = 0;
  bool fail_next_post_process = false;  // the next post-processing runs out of memory halfway

 private:
  ParameterSet params_;
  bool raw_ = false;
};

struct RawTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
using TensorMap = std::map<std::string, RawTensor>;

template <typename T>
RawTensor raw(DType dtype, std::vector<int64_t> shape, std::vector<T> values) {
  RawTensor r{dtype, std::move(shape), std::vector<uint8_t>(values.size() * sizeof(T))};
  std::memcpy(r.bytes.data(), values.data(), r.bytes.size());
  return r;
}

TensorMap nvfp4_tensors(uint8_t seed) {
  TensorMap m;
  for (int s = 0; s < 2; ++s) {
    std::string p = "q" + std::to_string(s);
    std::vector<uint8_t> w(16);
    for (int i = 0; i < 16; ++i) w[i] = static_cast<uint8_t>(seed * 31 + s * 16 + i);
    m[p + ".weight"] = raw(DType::U8, {2, 8}, w);
    m[p + ".weight_scale"] = raw<uint8_t>(DType::F8_E4M3, {2, 1}, {uint8_t(0x38 + s), uint8_t(0x30 + seed % 8)});
    m[p + ".weight_scale_2"] = raw<float>(DType::F32, {}, {0.5f * (seed + 1) + s});
  }
  std::vector<bf16_bits> norm(16, float_to_bf16(1.0f + seed));
  m["norm"] = raw(DType::BF16, {16}, norm);
  return m;
}

void write_checkpoint(const fs::path& dir, const TensorMap& tensors) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<TensorDecl> decls;
  for (const auto& [name, t] : tensors) decls.push_back({name, t.dtype, t.shape});
  SafetensorsWriter writer(dir / "model.safetensors", decls);
  for (const auto& [name, t] : tensors) writer.write(name, t.bytes);
  writer.finish();
}

// Overwrites the shard's bytes through its existing inode (a trainer writing over the checkpoint it wrote before).
void write_checkpoint_in_place(const fs::path& dir, const TensorMap& tensors) {
  fs::path scratch = dir.string() + "_scratch";
  write_checkpoint(scratch, tensors);
  std::ifstream in(scratch / "model.safetensors", std::ios::binary);
  std::fstream out(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  out << in.rdbuf();
  fs::remove_all(scratch);
}

class WeightLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("fp4serve_loader_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    write_checkpoint(root_ / "a", nvfp4_tensors(1));
    write_checkpoint(root_ / "b", nvfp4_tensors(2));
  }
  void TearDown() override { fs::remove_all(root_); }

  // Loads `dir` and expects an error mentioning every fragment, with the model byte-identical afterwards.
  void expect_rejected(FakeModel& model, WeightLoader& loader, const fs::path& dir,
                       std::vector<std::string> fragments) {
    auto before = model.snapshot();
    try {
      loader.load(dir, SourceFormat::Native);
      ADD_FAILURE() << "load of " << dir << " succeeded";
    } catch (const Error& e) {
      for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
    EXPECT_EQ(model.snapshot(), before);
    EXPECT_EQ(loader.state(), WeightLoader::State::Loaded);
  }

  fs::path root_;
};

TEST_F(WeightLoaderTest, ReloadEqualsFreshLoadAndKeepsAddresses) {
  FakeModel fresh_b;
  WeightLoader(fresh_b).load(root_ / "b", SourceFormat::Native);

  FakeModel model;
  WeightLoader loader(model);
  loader.load(root_ / "a", SourceFormat::Native);
  auto a_state = model.snapshot();
  uint8_t* weight_address = model.params().get("q.weight").raw();
  uint8_t* alpha_address = model.params().get("q.alpha").raw();
  for (int i = 0; i < 10; ++i) {
    loader.load(root_ / "b", SourceFormat::Native);
    EXPECT_EQ(model.snapshot(), fresh_b.snapshot());
    loader.load(root_ / "a", SourceFormat::Native);
    EXPECT_EQ(model.snapshot(), a_state);
  }
  EXPECT_EQ(model.params().get("q.weight").raw(), weight_address);
  EXPECT_EQ(model.params().get("q.alpha").raw(), alpha_address);
  EXPECT_EQ(model.post_processed, 21);
  EXPECT_EQ(loader.current_source(), (root_ / "a").string());
}

TEST_F(WeightLoaderTest, BadCheckpointsLeaveTheModelByteIdentical) {
  FakeModel model;
  WeightLoader loader(model);
  loader.load(root_ / "a", SourceFormat::Native);

  auto with = [&](const std::string& name, auto edit) {
    TensorMap m = nvfp4_tensors(3);
    edit(m);
    write_checkpoint(root_ / name, m);
    return root_ / name;
  };
  expect_rejected(model, loader, with("missing", [](TensorMap& m) { m.erase("q1.weight_scale"); }),
                  {"q1.weight_scale", "missing"});
  expect_rejected(model, loader, with("extra", [](TensorMap& m) { m["q2.weight"] = m["q0.weight"]; }),
                  {"q2.weight", "not part of this model"});
  expect_rejected(model, loader, with("shape", [](TensorMap& m) { m["q0.weight"].shape = {4, 4}; }),
                  {"q0.weight", "shape is [4, 4], expected [2, 8]"});
  expect_rejected(model, loader, with("dtype", [](TensorMap& m) { m["q0.weight_scale"].dtype = DType::U8; }),
                  {"q0.weight_scale", "dtype is U8, expected F8_E4M3"});
  for (float bad : {std::nanf(""), 0.0f, -1.0f, INFINITY}) {
    expect_rejected(model, loader, with("scale", [&](TensorMap& m) { m["q1.weight_scale_2"] = raw<float>(DType::F32, {}, {bad}); }),
                    {"q1.weight_scale_2", "finite and > 0"});
  }
  expect_rejected(model, loader, with("nan_block", [](TensorMap& m) { m["q0.weight_scale"].bytes[1] = 0x7F; }),
                  {"q0.weight_scale", "NaN"});
  expect_rejected(model, loader, with("neg_block", [](TensorMap& m) { m["q0.weight_scale"].bytes[0] = 0xB8; }),
                  {"q0.weight_scale", "negative"});
  expect_rejected(model, loader, with("inf_norm", [](TensorMap& m) { m["norm"].bytes[3] = 0x7F, m["norm"].bytes[2] = 0x80; }),
                  {"norm", "NaN or Inf"});
  fs::create_directories(root_ / "empty");
  expect_rejected(model, loader, root_ / "empty", {(root_ / "empty").string()});
  expect_rejected(model, loader, root_ / "does_not_exist", {"does_not_exist"});

  fs::path truncated = with("truncated", [](TensorMap&) {});
  fs::resize_file(truncated / "model.safetensors", fs::file_size(truncated / "model.safetensors") - 3);
  expect_rejected(model, loader, truncated, {"model.safetensors"});
}

TEST_F(WeightLoaderTest, ShardRewrittenInPlaceAfterValidationRestoresPreviousWeights) {
  FakeModel model;
  fs::path c = root_ / "c";
  write_checkpoint(c, nvfp4_tensors(3));
  bool armed = false;
  LoadOptions options;
  options.between_validate_and_commit = [&] {
    if (!armed) return;
    // Same size, one byte of tensor data changed in place (the open descriptor sees it): only digests can tell.
    std::fstream f(c / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put(0x55);
  };
  WeightLoader loader(model, options);
  loader.load(root_ / "a", SourceFormat::Native);
  auto a_state = model.snapshot();
  armed = true;
  try {
    loader.load(c, SourceFormat::Native);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("changed on disk after validation"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("previous weights"), std::string::npos) << e.what();
  }
  EXPECT_EQ(loader.state(), WeightLoader::State::Loaded);
  EXPECT_EQ(model.snapshot(), a_state);
  EXPECT_EQ(loader.current_source(), (root_ / "a").string());
}

TEST_F(WeightLoaderTest, ShardReplacedAfterValidationStillLoadsWhatWasValidated) {
  FakeModel reference;
  WeightLoader(reference).load(root_ / "b", SourceFormat::Native);
  FakeModel model;
  LoadOptions options;
  options.between_validate_and_commit = [&] { write_checkpoint(root_ / "b", nvfp4_tensors(4)); };
  WeightLoader loader(model, options);
  loader.load(root_ / "b", SourceFormat::Native);  // a rename-replaced file: the open descriptor reads the old one
  EXPECT_EQ(model.snapshot(), reference.snapshot());
}

TEST_F(WeightLoaderTest, ShardDeletedAfterValidationStillLoadsWhatWasValidated) {
  FakeModel reference;
  WeightLoader(reference).load(root_ / "b", SourceFormat::Native);
  FakeModel model;
  LoadOptions options;
  options.between_validate_and_commit = [&] { fs::remove(root_ / "b" / "model.safetensors"); };
  WeightLoader loader(model, options);
  loader.load(root_ / "b", SourceFormat::Native);  // the open descriptor still reads the validated bytes
  EXPECT_EQ(model.snapshot(), reference.snapshot());
}

TEST_F(WeightLoaderTest, ReadErrorDuringCommitRestoresPreviousOrReportsInconsistent) {
  test::FaultyFiles files;
  std::optional<test::FaultyFiles::Faults> arm_at_commit;
  LoadOptions options;
  options.open_file = files.opener();
  options.between_validate_and_commit = [&] {
    if (arm_at_commit) files.arm(*arm_at_commit);
  };
  FakeModel model;
  WeightLoader loader(model, options);
  loader.load(root_ / "a", SourceFormat::Native);
  auto a_state = model.snapshot();

  // One failed read a few reads into the commit: the previous weights are restored from a's open files.
  arm_at_commit = test::FaultyFiles::Faults{.fail_read = 4};
  EXPECT_THROW(loader.load(root_ / "b", SourceFormat::Native), Error);
  EXPECT_EQ(loader.state(), WeightLoader::State::Loaded);
  EXPECT_EQ(model.snapshot(), a_state);

  // The disk stays bad: the restore fails too, and the loader says the model is inconsistent.
  arm_at_commit = test::FaultyFiles::Faults{.fail_read = 4, .keep_failing = true};
  try {
    loader.load(root_ / "b", SourceFormat::Native);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inconsistent"), std::string::npos) << e.what();
  }
  EXPECT_EQ(loader.state(), WeightLoader::State::Inconsistent);

  // A later good load recovers.
  arm_at_commit.reset();
  files.arm({});
  loader.load(root_ / "a", SourceFormat::Native);
  EXPECT_EQ(loader.state(), WeightLoader::State::Loaded);
  EXPECT_EQ(model.snapshot(), a_state);

  // A first load that fails while writing has nothing to restore.
  FakeModel fresh;
  WeightLoader first(fresh, options);
  arm_at_commit = test::FaultyFiles::Faults{.fail_read = 3};
  EXPECT_THROW(first.load(root_ / "a", SourceFormat::Native), Error);
  EXPECT_EQ(first.state(), WeightLoader::State::Inconsistent);
}

TEST_F(WeightLoaderTest, ShortReadsLoadTheSameBytes) {
  FakeModel reference;
  WeightLoader(reference).load(root_ / "b", SourceFormat::Native);
  test::FaultyFiles files;
  files.arm({.max_read_bytes = 3});
  FakeModel model;
  WeightLoader loader(model, {.open_file = files.opener()});
  loader.load(root_ / "a", SourceFormat::Native);
  loader.load(root_ / "b", SourceFormat::Native);
  EXPECT_EQ(model.snapshot(), reference.snapshot());
  EXPECT_GT(files.reads(), 40u);  // the 32-byte weights alone take 11 reads each way
}

TEST_F(WeightLoaderTest, ShardModifiedInPlaceWhileBeingValidatedIsRefused) {
  test::FaultyFiles files;
  FakeModel model;
  WeightLoader loader(model, {.open_file = files.opener()});
  loader.load(root_ / "a", SourceFormat::Native);
  fs::path c = root_ / "c";
  write_checkpoint(c, nvfp4_tensors(3));
  // Dated back as if written earlier: modification times tick at the kernel's clock resolution.
  fs::last_write_time(c / "model.safetensors", fs::file_time_type::clock::now() - std::chrono::hours(1));
  // After the header (reads 1 and 2), before the tensor bytes: the shard is rewritten with other valid weights of
  // the same layout. Its bytes would validate and commit consistently, but they are not what was opened.
  files.arm({.before_read = 3, .action = [&] { write_checkpoint_in_place(c, nvfp4_tensors(4)); }});
  expect_rejected(model, loader, c, {"model.safetensors", "modified in place", "nothing was changed"});
}

TEST_F(WeightLoaderTest, ShardReplacedByRenameWhileBeingValidatedIsRefused) {
  test::FaultyFiles files;
  FakeModel model;
  WeightLoader loader(model, {.open_file = files.opener()});
  loader.load(root_ / "a", SourceFormat::Native);
  files.arm({.before_read = 3, .action = [&] {
               write_checkpoint(root_ / "new", nvfp4_tensors(4));
               fs::rename(root_ / "new" / "model.safetensors", root_ / "b" / "model.safetensors");
             }});
  expect_rejected(model, loader, root_ / "b", {"replaced by another file"});
}

TEST_F(WeightLoaderTest, OutOfMemoryForStagingIsRefusedBeforeAnythingChanges) {
  bool exhausted = false;
  size_t asked = 0;
  LoadOptions options;
  options.allocate_staging = [&](size_t bytes) {
    asked = bytes;
    if (exhausted) throw std::bad_alloc();
    return allocate_staging_memory(bytes);
  };
  FakeModel model;
  WeightLoader loader(model, options);
  loader.load(root_ / "a", SourceFormat::Native);
  exhausted = true;
  expect_rejected(model, loader, root_ / "b", {(root_ / "b").string(), "staging memory", "out of memory"});
  exhausted = false;
  LoadResult r = loader.load(root_ / "b", SourceFormat::Native);
  EXPECT_EQ(r.peak_staging_bytes, asked);
  EXPECT_LE(asked, 64u);  // the largest tensor (16 bytes) rounded up to 64: no group to quantize
}

TEST_F(WeightLoaderTest, OutOfMemoryWhilePostProcessingRestoresPreviousWeights) {
  FakeModel model;
  WeightLoader loader(model);
  loader.load(root_ / "a", SourceFormat::Native);
  auto a_state = model.snapshot();
  model.fail_next_post_process = true;
  try {
    loader.load(root_ / "b", SourceFormat::Native);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("previous weights"), std::string::npos) << e.what();
  }
  EXPECT_EQ(loader.state(), WeightLoader::State::Loaded);
  EXPECT_EQ(model.snapshot(), a_state);
}

TEST_F(WeightLoaderTest, Bf16OnlineQuantizationEqualsQuantizeThenLoad) {
  // bf16 checkpoint: q0/q1 weights [2, 16] bf16 + norm.
  TensorMap bf16;
  std::vector<bf16_bits> q0(32), q1(32);
  for (int i = 0; i < 32; ++i) {
    q0[i] = float_to_bf16(0.01f * (i - 16));
    q1[i] = float_to_bf16(0.003f * (i * 7 % 32));
  }
  bf16["q0.weight"] = raw(DType::BF16, {2, 16}, q0);
  bf16["q1.weight"] = raw(DType::BF16, {2, 16}, q1);
  bf16["norm"] = nvfp4_tensors(1)["norm"];
  write_checkpoint(root_ / "bf16", bf16);

  // The same group quantized offline, as `fp4serve quantize` does, written as an NVFP4 checkpoint.
  std::vector<GroupMember> members{{q0, 2}, {q1, 2}};
  std::vector<uint8_t> packed(32), scales(4);
  float ws2 = quantize_group(members, 16, packed.data(), scales.data(), "q");
  TensorMap nvfp4 = nvfp4_tensors(1);
  for (int s = 0; s < 2; ++s) {
    std::string p = "q" + std::to_string(s);
    nvfp4[p + ".weight"].bytes.assign(packed.begin() + 16 * s, packed.begin() + 16 * (s + 1));
    nvfp4[p + ".weight_scale"].bytes.assign(scales.begin() + 2 * s, scales.begin() + 2 * (s + 1));
    nvfp4[p + ".weight_scale_2"] = raw<float>(DType::F32, {}, {ws2});
  }
  write_checkpoint(root_ / "quantized", nvfp4);

  FakeModel offline, online;
  WeightLoader(offline).load(root_ / "quantized", SourceFormat::Native);
  WeightLoader online_loader(online);
  online_loader.load(root_ / "a", SourceFormat::Native);
  LoadResult r = online_loader.load(root_ / "bf16", SourceFormat::Bf16Online);
  EXPECT_EQ(online.snapshot(), offline.snapshot());
  EXPECT_GT(r.peak_staging_bytes, 0u);
  // A bf16 checkpoint given as native is refused by dtype, naming the tensor.
  try {
    online_loader.load(root_ / "bf16", SourceFormat::Native);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q0.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fp4serve
