// `fp4serve synth --format nvfp4` end to end through the real binary: its checkpoint is `fp4serve quantize` of the
// bf16 synth of the same flags, file for file and byte for byte (so the inventory, configs and shard layout are the
// quantizer's); it is a pure function of the seed, whatever the thread count; it loads, routes tokens over many
// experts and `fp4serve generate` runs on it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <set>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/quant_config.h"
#include "tests/io/io_test_util.h"
#include "tests/model/test_util.h"

namespace fp4serve::testing_support {
namespace {

namespace fs = std::filesystem;

void run_ok(const std::string& args) {
  const CommandResult r = run_fp4serve(args, true);
  ASSERT_EQ(r.exit_code, 0) << args << "\n" << r.output;
}

std::set<std::string> file_names(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
  return names;
}

// Every file of `a` equals the file of the same name in `b` (and both hold the same names).
void expect_same_files(const fs::path& a, const fs::path& b) {
  ASSERT_EQ(file_names(a), file_names(b)) << a << " vs " << b;
  for (const std::string& name : file_names(a))
    EXPECT_TRUE(io_test::read_file(a / name) == io_test::read_file(b / name)) << name << " differs";
}

void expect_equals_quantized_bf16_synth(const std::string& synth_flags) {
  TempDir dir("synth_nvfp4");
  const fs::path bf16 = dir.path() / "bf16", quantized = dir.path() / "quantized", direct = dir.path() / "direct";
  run_ok("synth " + synth_flags + " --out '" + bf16.string() + "'");
  run_ok("quantize --in '" + bf16.string() + "' --out '" + quantized.string() + "'");
  run_ok("synth " + synth_flags + " --format nvfp4 --out '" + direct.string() + "'");

  // The inventory first, for a readable failure; then every byte.
  const Checkpoint expected = Checkpoint::open(quantized), actual = Checkpoint::open(direct);
  ASSERT_EQ(actual.tensor_names(), expected.tensor_names());
  for (const std::string& name : expected.tensor_names()) {
    EXPECT_EQ(actual.tensor(name).info->dtype, expected.tensor(name).info->dtype) << name;
    EXPECT_EQ(actual.tensor(name).info->shape, expected.tensor(name).info->shape) << name;
    EXPECT_EQ(actual.tensor(name).shard->path().substr(direct.string().size()),
              expected.tensor(name).shard->path().substr(quantized.string().size()))
        << name;
  }
  EXPECT_EQ(load_quant_config(direct).algo, QuantAlgo::Nvfp4);
  expect_same_files(quantized, direct);
}

TEST(CliSynthNvfp4, IsQuantizeOfTheBf16SynthByteForByte) {
  expect_equals_quantized_bf16_synth("--preset tiny --seed 4");
  // One layer of the small preset (32 experts, 512 wide); a dense Qwen3 (q/k/v and gate/up fused groups only).
  expect_equals_quantized_bf16_synth("--preset small --layers 1 --seed 2");
  expect_equals_quantized_bf16_synth("--arch qwen3 --preset tiny --layers 1");
}

TEST(CliSynthNvfp4, SameSeedSameBytesWhateverTheThreadsDifferentSeedDifferentWeights) {
  TempDir dir("synth_nvfp4_seed");
  const auto synth = [&](const std::string& name, int seed) {
    const fs::path out = dir.path() / name;
    run_ok(fmt::format("synth --preset tiny --format nvfp4 --seed {} --out '{}'", seed, out.string()));
    return out;
  };
  const fs::path a = synth("a", 7), c = synth("c", 8);
  // The child inherits the environment: one OpenMP thread instead of the machine's.
  const char* threads = std::getenv("OMP_NUM_THREADS");
  const std::string saved = threads == nullptr ? "" : threads;
  ::setenv("OMP_NUM_THREADS", "1", 1);
  const fs::path b = synth("b", 7);
  if (threads == nullptr) ::unsetenv("OMP_NUM_THREADS");
  else ::setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  expect_same_files(a, b);
  ASSERT_EQ(file_names(a), file_names(c));
  for (const std::string& name : file_names(a))
    EXPECT_EQ(io_test::read_file(a / name) == io_test::read_file(c / name), !name.ends_with(".safetensors")) << name;
}

TEST(CliSynthNvfp4, LoadsRoutesOverManyExpertsAndGenerates) {
  TempDir dir("synth_nvfp4_run");
  const fs::path model_dir = dir.path() / "small";
  run_ok("synth --preset small --layers 2 --format nvfp4 --seed 3 --out '" + model_dir.string() + "'");

  std::vector<int32_t> tokens;
  for (int32_t t = 0; t < 64; ++t) tokens.push_back((t * 37 + 11) % 256);
  auto model = load_model(model_dir);
  ASSERT_TRUE(model->is_nvfp4());
  const std::vector<int32_t> routing = fresh_routing(*model, tokens);
  // Random routers over random hidden states: 64 tokens x 4 picks should reach most of the 32 experts of a layer.
  std::set<int32_t> layer0_experts;
  const int64_t k = model->config().num_experts_per_tok, layers = model->config().num_hidden_layers;
  for (size_t t = 0; t < tokens.size(); ++t)
    for (int64_t j = 0; j < k; ++j) layer0_experts.insert(routing[(t * layers + 0) * k + j]);
  EXPECT_GE(layer0_experts.size(), 24u);

  const CommandResult r = run_fp4serve("generate --json --temperature 0 --max-new-tokens 8 --input-ids 72,105,33 "
                                       "--model-path '" + model_dir.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json out = nlohmann::json::parse(r.output);
  ASSERT_EQ(out["output_ids"].size(), 8u) << r.output;
  for (const auto& logprob : out["output_token_logprobs"]) {
    EXPECT_TRUE(std::isfinite(logprob[0].get<double>())) << r.output;
    EXPECT_LE(logprob[0].get<double>(), 0.0);
  }
}

}  // namespace
}  // namespace fp4serve::testing_support
