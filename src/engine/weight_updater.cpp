#include "engine/weight_updater.h"

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "io/quant_config.h"

namespace fp4serve {

void check_same_model(const ModelConfig& served, const ModelConfig& candidate, std::string_view source) {
  auto same = [&](std::string_view field, const auto& a, const auto& b) {
    if (a != b) fail("{}: {} differs from the served model's; a reload must keep the model's architecture", source, field);
  };
  same("architectures", served.architecture, candidate.architecture);
  same("hidden_size", served.hidden_size, candidate.hidden_size);
  same("num_hidden_layers", served.num_hidden_layers, candidate.num_hidden_layers);
  same("num_attention_heads", served.num_attention_heads, candidate.num_attention_heads);
  same("num_key_value_heads", served.num_key_value_heads, candidate.num_key_value_heads);
  same("head_dim", served.head_dim, candidate.head_dim);
  same("intermediate_size", served.intermediate_size, candidate.intermediate_size);
  same("moe_intermediate_size", served.moe_intermediate_size, candidate.moe_intermediate_size);
  same("num_experts", served.num_experts, candidate.num_experts);
  same("num_experts_per_tok", served.num_experts_per_tok, candidate.num_experts_per_tok);
  same("norm_topk_prob", served.norm_topk_prob, candidate.norm_topk_prob);
  same("decoder_sparse_step", served.decoder_sparse_step, candidate.decoder_sparse_step);
  same("mlp_only_layers", served.mlp_only_layers, candidate.mlp_only_layers);
  same("vocab_size", served.vocab_size, candidate.vocab_size);
  same("rms_norm_eps", served.rms_norm_eps, candidate.rms_norm_eps);
  same("rope_theta", served.rope_theta, candidate.rope_theta);
  same("tie_word_embeddings", served.tie_word_embeddings, candidate.tie_word_embeddings);
}

WeightUpdater::WeightUpdater(LoadableModel& model, ModelConfig served_config, LoadOptions options)
    : model_(model), served_config_(std::move(served_config)), loader_(model, std::move(options)) {}

LoadResult WeightUpdater::load(const std::filesystem::path& dir) {
  check_same_model(served_config_, load_model_config(dir), (dir / "config.json").string());
  QuantConfig quant = load_quant_config(dir);
  SourceFormat format = SourceFormat::Native;
  if (quant.algo == QuantAlgo::Nvfp4) {
    FP4_CHECK(model_.is_nvfp4(), "{}: the checkpoint is NVFP4 but the served model is bf16; restart the server on an "
              "NVFP4 checkpoint to serve NVFP4 weights", dir.string());
  } else if (model_.is_nvfp4()) {
    format = SourceFormat::Bf16Online;
  }
  bool first = loader_.state() == WeightLoader::State::Empty;
  LoadResult result = loader_.load(dir, format);
  if (!first) ++reloads_;
  spdlog::info("{} {} ({}{} tensors, {:.1f} MB) in {:.3f} s: validate {:.3f} s, write {:.3f} s, post-process {:.3f} s; "
               "peak staging {:.1f} MB",
               first ? "loaded" : "reloaded", dir.string(),
               format == SourceFormat::Bf16Online ? "bf16 quantized on load, " : "", result.tensors,
               result.bytes / 1e6, result.validate_seconds + result.commit_seconds + result.post_process_seconds,
               result.validate_seconds, result.commit_seconds, result.post_process_seconds,
               result.peak_staging_bytes / 1e6);
  return result;
}

}  // namespace fp4serve
