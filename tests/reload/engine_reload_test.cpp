// The reference system's reload test at the engine level: greedy decode with logprobs, reload the SAME checkpoint
// twice (prefix cache flushed, then kept), decode again: tokens and logprobs bitwise unchanged (the reference asks
// atol 1e-4). Then reload a different checkpoint: equal to a fresh engine on it, bitwise.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "engine/engine.h"
#include "engine/weight_updater.h"
#include "io/quant_config.h"

namespace fp4serve {
namespace {

namespace fs = std::filesystem;

void cli(const std::string& args) {
  const char* env = std::getenv("FP4SERVE_BIN");
  std::string cmd = std::string(env ? env : FP4SERVE_BINARY_DIR "/fp4serve") + " " + args + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

struct ServedEngine {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<WeightUpdater> updater;
};

ServedEngine start(const fs::path& dir, WeightLayout layout) {
  ModelConfig config = load_model_config(dir);
  auto model = std::make_unique<Qwen3Model>(config, load_quant_config(dir),
                                            QuantOptions{.layout = layout, .act_quant = ActQuant::PerToken});
  ServedEngine s;
  s.updater = std::make_unique<WeightUpdater>(*model, config);
  s.updater->load(dir);
  s.engine = std::make_unique<Engine>(std::move(model), EngineOptions{.kv_cache_tokens = 1024});
  return s;
}

// Two greedy requests sharing a long prefix (so the prefix cache is used), 16 new tokens each.
std::vector<GenerateResult> decode(Engine& engine) {
  std::vector<int32_t> prefix;
  for (int i = 0; i < 40; ++i) prefix.push_back(33 + (i * 7) % 90);
  std::vector<GenerateRequest> requests;
  for (int32_t tail : {65, 66}) {
    GenerateRequest r{.input_ids = prefix, .max_new_tokens = 16, .ignore_eos = true};
    r.input_ids.push_back(tail);
    r.sampling.temperature = 0.0f;
    requests.push_back(r);
  }
  return engine.generate(requests);
}

void expect_bitwise_equal(const std::vector<GenerateResult>& a, const std::vector<GenerateResult>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].output_ids, b[i].output_ids) << "request " << i;
    ASSERT_EQ(a[i].output_logprobs.size(), b[i].output_logprobs.size());
    EXPECT_EQ(std::memcmp(a[i].output_logprobs.data(), b[i].output_logprobs.data(),
                          a[i].output_logprobs.size() * sizeof(float)), 0)
        << "request " << i << ": logprobs differ";
  }
}

TEST(EngineReload, SameCheckpointTwiceKeepsLogprobsBitwiseAndOtherCheckpointEqualsFresh) {
  fs::path root = fs::temp_directory_path() / ("fp4serve_engine_reload_" + std::to_string(::getpid()));
  fs::remove_all(root);
  cli("synth --preset tiny --seed 11 --out " + (root / "a_bf16").string());
  cli("synth --preset tiny --seed 12 --out " + (root / "b_bf16").string());
  cli("quantize --in " + (root / "a_bf16").string() + " --out " + (root / "a").string());
  cli("quantize --in " + (root / "b_bf16").string() + " --out " + (root / "b").string());

  for (WeightLayout layout : {WeightLayout::Cutlass, WeightLayout::Trtllm}) {
    SCOPED_TRACE(std::string(weight_layout_name(layout)));
    ServedEngine served = start(root / "a", layout);
    auto before = decode(*served.engine);
    for (bool flush : {true, false}) {
      served.updater->load(root / "a");
      if (flush) served.engine->flush_prefix_cache();
      auto after = decode(*served.engine);
      expect_bitwise_equal(before, after);
      if (flush)
        EXPECT_EQ(after[0].cached_tokens, 0);
      else
        EXPECT_GT(after[0].cached_tokens, 0) << "kept prefix pages should be reused";
    }
    served.updater->load(root / "b");
    served.engine->flush_prefix_cache();
    served.engine->set_weight_version("b");
    auto reloaded = decode(*served.engine);
    ServedEngine fresh_b = start(root / "b", layout);
    expect_bitwise_equal(reloaded, decode(*fresh_b.engine));
    EXPECT_EQ(reloaded[0].weight_version, "b");
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace fp4serve
