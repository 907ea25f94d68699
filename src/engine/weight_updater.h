// Loading and reloading a served model from checkpoint directories (`update_weights_from_disk`). Before the
// transactional loader runs, the new directory must describe the same model: the same architecture and every
// size and hyperparameter that the served math depends on. Its format decides how it is loaded: the model's own
// format as is, or a bf16 checkpoint into an NVFP4 model quantized on the fly. Not thread-safe (engine thread).
#pragma once
#include <filesystem>
#include <string>

#include "engine/weight_loader.h"
#include "io/model_config.h"

namespace fp4serve {

// Throws naming `source` and the first field that differs.
void check_same_model(const ModelConfig& served, const ModelConfig& candidate, std::string_view source);

class WeightUpdater {
 public:
  WeightUpdater(LoadableModel& model, ModelConfig served_config, LoadOptions options = {});

  // First load and every reload. Throws Error (file, tensor, reason) on failure; the loader's state() then says
  // whether the previous weights still serve (Loaded) or nothing valid does (Inconsistent).
  LoadResult load(const std::filesystem::path& dir);

  WeightLoader::State state() const { return loader_.state(); }
  std::string current_source() const { return loader_.current_source(); }
  int reloads() const { return reloads_; }

 private:
  LoadableModel& model_;
  ModelConfig served_config_;
  WeightLoader loader_;
  int reloads_ = 0;
};

}  // namespace fp4serve
