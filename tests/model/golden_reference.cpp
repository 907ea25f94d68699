#include "golden_reference.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "common/error.h"
#include "format/act_quant.h"
#include "format/bf16.h"
#include "format/nvfp4.h"

namespace fp4serve::testing_support {

namespace {

std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    out[i] = t.dtype == DType::BF16 ? bf16_to_float(t.data<bf16_bits>()[i]) : t.data<float>()[i];
  return out;
}

std::vector<double> rmsnorm(const std::vector<double>& x, int64_t dim, const std::vector<double>& w, double eps) {
  std::vector<double> out(x.size());
  for (size_t r = 0; r < x.size() / dim; ++r) {
    double sum_squares = 0;
    for (int64_t i = 0; i < dim; ++i) sum_squares += x[r * dim + i] * x[r * dim + i];
    const double inv_rms = 1.0 / std::sqrt(sum_squares / dim + eps);
    for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = x[r * dim + i] * inv_rms * w[i];
  }
  return out;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

}  // namespace

GoldenModel::GoldenModel(const ModelConfig& config, const std::vector<std::pair<std::string, Tensor>>& weights)
    : config_(config) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, tensor] : weights) by_name[name] = &tensor;
  for (const auto& [name, tensor] : by_name) {
    const std::string suffix = ".weight";
    if (!name.ends_with(suffix)) continue;
    const std::string prefix = name.substr(0, name.size() - suffix.size());
    if (tensor->shape.size() == 1 || prefix == "model.embed_tokens") {
      vectors_[name] = to_doubles(*tensor);
      if (prefix != "model.embed_tokens") continue;
    }
    Linear linear;
    linear.out = tensor->shape[0];
    if (tensor->dtype == DType::BF16) {
      linear.in = tensor->shape[1];
      linear.weight = to_doubles(*tensor);
    } else {  // NVFP4: packed [out, in/2], weight_scale [out, in/16], weight_scale_2 [], input_scale []
      linear.in = tensor->shape[1] * 2;
      linear.quantized = true;
      std::vector<float> dequantized(static_cast<size_t>(linear.out * linear.in));
      nvfp4_dequantize(tensor->data<uint8_t>(), by_name.at(prefix + ".weight_scale")->data<uint8_t>(),
                       by_name.at(prefix + ".weight_scale_2")->data<float>()[0], linear.out, linear.in,
                       dequantized.data());
      linear.weight.assign(dequantized.begin(), dequantized.end());
      linear.input_scale = by_name.at(prefix + ".input_scale")->data<float>()[0];
    }
    linears_[prefix] = std::move(linear);
  }
}

const GoldenModel::Linear& GoldenModel::linear(const std::string& prefix) const {
  const auto it = linears_.find(prefix);
  FP4_CHECK(it != linears_.end(), "golden model: no exported weight for linear '{}'", prefix);
  return it->second;
}

const std::vector<double>& GoldenModel::vector(const std::string& name) const {
  const auto it = vectors_.find(name);
  FP4_CHECK(it != vectors_.end(), "golden model: no exported tensor '{}'", name);
  return it->second;
}

const float* GoldenModel::served_input(const GoldenOptions& options, const std::string& key, int64_t offset) const {
  if (!options.served_linear_inputs) return nullptr;
  const auto it = options.served_linear_inputs->find(key);
  FP4_CHECK(it != options.served_linear_inputs->end() && offset < static_cast<int64_t>(it->second.size()),
            "golden model: no served input for '{}' at element {}", key, offset);
  return it->second.data() + offset;
}

std::vector<double> GoldenModel::apply(const std::string& prefix, const std::vector<double>& x, int64_t rows,
                                       ActQuant act_quant, const float* served_x) const {
  const Linear& w = linear(prefix);
  std::vector<double> input = x;
  if (w.quantized && act_quant != ActQuant::None) {
    std::vector<float> as_float(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      as_float[i] = served_x ? served_x[i] : round_to_bf16(static_cast<float>(x[i]));
    if (act_quant == ActQuant::Static)
      fake_quantize_activations_static(as_float.data(), rows, w.in, w.input_scale, as_float.data());
    else
      fake_quantize_activations_per_token(as_float.data(), rows, w.in, as_float.data());
    input.assign(as_float.begin(), as_float.end());
  }
  std::vector<double> y(static_cast<size_t>(rows * w.out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < w.out; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < w.in; ++k) acc += input[r * w.in + k] * w.weight[n * w.in + k];
      y[r * w.out + n] = acc;
    }
  return y;
}

std::vector<double> GoldenModel::embed(std::span<const int32_t> tokens) const {
  const int64_t H = config_.hidden_size;
  const std::vector<double>& table = vector("model.embed_tokens.weight");
  std::vector<double> x(tokens.size() * static_cast<size_t>(H));
  for (size_t t = 0; t < tokens.size(); ++t) std::copy_n(table.begin() + tokens[t] * H, H, x.begin() + t * H);
  return x;
}

GoldenLayer GoldenModel::layer(int l, const std::vector<double>& x_in, const GoldenOptions& options) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, D = c.head_dim, T = static_cast<int64_t>(x_in.size()) / H;
  const int64_t n_heads = c.num_attention_heads, n_kv = c.num_key_value_heads;
  const double eps = c.rms_norm_eps;
  const std::string p = fmt::format("model.layers.{}", l);
  GoldenLayer out;
  std::vector<double> x = x_in;

  // Attention.
  const std::vector<double> h = rmsnorm(x, H, vector(p + ".input_layernorm.weight"), eps);
  auto project = [&](const std::string& name, const std::vector<double>& input) {
    return apply(p + name, input, T, options.act_quant, served_input(options, p + name, 0));
  };
  std::vector<double> q = project(".self_attn.q_proj", h);
  std::vector<double> k = project(".self_attn.k_proj", h);
  const std::vector<double> v = project(".self_attn.v_proj", h);
  q = rmsnorm(q, D, vector(p + ".self_attn.q_norm.weight"), eps);
  k = rmsnorm(k, D, vector(p + ".self_attn.k_norm.weight"), eps);
  for (std::vector<double>* heads : {&q, &k}) {
    const int64_t n = static_cast<int64_t>(heads->size()) / (T * D);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t hd = 0; hd < n; ++hd)
        for (int64_t i = 0; i < D / 2; ++i) {
          const double angle = t * std::pow(c.rope_theta, -2.0 * i / D);
          double& x1 = (*heads)[(t * n + hd) * D + i];
          double& x2 = (*heads)[(t * n + hd) * D + i + D / 2];
          const double a = x1, b = x2;
          x1 = a * std::cos(angle) - b * std::sin(angle);
          x2 = b * std::cos(angle) + a * std::sin(angle);
        }
  }
  std::vector<double> attn(static_cast<size_t>(T * n_heads * D), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hd = 0; hd < n_heads; ++hd) {
      const int64_t kvh = hd / (n_heads / n_kv);
      std::vector<double> w(static_cast<size_t>(t + 1));
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += q[(t * n_heads + hd) * D + d] * k[(j * n_kv + kvh) * D + d];
        w[j] = dot / std::sqrt(double(D));
      }
      const double max = *std::max_element(w.begin(), w.end());
      double sum = 0;
      for (double& s : w) sum += s = std::exp(s - max);
      for (int64_t j = 0; j <= t; ++j)
        for (int64_t d = 0; d < D; ++d) attn[(t * n_heads + hd) * D + d] += w[j] / sum * v[(j * n_kv + kvh) * D + d];
    }
  const std::vector<double> o = project(".self_attn.o_proj", attn);
  for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

  // MLP.
  const std::vector<double> h2 = rmsnorm(x, H, vector(p + ".post_attention_layernorm.weight"), eps);
  auto mlp = [&](const std::string& prefix, const std::vector<double>& row, const float* served_row,
                 const float* served_activated) {
    const std::vector<double> g = apply(prefix + ".gate_proj", row, 1, options.act_quant, served_row);
    const std::vector<double> u = apply(prefix + ".up_proj", row, 1, options.act_quant, served_row);
    std::vector<double> a(g.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] = silu(g[i]) * u[i];
    return apply(prefix + ".down_proj", a, 1, options.act_quant, served_activated);
  };
  std::vector<double> y(static_cast<size_t>(T * H), 0.0);
  if (c.is_moe_layer(l)) {
    const int64_t E = c.num_experts, top_k = c.num_experts_per_tok;
    const std::vector<double> router_logits = apply(p + ".mlp.gate", h2, T, ActQuant::None);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> prob(router_logits.begin() + t * E, router_logits.begin() + (t + 1) * E);
      const double max = *std::max_element(prob.begin(), prob.end());
      double sum = 0;
      for (double& s : prob) sum += s = std::exp(s - max);
      for (double& s : prob) s /= sum;
      std::vector<int32_t> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return prob[a] > prob[b]; });
      std::vector<int32_t> chosen(order.begin(), order.begin() + top_k);
      out.router_ids.insert(out.router_ids.end(), chosen.begin(), chosen.end());
      if (options.replay_ids) {
        const std::vector<int32_t>& replay = options.replay_ids->at(l);
        const std::vector<int32_t> theirs(replay.begin() + t * top_k, replay.begin() + (t + 1) * top_k);
        if (std::set<int32_t>(theirs.begin(), theirs.end()) != std::set<int32_t>(chosen.begin(), chosen.end())) {
          const double kth = prob[chosen.back()];
          const bool near_tie =
              std::all_of(theirs.begin(), theirs.end(), [&](int32_t e) { return prob[e] >= kth - options.tie_margin; });
          ++(near_tie ? out.n_replayed : out.n_mismatched);
          chosen = theirs;
        }
      }
      double chosen_sum = 0;
      for (int32_t e : chosen) chosen_sum += prob[e];
      const std::vector<double> row(h2.begin() + t * H, h2.begin() + (t + 1) * H);
      for (int32_t e : chosen) {
        const double weight = c.norm_topk_prob ? prob[e] / chosen_sum : prob[e];
        const std::vector<double> d =
            mlp(fmt::format("{}.mlp.experts.{}", p, e), row, served_input(options, p + ".mlp.experts", t * H), nullptr);
        for (int64_t i = 0; i < H; ++i) y[t * H + i] += weight * d[i];
      }
    }
  } else {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t I = c.intermediate_size;
      const std::vector<double> d =
          mlp(p + ".mlp", {h2.begin() + t * H, h2.begin() + (t + 1) * H},
              served_input(options, p + ".mlp.gate_proj", t * H), served_input(options, p + ".mlp.down_proj", t * I));
      std::copy(d.begin(), d.end(), y.begin() + t * H);
    }
  }
  for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  out.output = std::move(x);
  return out;
}

std::vector<double> GoldenModel::logits(const std::vector<double>& x) const {
  const int64_t H = config_.hidden_size, T = static_cast<int64_t>(x.size()) / H;
  const std::vector<double> final_hidden = rmsnorm(x, H, vector("model.norm.weight"), config_.rms_norm_eps);
  return apply(config_.tie_word_embeddings ? "model.embed_tokens" : "lm_head", final_hidden, T, ActQuant::None);
}

GoldenOutput GoldenModel::forward(std::span<const int32_t> tokens, const GoldenOptions& options) const {
  GoldenOutput out;
  std::vector<double> x = embed(tokens);
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    GoldenLayer result = layer(l, x, options);
    if (!result.router_ids.empty()) out.router_ids[l] = std::move(result.router_ids);
    out.n_replayed += result.n_replayed;
    out.n_mismatched += result.n_mismatched;
    x = result.output;
    out.layer_outputs.push_back(std::move(result.output));
  }
  out.logits = logits(x);
  return out;
}

double relative_max_error(std::span<const double> ours, std::span<const double> golden) {
  FP4_CHECK(ours.size() == golden.size(), "relative_max_error: sizes {} and {} differ", ours.size(), golden.size());
  double max_diff = 0, sum_squares = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(ours[i] - golden[i]));
    sum_squares += golden[i] * golden[i];
  }
  return max_diff / std::sqrt(sum_squares / static_cast<double>(golden.size()));
}

}  // namespace fp4serve::testing_support
