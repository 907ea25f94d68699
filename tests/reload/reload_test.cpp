// Hot reload on the real model (issue: "Hot weight reload"): checkpoints made through the public CLI (synth +
// quantize), loaded with WeightUpdater. A reload must give the bytes (derived ones included) and logits of a fresh
// start, keep every storage address, never grow memory, and leave the model byte-identical on any bad input.
#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <utility>

#include "common/error.h"
#include "engine/weight_updater.h"
#include "engine/weights_digest.h"
#include "io/checkpoint.h"
#include "io/quant_config.h"
#include "model/qwen3_model.h"
#include "support/faulty_files.h"

namespace fp4serve {
namespace {

namespace fs = std::filesystem;

std::string fp4serve_bin() {
  const char* env = std::getenv("FP4SERVE_BIN");
  return env ? env : FP4SERVE_BINARY_DIR "/fp4serve";
}

void run_cli(const std::string& args) {
  std::string cmd = fp4serve_bin() + " " + args + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Checkpoints shared by the suite: two bf16 models (seeds 1, 2), their NVFP4 versions, and a 3-layer one.
struct Checkpoints {
  fs::path root, a_bf16, b_bf16, a, b, three_layers;
};
Checkpoints* ckpts = nullptr;

class Reload : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ckpts = new Checkpoints;
    ckpts->root = fs::temp_directory_path() / ("fp4serve_reload_" + std::to_string(::getpid()));
    fs::remove_all(ckpts->root);
    fs::create_directories(ckpts->root);
    ckpts->a_bf16 = ckpts->root / "a_bf16";
    ckpts->b_bf16 = ckpts->root / "b_bf16";
    ckpts->a = ckpts->root / "a";
    ckpts->b = ckpts->root / "b";
    ckpts->three_layers = ckpts->root / "three";
    run_cli("synth --arch qwen3-moe --preset tiny --seed 1 --out " + ckpts->a_bf16.string());
    run_cli("synth --arch qwen3-moe --preset tiny --seed 2 --out " + ckpts->b_bf16.string());
    run_cli("quantize --in " + ckpts->a_bf16.string() + " --out " + ckpts->a.string());
    run_cli("quantize --in " + ckpts->b_bf16.string() + " --out " + ckpts->b.string());
    fs::path three_bf16 = ckpts->root / "three_bf16";
    run_cli("synth --arch qwen3-moe --preset tiny --layers 3 --seed 3 --out " + three_bf16.string());
    run_cli("quantize --in " + three_bf16.string() + " --out " + ckpts->three_layers.string());
  }
  static void TearDownTestSuite() {
    fs::remove_all(ckpts->root);
    delete ckpts;
  }
};

struct Served {
  std::unique_ptr<Qwen3Model> model;
  std::unique_ptr<WeightUpdater> updater;
};

Served serve(const fs::path& dir, QuantOptions options, LoadOptions load_options = {}) {
  ModelConfig config = load_model_config(dir);
  Served s;
  s.model = std::make_unique<Qwen3Model>(config, load_quant_config(dir), options);
  s.updater = std::make_unique<WeightUpdater>(*s.model, config, std::move(load_options));
  s.updater->load(dir);
  return s;
}

// Every parameter name (aliases included) -> its bytes.
std::map<std::string, std::vector<uint8_t>> snapshot(const Qwen3Model& model) {
  std::map<std::string, std::vector<uint8_t>> out;
  for (const auto& name : model.params().names()) {
    Tensor host = to_host(model.params().get(name));
    out[name].assign(host.raw(), host.raw() + host.nbytes());
  }
  return out;
}

// Names the first parameter whose bytes differ (a whole-map EXPECT_EQ would print megabytes).
::testing::AssertionResult same_state(const std::map<std::string, std::vector<uint8_t>>& a,
                                      const std::map<std::string, std::vector<uint8_t>>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << a.size() << " vs " << b.size() << " parameters";
  for (const auto& [name, bytes] : a) {
    auto it = b.find(name);
    if (it == b.end()) return ::testing::AssertionFailure() << "parameter " << name << " missing";
    if (it->second != bytes) return ::testing::AssertionFailure() << "parameter " << name << " differs";
  }
  return ::testing::AssertionSuccess();
}

std::map<std::string, const uint8_t*> addresses(const Qwen3Model& model) {
  std::map<std::string, const uint8_t*> out;
  for (const auto& name : model.params().names()) out[name] = model.params().get(name).raw();
  return out;
}

// Logits of every position of one sequence, as raw float bits.
std::vector<uint32_t> logits(Qwen3Model& model, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = model.config();
  const int64_t page_size = 16, n_pages = (static_cast<int64_t>(tokens.size()) + page_size - 1) / page_size;
  Shape kv_shape{c.num_hidden_layers, n_pages, page_size, c.num_key_value_heads, c.head_dim};
  KvCacheTensors kv{Tensor::empty(kv_shape, DType::BF16, Device::CPU), Tensor::empty(kv_shape, DType::BF16, Device::CPU)};
  std::vector<int32_t> pages(n_pages);
  for (int64_t i = 0; i < n_pages; ++i) pages[i] = static_cast<int32_t>(i);
  ForwardBatch batch{.sequences = {{tokens, 0, pages}}, .kv_cache = &kv, .all_logits = true};
  ForwardOutput out = model.forward(batch);
  Tensor host = to_host(out.all_logits);
  std::vector<uint32_t> bits(host.numel());
  std::memcpy(bits.data(), host.raw(), host.nbytes());
  return bits;
}

const std::vector<int32_t> kPrompt{257, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 258, 10, 65, 66};

struct Mode {
  WeightLayout layout;
  ActQuant act;
};
std::vector<Mode> all_modes() {
  std::vector<Mode> modes;
  for (WeightLayout layout : {WeightLayout::Cutlass, WeightLayout::Trtllm})
    for (ActQuant act : {ActQuant::None, ActQuant::Static, ActQuant::PerToken}) modes.push_back({layout, act});
  return modes;
}
std::string describe(const Mode& m) {
  return std::string(weight_layout_name(m.layout)) + "/" + std::string(act_quant_name(m.act));
}

TEST_F(Reload, AToBEqualsFreshBBitwiseInEveryLayoutAndActivationMode) {
  for (const Mode& mode : all_modes()) {
    SCOPED_TRACE(describe(mode));
    QuantOptions options{.layout = mode.layout, .act_quant = mode.act};
    Served fresh_b = serve(ckpts->b, options);
    Served served = serve(ckpts->a, options);
    auto a_state = snapshot(*served.model);
    auto a_logits = logits(*served.model, kPrompt);

    served.updater->load(ckpts->b);
    EXPECT_TRUE(same_state(snapshot(*served.model), snapshot(*fresh_b.model)));
    EXPECT_EQ(logits(*served.model, kPrompt), logits(*fresh_b.model, kPrompt));
    EXPECT_NE(logits(*served.model, kPrompt), a_logits);

    served.updater->load(ckpts->a);
    EXPECT_TRUE(same_state(snapshot(*served.model), a_state));
    EXPECT_EQ(logits(*served.model, kPrompt), a_logits);
    served.updater->load(ckpts->a);  // A into A changes nothing
    EXPECT_TRUE(same_state(snapshot(*served.model), a_state));
    EXPECT_EQ(model_weights_digest(*served.model), checkpoint_digest(ckpts->a));
  }
}

TEST_F(Reload, AddressesStayAndMemoryDoesNotGrow) {
  Served served = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static});
  auto before = addresses(*served.model);
  size_t param_bytes = served.model->params().total_bytes();
  for (int i = 0; i < 10; ++i) served.updater->load(i % 2 ? ckpts->a : ckpts->b);
  EXPECT_EQ(addresses(*served.model), before);

  // After warming up (allocator pools), 50 more reloads must not grow the heap in use.
  size_t in_use_before = mallinfo2().uordblks;
  for (int i = 0; i < 50; ++i) served.updater->load(i % 2 ? ckpts->a : ckpts->b);
  size_t in_use_after = mallinfo2().uordblks;
  EXPECT_LT(in_use_after, in_use_before + (256u << 10)) << in_use_before << " -> " << in_use_after;
  EXPECT_EQ(served.model->params().total_bytes(), param_bytes);
  EXPECT_EQ(addresses(*served.model), before);
  EXPECT_EQ(served.updater->reloads(), 60);
}

TEST_F(Reload, SmallStagingBufferGivesTheSameBytes) {
  Served big = serve(ckpts->b, {});
  Served small = serve(ckpts->a, {}, {.staging_bytes = 4096});  // tensors span many chunks
  LoadResult r = small.updater->load(ckpts->b);
  EXPECT_TRUE(same_state(snapshot(*small.model), snapshot(*big.model)));
  EXPECT_LE(r.peak_staging_bytes, 4096u);
}

TEST_F(Reload, Bf16OnlineReloadEqualsQuantizeThenReload) {
  for (const Mode& mode : all_modes()) {
    SCOPED_TRACE(describe(mode));
    QuantOptions options{.layout = mode.layout, .act_quant = mode.act};
    Served quantized = serve(ckpts->a, options);
    quantized.updater->load(ckpts->b);
    Served online = serve(ckpts->a, options);
    LoadResult r = online.updater->load(ckpts->b_bf16);
    EXPECT_EQ(r.format, SourceFormat::Bf16Online);
    EXPECT_TRUE(same_state(snapshot(*online.model), snapshot(*quantized.model)));
    EXPECT_EQ(model_weights_digest(*online.model), checkpoint_digest(ckpts->b));
  }
}

// ---- the parallel loader: threads read and digest the chunks of both passes ----

// The tiny checkpoints (about 800 KB) on 4 threads: 16 KiB of staging gives each thread 4 KiB chunks, hundreds each.
LoadOptions on_four_threads(FileOpener open_file = open_posix_file) {
  return {.staging_bytes = 16 << 10, .threads = 4, .open_file = std::move(open_file)};
}

TEST_F(Reload, ParallelLoadGivesTheBytesOfAOneThreadLoad) {
  for (const Mode& mode : {Mode{WeightLayout::Cutlass, ActQuant::None}, Mode{WeightLayout::Trtllm, ActQuant::Static}}) {
    SCOPED_TRACE(describe(mode));
    QuantOptions options{.layout = mode.layout, .act_quant = mode.act};
    Served one = serve(ckpts->a, options, {.threads = 1});
    Served parallel = serve(ckpts->a, options, on_four_threads());
    EXPECT_TRUE(same_state(snapshot(*parallel.model), snapshot(*one.model)));
    for (const fs::path& dir : {ckpts->b, ckpts->b_bf16, ckpts->a}) {
      SCOPED_TRACE(dir.filename().string());
      const LoadResult single = one.updater->load(dir), several = parallel.updater->load(dir);
      EXPECT_EQ(single.threads, 1);
      EXPECT_EQ(several.threads, 4);
      EXPECT_TRUE(same_state(snapshot(*parallel.model), snapshot(*one.model)));
      if (dir == ckpts->b) {  // NVFP4 after NVFP4: no quantization group to stage
        EXPECT_LE(several.peak_staging_bytes, 16u << 10);  // the threads share the staging budget
      }
    }
  }
  // By default a load takes a thread per chunk of data (staging_bytes / threads): this small one stays on one.
  Served by_default = serve(ckpts->a, {});
  EXPECT_EQ(by_default.updater->load(ckpts->b).threads, 1);
}

// Files whose first read, once armed, from a thread other than the one that armed them fails or returns one byte
// flipped; remembers the file and offset of that read. While armed, reads on the arming thread take a millisecond
// longer, so that the loader's other threads surely take chunks (else a small load can end before they start).
class WorkerThreadFault {
 public:
  enum class Kind { ReadError, FlippedByte };
  void arm(Kind kind) {
    std::lock_guard lock(mutex_);
    kind_ = kind, armed_ = true, fired_ = false, arming_thread_ = std::this_thread::get_id();
  }
  // (file, offset) of the faulty read.
  std::optional<std::pair<std::string, uint64_t>> fired() const {
    std::lock_guard lock(mutex_);
    return fired_ ? std::optional(std::pair(fired_path_, fired_offset_)) : std::nullopt;
  }
  FileOpener opener() {
    return test::intercepting_opener([this](const FileReader& file, std::span<uint8_t> dst, uint64_t offset) {
      const size_t got = file.pread_some(dst, offset);
      if (on_arming_thread()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      std::optional<Kind> kind = take(file.path(), offset);
      if (kind == Kind::ReadError)
        fail("{}: read at offset {} failed (injected on a worker thread)", file.path(), offset);
      if (kind == Kind::FlippedByte && got > 0) dst[got - 1] ^= 0x01;
      return got;
    });
  }

 private:
  bool on_arming_thread() const {
    std::lock_guard lock(mutex_);
    return armed_ && std::this_thread::get_id() == arming_thread_;
  }
  // The fault for this read, if it is the one to fail.
  std::optional<Kind> take(const std::string& path, uint64_t offset) {
    std::lock_guard lock(mutex_);
    if (!armed_ || fired_ || std::this_thread::get_id() == arming_thread_) return std::nullopt;
    fired_ = true, fired_path_ = path, fired_offset_ = offset;
    return kind_;
  }

  mutable std::mutex mutex_;
  Kind kind_ = Kind::ReadError;
  bool armed_ = false, fired_ = false;
  std::thread::id arming_thread_;
  std::string fired_path_;
  uint64_t fired_offset_ = 0;
};

// The checkpoint tensor holding byte `offset` of `file`.
std::string tensor_at(const fs::path& dir, const std::string& file, uint64_t offset) {
  Checkpoint ckpt = Checkpoint::open(dir, {.map = false});
  for (const auto& name : ckpt.tensor_names()) {
    const CheckpointTensor& t = ckpt.tensor(name);
    if (t.shard->path() == file && t.info->offset <= offset && offset < t.info->offset + t.info->nbytes) return name;
  }
  return "(no tensor at offset " + std::to_string(offset) + " of " + file + ")";
}

TEST_F(Reload, AFaultInAChunkReadByAWorkerThreadNamesFileAndTensorAndChangesNothing) {
  WorkerThreadFault fault;
  std::optional<WorkerThreadFault::Kind> arm_at_commit;
  LoadOptions options = on_four_threads(fault.opener());
  options.between_validate_and_commit = [&] {
    if (arm_at_commit) fault.arm(*arm_at_commit);
  };
  Served served = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static}, options);
  const auto before = snapshot(*served.model);
  struct Case {
    WorkerThreadFault::Kind kind;
    bool at_commit;
    std::vector<std::string> says;
  };
  using Kind = WorkerThreadFault::Kind;
  for (const Case& c : {Case{Kind::ReadError, false, {"injected on a worker thread"}},
                        Case{Kind::ReadError, true, {"injected on a worker thread", "were restored"}},
                        Case{Kind::FlippedByte, true, {"changed on disk after validation", "were restored"}}}) {
    SCOPED_TRACE(std::string(c.kind == Kind::ReadError ? "read error" : "flipped byte") +
                 (c.at_commit ? " at commit" : " at validation"));
    arm_at_commit.reset();
    if (c.at_commit)
      arm_at_commit = c.kind;
    else
      fault.arm(c.kind);
    try {
      served.updater->load(ckpts->b);
      ADD_FAILURE() << "the load succeeded";
    } catch (const Error& e) {
      const std::string message = e.what();
      const auto read = fault.fired();
      ASSERT_TRUE(read.has_value()) << "no worker thread read a chunk: " << message;
      EXPECT_NE(message.find(read->first), std::string::npos) << message;
      EXPECT_NE(message.find("tensor '" + tensor_at(ckpts->b, read->first, read->second) + "'"), std::string::npos)
          << message;
      for (const std::string& fragment : c.says) EXPECT_NE(message.find(fragment), std::string::npos) << message;
    }
    EXPECT_EQ(served.updater->state(), WeightLoader::State::Loaded);
    EXPECT_TRUE(same_state(snapshot(*served.model), before));
  }
}

// ---- updates from tensors in memory (update_weights_from_tensor) ----

// A checkpoint's tensors held in memory, as a trainer would push them.
struct HeldTensors {
  Checkpoint checkpoint;
  std::vector<NamedTensor> tensors;
};
HeldTensors hold(const fs::path& dir, const std::function<bool(const std::string&)>& keep = {}) {
  HeldTensors held{Checkpoint::open(dir), {}};
  for (const auto& name : held.checkpoint.tensor_names()) {
    const CheckpointTensor& t = held.checkpoint.tensor(name);
    if (!keep || keep(name)) held.tensors.push_back({name, t.info->dtype, t.info->shape, t.bytes});
  }
  return held;
}

// In the layouts whose post-processing rewrites raw parameters in place (trtllm row order, swizzled scales), a
// partial update must re-derive from the logical weights, not from the half-derived bytes.
TEST_F(Reload, UpdatesFromTensorsEqualDiskLoadsInEveryLayoutAndActivationMode) {
  const auto layer_0 = [](const std::string& name) { return name.starts_with("model.layers.0."); };
  for (const Mode& mode : all_modes()) {
    SCOPED_TRACE(describe(mode));
    QuantOptions options{.layout = mode.layout, .act_quant = mode.act};
    Served fresh_b = serve(ckpts->b, options);
    Served pushed = serve(ckpts->a, options);
    const auto addresses_before = addresses(*pushed.model);
    pushed.updater->update(hold(ckpts->b, layer_0).tensors, "layer 0 of B");
    EXPECT_NE(model_weights_digest(*pushed.model), checkpoint_digest(ckpts->b));
    pushed.updater->update(hold(ckpts->b, [&](const std::string& n) { return !layer_0(n); }).tensors, "rest of B");
    EXPECT_TRUE(same_state(snapshot(*pushed.model), snapshot(*fresh_b.model)));
    EXPECT_EQ(logits(*pushed.model, kPrompt), logits(*fresh_b.model, kPrompt));
    EXPECT_EQ(addresses(*pushed.model), addresses_before);

    Served from_disk = serve(ckpts->a, options);
    from_disk.updater->load(ckpts->b_bf16);
    pushed.updater->update(hold(ckpts->b_bf16).tensors, "B in bf16");
    EXPECT_TRUE(same_state(snapshot(*pushed.model), snapshot(*from_disk.model)));
  }
}

TEST_F(Reload, AnUpdateFromTensorsChangedDuringItsWriteRestoresTheServedWeights) {
  HeldTensors b = hold(ckpts->b);
  std::vector<uint8_t> norm(b.checkpoint.tensor("model.norm.weight").bytes.begin(),
                            b.checkpoint.tensor("model.norm.weight").bytes.end());
  for (NamedTensor& t : b.tensors)
    if (t.name == "model.norm.weight") t.bytes = norm;  // a copy the hook may change
  bool armed = false;
  LoadOptions options;
  options.between_validate_and_commit = [&] {
    if (armed) norm[3] ^= 0x01;
  };
  Served served = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static}, options);
  const auto before = snapshot(*served.model);
  armed = true;
  try {
    served.updater->update(b.tensors, "B");
    ADD_FAILURE() << "an update whose bytes changed after validation was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("changed in memory after validation"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("were restored"), std::string::npos) << e.what();
  }
  EXPECT_EQ(served.updater->state(), WeightLoader::State::Loaded);
  EXPECT_TRUE(same_state(snapshot(*served.model), before));
}

// ---- failure cases: each leaves the served model byte-identical ----

struct Mutable {
  std::map<std::string, TensorDecl> decls;
  std::map<std::string, std::vector<uint8_t>> bytes;
};

Mutable read_all(const fs::path& dir) {
  Mutable m;
  Checkpoint ckpt = Checkpoint::open(dir);
  for (const auto& name : ckpt.tensor_names()) {
    const CheckpointTensor& t = ckpt.tensor(name);
    m.decls[name] = {name, t.info->dtype, t.info->shape};
    m.bytes[name].assign(t.bytes.begin(), t.bytes.end());
  }
  return m;
}

// Writes `m` as a single-file checkpoint with `source`'s config files.
fs::path write_variant(const fs::path& source, const fs::path& dir, const Mutable& m) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"config.json", "hf_quant_config.json"})
    if (fs::exists(source / f)) fs::copy_file(source / f, dir / f);
  std::vector<TensorDecl> decls;
  for (const auto& [name, d] : m.decls) decls.push_back(d);
  SafetensorsWriter writer(dir / "model.safetensors", decls);
  for (const auto& d : decls) writer.write(d.name, m.bytes.at(d.name));
  writer.finish();
  return dir;
}

// Writes `source`'s tensors as a checkpoint of shards of at most `shard_bytes` each, with its config files.
fs::path reshard(const fs::path& source, const fs::path& dir, uint64_t shard_bytes) {
  const Mutable m = read_all(source);
  fs::remove_all(dir);
  CheckpointWriter writer(dir, shard_bytes);
  for (const auto& [name, decl] : m.decls) writer.add(decl);
  writer.write([&](const TensorDecl& t, std::span<uint8_t> out) {
    std::memcpy(out.data(), m.bytes.at(t.name).data(), out.size());
  });
  for (const char* f : {"config.json", "hf_quant_config.json"})
    if (fs::exists(source / f)) fs::copy_file(source / f, dir / f);
  return dir;
}

std::vector<fs::path> shards_of(const fs::path& dir) {
  std::vector<fs::path> shards;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors") shards.push_back(entry.path());
  std::sort(shards.begin(), shards.end());
  return shards;
}

class ReloadFailure : public Reload {
 protected:
  void SetUp() override {
    served_ = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static});
    before_ = snapshot(*served_.model);
    logits_before_ = logits(*served_.model, kPrompt);
  }
  // The reload of `dir` must fail with every fragment in its message, and change nothing.
  void expect_refused(const fs::path& dir, const std::vector<std::string>& fragments) {
    try {
      served_.updater->load(dir);
      ADD_FAILURE() << "reload of " << dir << " succeeded";
    } catch (const Error& e) {
      for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
    EXPECT_EQ(served_.updater->state(), WeightLoader::State::Loaded);
    EXPECT_TRUE(same_state(snapshot(*served_.model), before_));
    EXPECT_EQ(logits(*served_.model, kPrompt), logits_before_);
  }
  fs::path variant(const std::string& name, const std::function<void(Mutable&)>& edit) {
    Mutable m = read_all(ckpts->b);
    edit(m);
    return write_variant(ckpts->b, ckpts->root / ("variant_" + name), m);
  }

  // Serves A again, reading files through `files`.
  void serve_through(test::FaultyFiles& files) {
    served_ = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static},
                    {.open_file = files.opener()});
  }

  Served served_;
  std::map<std::string, std::vector<uint8_t>> before_;
  std::vector<uint32_t> logits_before_;
};

const std::string kExpert = "model.layers.1.mlp.experts.3.down_proj";
const std::string kQProj = "model.layers.0.self_attn.q_proj";

TEST_F(ReloadFailure, MissingExpert) {
  expect_refused(variant("missing", [](Mutable& m) {
                   for (const char* s : {".weight", ".weight_scale", ".weight_scale_2", ".input_scale"}) {
                     m.decls.erase(kExpert + s);
                     m.bytes.erase(kExpert + s);
                   }
                 }),
                 {kExpert + ".weight", "missing"});
}

TEST_F(ReloadFailure, ExtraUnknownTensor) {
  expect_refused(variant("extra",
                         [](Mutable& m) {
                           m.decls["model.layers.0.mlp.experts.99.up_proj.weight"] = {
                               "model.layers.0.mlp.experts.99.up_proj.weight", DType::U8, {4}};
                           m.bytes["model.layers.0.mlp.experts.99.up_proj.weight"] = {1, 2, 3, 4};
                         }),
                 {"experts.99.up_proj.weight", "not part of this model"});
}

TEST_F(ReloadFailure, WrongShapeAndWrongDtype) {
  expect_refused(variant("shape",
                         [](Mutable& m) {
                           auto& d = m.decls[kQProj + ".weight"];
                           d.shape = {d.shape[1], d.shape[0]};
                         }),
                 {kQProj + ".weight", "shape"});
  expect_refused(variant("dtype", [](Mutable& m) { m.decls[kQProj + ".weight_scale"].dtype = DType::U8; }),
                 {kQProj + ".weight_scale", "dtype is U8"});
}

TEST_F(ReloadFailure, NonFiniteOrNonPositiveScales) {
  for (float bad : {std::nanf(""), 0.0f, -0.5f}) {
    expect_refused(variant("scale",
                           [&](Mutable& m) {
                             std::memcpy(m.bytes[kExpert + ".weight_scale_2"].data(), &bad, 4);
                           }),
                   {kExpert + ".weight_scale_2", "finite and > 0"});
  }
  expect_refused(variant("nan_block", [](Mutable& m) { m.bytes[kQProj + ".weight_scale"][5] = 0x7F; }),
                 {kQProj + ".weight_scale", "NaN"});
}

TEST_F(ReloadFailure, TruncatedShardEmptyDirMissingShardAndWrongArchitecture) {
  fs::path truncated = variant("truncated", [](Mutable&) {});
  fs::resize_file(truncated / "model.safetensors", fs::file_size(truncated / "model.safetensors") - 100);
  expect_refused(truncated, {"model.safetensors"});

  fs::path empty = ckpts->root / "empty";
  fs::create_directories(empty);
  expect_refused(empty, {empty.string()});

  fs::path missing_shard = ckpts->root / "missing_shard";
  fs::remove_all(missing_shard);
  fs::copy(ckpts->b, missing_shard);
  nlohmann::json index = nlohmann::json::parse(std::ifstream(missing_shard / "model.safetensors.index.json"));
  index["weight_map"][kQProj + ".weight"] = "model-99999-of-99999.safetensors";
  std::ofstream(missing_shard / "model.safetensors.index.json") << index.dump();
  expect_refused(missing_shard, {"model-99999-of-99999.safetensors"});

  expect_refused(ckpts->three_layers, {"num_hidden_layers", "config.json"});
}

// Files in which a read covering byte `offset` takes 50 ms longer: the loader thread reading it falls behind.
FileOpener slow_read_at(uint64_t slow) {
  return test::intercepting_opener([slow](const FileReader& file, std::span<uint8_t> dst, uint64_t offset) {
    if (offset <= slow && slow < offset + dst.size()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return file.pread_some(dst, offset);
  });
}

// A NaN in the embedding's first chunk, whose read is slow, and an Inf in its sixth: the other threads meet the Inf
// first, yet the error is the NaN's, as on one thread.
TEST_F(ReloadFailure, SeveralThreadsReportTheErrorOneThreadMeetsFirst) {
  const std::string embedding = "model.embed_tokens.weight";
  const fs::path two_bad = variant("two_bad", [&](Mutable& m) {
    std::vector<uint8_t>& bytes = m.bytes[embedding];
    ASSERT_GT(bytes.size(), 5u * 4096 + 4);
    bytes[2] = 0xC0, bytes[3] = 0x7F;                          // element 1: bf16 NaN (0x7FC0)
    bytes[5 * 4096 + 2] = 0x80, bytes[5 * 4096 + 3] = 0x7F;  // in the sixth 4 KiB chunk: bf16 Inf (0x7F80)
  });
  const uint64_t embedding_offset = Checkpoint::open(two_bad).tensor(embedding).info->offset;
  std::vector<std::string> errors;
  for (const LoadOptions& options : {LoadOptions{.threads = 1}, on_four_threads(slow_read_at(embedding_offset))}) {
    Served served = serve(ckpts->a, {}, options);
    try {
      served.updater->load(two_bad);
      ADD_FAILURE() << "the load succeeded";
    } catch (const Error& e) {
      errors.push_back(e.what());
    }
  }
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find("value nan"), std::string::npos) << errors[0];
  EXPECT_EQ(errors[1], errors[0]);
}

TEST_F(ReloadFailure, FileChangedInPlaceAfterValidationKeepsTheOldWeights) {
  fs::path c = variant("in_place", [](Mutable&) {});
  bool armed = false;
  LoadOptions options;
  options.between_validate_and_commit = [&] {
    if (!armed) return;
    std::fstream f(c / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-7, std::ios::end);
    char byte = static_cast<char>(f.get() ^ 0x5A);
    f.seekp(-7, std::ios::end);
    f.put(byte);
  };
  served_ = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static}, options);
  armed = true;
  expect_refused(c, {"changed on disk after validation", "previous weights"});
}

TEST_F(ReloadFailure, ShardDeletedAfterValidationLoadsTheValidatedNewWeightsCompletely) {
  Served fresh_b = serve(ckpts->b, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static});
  fs::path c = variant("deleted", [](Mutable&) {});
  bool armed = false;
  LoadOptions options;
  options.between_validate_and_commit = [&] {
    if (armed) fs::remove(c / "model.safetensors");
  };
  served_ = serve(ckpts->a, {.layout = WeightLayout::Trtllm, .act_quant = ActQuant::Static}, options);
  armed = true;
  served_.updater->load(c);  // the open descriptor still holds the validated bytes: all new, never a mix
  EXPECT_TRUE(same_state(snapshot(*served_.model), snapshot(*fresh_b.model)));
}

TEST_F(ReloadFailure, AReadErrorAtAnyReadKeepsOrRestoresTheOldWeights) {
  test::FaultyFiles files;
  serve_through(files);
  files.arm({});
  served_.updater->load(ckpts->b);  // counts the reads of a reload: the headers, validation, commit
  const uint64_t reads = files.reads();
  served_.updater->load(ckpts->a);
  // The first 8 reads (the header, the first tensors), then every third, and the last: the validation and the
  // commit of every kind of tensor (every single read took 20 s on the loaded 2-core machine).
  std::vector<uint64_t> failing_reads{reads};
  for (uint64_t read = 1; read < reads; read += read <= 8 ? 1 : 3) failing_reads.push_back(read);
  for (uint64_t read : failing_reads) {
    files.arm({.fail_read = read});
    EXPECT_THROW(served_.updater->load(ckpts->b), Error) << "read " << read;
    ASSERT_EQ(served_.updater->state(), WeightLoader::State::Loaded) << "read " << read;
    ASSERT_TRUE(same_state(snapshot(*served_.model), before_)) << "read " << read;
  }
  EXPECT_EQ(logits(*served_.model, kPrompt), logits_before_);
}

TEST_F(ReloadFailure, ADiskGoneBadFromAnyReadOnIsRefusedOrReportedInconsistentNeverMixed) {
  test::FaultyFiles files;
  serve_through(files);
  files.arm({});
  served_.updater->load(ckpts->b);
  const uint64_t reads = files.reads();
  served_.updater->load(ckpts->a);
  int inconsistent = 0;
  for (uint64_t read = 1; read <= reads; read += 5) {
    files.arm({.fail_read = read, .keep_failing = true});
    EXPECT_THROW(served_.updater->load(ckpts->b), Error) << "read " << read;
    if (served_.updater->state() == WeightLoader::State::Inconsistent) {
      ++inconsistent;  // the restore could not read A either: the server refuses to serve until a load succeeds
      files.arm({});
      served_.updater->load(ckpts->a);
    }
    ASSERT_TRUE(same_state(snapshot(*served_.model), before_)) << "read " << read;
  }
  EXPECT_GT(inconsistent, 0);  // failures from inside the commit on
  EXPECT_EQ(logits(*served_.model, kPrompt), logits_before_);
}

TEST_F(ReloadFailure, ShardRewrittenInPlaceBeforeItIsReadIsRefusedNotMixed) {
  // A and B in several shards of the same layout. Once every header is read (two reads a shard), B's last shard,
  // not yet read, is overwritten in place with A's. Its bytes are valid and would read back the same at commit:
  // without the check that no file changed since it was opened, the model would serve B's first shards with A's
  // last one, a checkpoint nobody wrote.
  const fs::path a = reshard(ckpts->a, ckpts->root / "a_sharded", 200 << 10);
  const fs::path b = reshard(ckpts->b, ckpts->root / "b_sharded", 200 << 10);
  const std::vector<fs::path> shards = shards_of(b);
  ASSERT_GE(shards.size(), 3u);
  ASSERT_EQ(shards_of(a).back().filename(), shards.back().filename());
  for (const fs::path& shard : shards)  // written earlier: modification times tick at the kernel's clock resolution
    fs::last_write_time(shard, fs::file_time_type::clock::now() - std::chrono::hours(1));
  test::FaultyFiles files;
  serve_through(files);
  files.arm({.before_read = 2 * shards.size() + 1, .action = [&] {
               std::ifstream in(shards_of(a).back(), std::ios::binary);
               std::fstream out(shards.back(), std::ios::in | std::ios::out | std::ios::binary);
               out << in.rdbuf();
             }});
  expect_refused(b, {shards.back().filename().string(), "modified in place", "nothing was changed"});
}

}  // namespace
}  // namespace fp4serve
