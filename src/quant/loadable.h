// What the weight loader needs from a model: its parameters, the bindings that say where every checkpoint tensor
// goes, and the post-processing step. The model implements it (src/model), the loader uses it (src/engine).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "quant/method.h"
#include "tensor/parameter.h"

namespace fp4serve {

class LoadableModel {
 public:
  virtual ~LoadableModel() = default;
  virtual ParameterSet& params() = 0;
  virtual std::vector<CheckpointBinding> checkpoint_bindings() const = 0;  // raw checkpoint of the model's format
  virtual std::vector<OnlineQuantGroup> online_quant_groups() const = 0;   // bf16 checkpoint into an NVFP4 model
  virtual bool is_nvfp4() const = 0;  // the model serves NVFP4 weights
  // The loader calls mark_raw_weights_loaded() after writing raw bytes; process_weights_after_loading() must then
  // run exactly once (it throws when called without a fresh load).
  virtual void mark_raw_weights_loaded() = 0;
  virtual void process_weights_after_loading() = 0;
  // The weights as the checkpoint holds them (derived layouts inverted): checkpoint name -> host tensor.
  virtual std::vector<std::pair<std::string, Tensor>> export_logical() const = 0;
};

}  // namespace fp4serve
