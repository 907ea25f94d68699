// Loading and reloading a served model from checkpoint directories (`update_weights_from_disk`) and updating it
// from tensors a trainer holds (`update_weights_from_tensor`). Before the transactional loader runs, a new
// directory must describe the same model: the same architecture and every size and hyperparameter that the served
// math depends on. Its format decides how it is loaded: the model's own format as is, or a bf16 checkpoint into an
// NVFP4 model quantized on the fly. Not thread-safe (engine thread).
#pragma once
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

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

  // Updates the tensors given (any subset of the checkpoint's names; the others keep their values), named `source`
  // in errors. Each is in the model's format, or, for the weight of an NVFP4-quantized module, bf16: quantized
  // online, the bf16 weights of one fused group (q/k/v, an expert's gate/up) given in the same call sharing one
  // weight_scale_2 as a bf16 checkpoint load does (all of a group: the same bytes as that load). A module given in
  // NVFP4 comes with all of its quantization tensors. Everything is checked before anything is written (the
  // loader's rules). Because post-processing rewrites some raw parameters in place (swizzled block scales, reordered
  // rows), the call exports the served weights (host memory: the checkpoint's size), overlays the tensors given
  // and loads the whole set: its cost is a full load's from memory, whatever the number of tensors given.
  // `replace_all`: the served bytes are not to be kept (discarded at a memory release): every tensor must be given.
  LoadResult update(std::span<const NamedTensor> tensors, std::string_view source, bool replace_all = false);

  WeightLoader::State state() const { return loader_.state(); }
  std::string current_source() const { return loader_.current_source(); }
  int reloads() const { return reloads_; }

 private:
  void log_load(std::string_view what, const LoadResult& result) const;

  LoadableModel& model_;
  ModelConfig served_config_;
  WeightLoader loader_;
  int reloads_ = 0;
};

}  // namespace fp4serve
