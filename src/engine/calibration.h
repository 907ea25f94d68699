// Activation calibration for `fp4serve quantize --calib-prompts`: runs the bf16 model over prompts and records
// amax |x| over every input of each linear, by checkpoint prefix ("model.layers.0.self_attn.q_proj"), which the
// quantizer turns into input_scale = amax / (6 * 448). Invariants: every linear of the model gets an entry (shards
// of a fused linear share the same input, so the same amax); the experts of an MoE layer all see the layer's input,
// so their gate/up entries are the amax over that whole input (serving takes the max over experts anyway), while
// each down_proj entry is the amax of that expert's own intermediate activations silu(gate) * up over the tokens
// routed to it; an expert no calibration token reached takes the largest down_proj amax of its layer.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fp4serve {

// model_dir: a bf16 HF checkpoint; prompts: token ids, each run as one sequence from position 0.
std::map<std::string, float> calibrate_input_amax(const std::filesystem::path& model_dir,
                                                  const std::vector<std::vector<int32_t>>& prompts);

}  // namespace fp4serve
