// The float64 golden model: qwen3-moe.md's math in plain loops and double precision, with no bf16 rounding,
// reading weights only through the model's export_logical() (checkpoint names; NVFP4 weights dequantized with
// format/nvfp4.h). Deliberately simple and separate from src/model: it shares no code with the forward it checks.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "io/model_config.h"
#include "quant/method.h"
#include "tensor/tensor.h"

namespace fp4serve::testing_support {

struct GoldenOptions {
  // How the inputs of NVFP4 linears are fake-quantized (None: kept exact, the W4A16 math). W4A4 quantizes the
  // activation as stored, so the input is rounded to bf16 first (format/act_quant.h does the rest).
  ActQuant act_quant = ActQuant::None;
  // The served model's own inputs of its NVFP4 linears ([T * K] by checkpoint prefix; experts' gate/up input
  // under "<layer>.mlp.experts"), quantized instead of the golden's. Fake quantization turns a one-ulp bf16
  // difference into a whole e2m1 step now and then, which would swamp everything else; with the served inputs the
  // golden checks the rest of the W4A4 math. Experts' down_proj inputs are not observable and stay the golden's.
  const std::map<std::string, std::vector<float>>* served_linear_inputs = nullptr;
  // Routing replay: the served model's top-k ids per MoE layer ([layer] -> [T * k]). Where the golden top-k set
  // differs from them, the golden follows them if every replayed expert is within tie_margin (in probability) of
  // the golden k-th probability, and counts a mismatch otherwise.
  const std::map<int, std::vector<int32_t>>* replay_ids = nullptr;
  double tie_margin = 2e-2;
};

struct GoldenOutput {
  std::vector<std::vector<double>> layer_outputs;  // [layer] -> residual stream [T * H] after the layer
  std::map<int, std::vector<int32_t>> router_ids;  // [MoE layer] -> the golden's own top-k [T * k], best first
  std::vector<double> logits;                      // [T * V], every position
  int n_replayed = 0;                              // (layer, token) routings taken from the replay (near ties)
  int n_mismatched = 0;                            // (layer, token) routings that differed by more than a near tie
};

// One decoder layer's result (for per-layer checks that feed the served model's own layer input).
struct GoldenLayer {
  std::vector<double> output;       // [T * H]
  std::vector<int32_t> router_ids;  // [T * k], empty for dense layers
  int n_replayed = 0;
  int n_mismatched = 0;
};

class GoldenModel {
 public:
  GoldenModel(const ModelConfig& config, const std::vector<std::pair<std::string, Tensor>>& logical_weights);
  // One sequence from position 0: embed, every layer, logits.
  GoldenOutput forward(std::span<const int32_t> tokens, const GoldenOptions& options = {}) const;
  // The pieces, for sequences at positions 0..T-1: x is a residual stream [T * H].
  std::vector<double> embed(std::span<const int32_t> tokens) const;
  GoldenLayer layer(int l, const std::vector<double>& x, const GoldenOptions& options) const;
  std::vector<double> logits(const std::vector<double>& x) const;

 private:
  struct Linear {
    std::vector<double> weight;  // [out, in]
    int64_t out = 0, in = 0;
    bool quantized = false;
    float input_scale = 1.0f;
  };
  const Linear& linear(const std::string& prefix) const;
  const std::vector<double>& vector(const std::string& name) const;
  // y [rows, out] = x W^T; an NVFP4 layer fake-quantizes its input per `act_quant`, taking `served_x` [rows, in]
  // instead of x when given.
  std::vector<double> apply(const std::string& prefix, const std::vector<double>& x, int64_t rows, ActQuant act_quant,
                            const float* served_x = nullptr) const;
  // The served input under `key` from element `offset` on; null without served inputs.
  const float* served_input(const GoldenOptions& options, const std::string& key, int64_t offset) const;

  ModelConfig config_;
  std::map<std::string, Linear> linears_;               // by checkpoint prefix
  std::map<std::string, std::vector<double>> vectors_;  // norms and the embedding table, by checkpoint name
};

// max |a - b| / rms(b): the error measure the golden tests bound.
double relative_max_error(std::span<const double> ours, std::span<const double> golden);

}  // namespace fp4serve::testing_support
