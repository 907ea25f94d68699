// Header-only helpers shared by the model, engine and server tests: temporary directories, loading a checkpoint
// directory into a Qwen3Model, the routing of one fresh forward, and the real fp4serve binary (env FP4SERVE_BIN,
// else the build's) e.g. to `synth` a model.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/weight_loader.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "model/qwen3_model.h"

namespace fp4serve::testing_support {

struct CommandResult {
  int exit_code;
  std::string output;  // stdout (and stderr when asked)
};

inline std::string fp4serve_binary() {
  const char* from_env = std::getenv("FP4SERVE_BIN");
  return from_env != nullptr && *from_env != '\0' ? from_env : FP4SERVE_BINARY_DIR "/fp4serve";
}

inline CommandResult run_fp4serve(const std::string& args, bool with_stderr = false) {
  const std::string command = "'" + fp4serve_binary() + "' " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed: " + command};
  std::string output;
  char chunk[4096];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof chunk, pipe)) > 0) output.append(chunk, got);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// A fresh temporary directory, removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() / fmt::format("fp4serve_{}_{}_{}", tag, ::getpid(), counter++);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// `fp4serve synth --arch <arch> --preset tiny` into dir/<arch>; returns the checkpoint directory.
inline std::filesystem::path synth_tiny(const TempDir& dir, const std::string& arch = "qwen3-moe") {
  const std::filesystem::path out = dir.path() / arch;
  const CommandResult r =
      run_fp4serve(fmt::format("synth --arch {} --preset tiny --seed 5 --out '{}'", arch, out.string()), true);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return out;
}

// Builds a model from the directory's configs and loads it with the weight loader (native format).
inline std::unique_ptr<Qwen3Model> load_model(const std::filesystem::path& dir, const QuantOptions& options = {}) {
  auto model = std::make_unique<Qwen3Model>(load_model_config(dir), load_quant_config(dir), options);
  WeightLoader(*model).load(dir, SourceFormat::Native);
  return model;
}

// The routing of every token from one forward over `tokens` from position 0 with a fresh KV cache, read through the
// model's observer: [T, num_hidden_layers, num_experts_per_tok], -1 where a layer has no experts.
inline std::vector<int32_t> fresh_routing(Qwen3Model& model, std::span<const int32_t> tokens) {
  const ModelConfig& c = model.config();
  const int64_t T = static_cast<int64_t>(tokens.size()), L = c.num_hidden_layers, k = c.num_experts_per_tok;
  const Shape kv_shape{L, 1, T, c.num_key_value_heads, c.head_dim};
  const KvCacheTensors kv{Tensor::empty(kv_shape, DType::BF16, Device::CPU),
                          Tensor::empty(kv_shape, DType::BF16, Device::CPU)};
  const std::vector<int32_t> pages{0};
  std::vector<int32_t> routing(static_cast<size_t>(T * L * k), -1);
  ForwardObserver observer;
  observer.on_moe_routing = [&](int layer, const Tensor&, const Tensor& ids, const Tensor&) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j) routing[(t * L + layer) * k + j] = ids.data<int32_t>()[t * k + j];
  };
  model.forward({.sequences = {{.token_ids = tokens, .start_position = 0, .page_table = pages}},
                 .kv_cache = &kv,
                 .observer = &observer});
  return routing;
}

}  // namespace fp4serve::testing_support
