// fp4serve synth: writes a random-weight HF checkpoint (Qwen3-MoE or Qwen3 dense) with config, tokenizer and
// generation config, in bf16 or (--format nvfp4) directly in ModelOpt NVFP4. Streaming by design: tensors are
// declared first, then generated one at a time (NVFP4: one fused group at a time) into a buffer the size of the
// largest tensor (the 622 MB embedding for qwen3-30b-a3b), whatever the model's total size. Every bf16 element is a
// pure function of (seed, tensor name, element index): output is byte-identical across runs, thread counts and
// tensor orders. The NVFP4 checkpoint is `fp4serve quantize` of the bf16 one, byte for byte: the same code
// (write_quantized_checkpoint) quantizes the same values as they are generated, without the 61 GB bf16 detour.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numbers>
#include <vector>

#include "common/error.h"
#include "format/bf16.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/model_config.h"
#include "quant/quantize_checkpoint.h"
#include "tools/commands.h"

namespace fp4serve::tools {

namespace {

constexpr uint64_t kMaxShardBytes = 4'000'000'000;  // HF's "4GB" shards
constexpr float kWeightStd = 0.02f;
// The synthetic tokenizer: 256 byte tokens, then these specials. eos is <|im_end|> (chat turns end there, as in
// Qwen3's instruct models); generation also stops at <|endoftext|>.
constexpr int kEndOfText = 256, kImStart = 257, kImEnd = 258, kSyntheticVocab = 259;

struct SynthOptions {
  std::string arch = "qwen3-moe";
  std::string preset;
  int layers = 0;  // 0: the preset's
  uint64_t seed = 0;
  std::string format = "bf16";
  std::string out;
};

ModelConfig preset_config(const SynthOptions& options) {
  ModelConfig c;
  c.architecture = options.arch == "qwen3" ? Architecture::Qwen3 : Architecture::Qwen3Moe;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.norm_topk_prob = true;
  c.tie_word_embeddings = false;
  c.bos_token_ids = {kEndOfText};
  c.eos_token_ids = {kImEnd};
  if (options.preset == "tiny") {
    c.hidden_size = 128, c.num_hidden_layers = 4, c.num_attention_heads = 4, c.num_key_value_heads = 2;
    c.head_dim = 32, c.intermediate_size = 256, c.num_experts = 8, c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 64, c.vocab_size = kSyntheticVocab, c.max_position_embeddings = 4096;
  } else if (options.preset == "small") {
    c.hidden_size = 512, c.num_hidden_layers = 8, c.num_attention_heads = 8, c.num_key_value_heads = 4;
    c.head_dim = 64, c.intermediate_size = 1024, c.num_experts = 32, c.num_experts_per_tok = 4;
    c.moe_intermediate_size = 256, c.vocab_size = kSyntheticVocab, c.max_position_embeddings = 4096;
  } else {  // qwen3-30b-a3b: the published sizes
    c.hidden_size = 2048, c.num_hidden_layers = 48, c.num_attention_heads = 32, c.num_key_value_heads = 4;
    c.head_dim = 128, c.intermediate_size = 6144, c.num_experts = 128, c.num_experts_per_tok = 8;
    c.moe_intermediate_size = 768, c.vocab_size = 151936, c.max_position_embeddings = 40960;
  }
  if (c.architecture == Architecture::Qwen3) c.num_experts = c.num_experts_per_tok = c.moe_intermediate_size = 0;
  if (options.layers > 0) c.num_hidden_layers = options.layers;
  return c;
}

// HF tensor names and shapes, in the order they are written.
std::vector<TensorDecl> model_tensors(const ModelConfig& c) {
  const int64_t H = c.hidden_size, D = c.head_dim, V = c.vocab_size;
  const int64_t q_size = c.num_attention_heads * D, kv_size = c.num_key_value_heads * D;
  std::vector<TensorDecl> tensors = {{"model.embed_tokens.weight", DType::BF16, {V, H}}};
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    tensors.push_back({std::move(name), DType::BF16, std::move(shape)});
  };
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    add(p + "input_layernorm.weight", {H});
    add(p + "self_attn.q_proj.weight", {q_size, H});
    add(p + "self_attn.k_proj.weight", {kv_size, H});
    add(p + "self_attn.v_proj.weight", {kv_size, H});
    add(p + "self_attn.o_proj.weight", {H, q_size});
    add(p + "self_attn.q_norm.weight", {D});
    add(p + "self_attn.k_norm.weight", {D});
    add(p + "post_attention_layernorm.weight", {H});
    if (c.is_moe_layer(layer)) {
      const int64_t I = c.moe_intermediate_size;
      add(p + "mlp.gate.weight", {c.num_experts, H});
      for (int e = 0; e < c.num_experts; ++e) {
        const std::string x = fmt::format("{}mlp.experts.{}.", p, e);
        add(x + "gate_proj.weight", {I, H});
        add(x + "up_proj.weight", {I, H});
        add(x + "down_proj.weight", {H, I});
      }
    } else {
      const int64_t I = c.intermediate_size;
      add(p + "mlp.gate_proj.weight", {I, H});
      add(p + "mlp.up_proj.weight", {I, H});
      add(p + "mlp.down_proj.weight", {H, I});
    }
  }
  add("model.norm.weight", {H});
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, H});
  return tensors;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : text) h = (h ^ static_cast<uint8_t>(ch)) * 0x100000001b3ull;
  return h;
}

void store_bf16(std::span<uint8_t> out, size_t index, float value) {
  const bf16_bits bits = float_to_bf16(value);
  std::memcpy(out.data() + 2 * index, &bits, 2);
}

// bf16(0.02 * x) for the standard normal quantile x at (u + 0.5) / 65536 of each 16-bit u: a 16-bit uniform
// indexes a normal sample, rounded to bf16 as every stored weight is anyway. Tails cut at 4.3 sigma.
const std::vector<bf16_bits>& normal_bf16_by_uniform16() {
  static const std::vector<bf16_bits> table = [] {
    constexpr int kSize = 1 << 16;
    std::vector<bf16_bits> values(kSize);
    for (int u = 0; u < kSize / 2; ++u) {
      // Bisection on the CDF 0.5 * erfc(-x / sqrt 2), below the median; the upper half mirrors it.
      const double p = (u + 0.5) / kSize;
      double low = -10.0, high = 0.0;
      for (int step = 0; step < 48; ++step) {
        const double mid = 0.5 * (low + high);
        (0.5 * std::erfc(-mid / std::numbers::sqrt2) < p ? low : high) = mid;
      }
      const float weight = static_cast<float>(kWeightStd * 0.5 * (low + high));
      values[u] = float_to_bf16(weight);
      values[kSize - 1 - u] = float_to_bf16(-weight);
    }
    return values;
  }();
  return table;
}

// Norm weights are 1.0; everything else N(0, 0.02): element i is the normal sample of 16-bit field i % 4 of the
// hash of (key, i / 4), where key mixes the seed with the tensor name. A lookup rather than Box-Muller's log and
// cos, because `synth --format nvfp4` must generate 30 billion of them quickly.
void fill_tensor(const TensorDecl& tensor, uint64_t seed, std::span<uint8_t> out) {
  const size_t n = out.size() / 2;
  if (tensor.name.ends_with("norm.weight")) {
    for (size_t i = 0; i < n; ++i) store_bf16(out, i, 1.0f);
    return;
  }
  const std::vector<bf16_bits>& normal = normal_bf16_by_uniform16();
  const uint64_t key = splitmix64(seed ^ splitmix64(fnv1a64(tensor.name)));
  const int64_t quads = static_cast<int64_t>((n + 3) / 4);
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < quads; ++j) {
    const uint64_t bits = splitmix64(key + static_cast<uint64_t>(j));
    bf16_bits values[4];
    for (int k = 0; k < 4; ++k) values[k] = normal[(bits >> (16 * k)) & 0xffff];
    const size_t first = 4 * static_cast<size_t>(j);
    std::memcpy(out.data() + 2 * first, values, 2 * std::min<size_t>(4, n - first));
  }
}

// GPT-2's bytes_to_unicode: printable bytes keep their code point, the others map to 256, 257, ... in byte order.
std::string byte_token(int byte) {
  auto printable = [](int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); };
  int code_point = byte;
  if (!printable(byte)) {
    code_point = 256;
    for (int b = 0; b < byte; ++b) code_point += printable(b) ? 0 : 1;
  }
  std::string utf8;  // code points here are < 0x800: one or two UTF-8 bytes
  if (code_point < 0x80) {
    utf8 += static_cast<char>(code_point);
  } else {
    utf8 += static_cast<char>(0xC0 | (code_point >> 6));
    utf8 += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return utf8;
}

nlohmann::ordered_json tokenizer_json() {
  using ojson = nlohmann::ordered_json;
  ojson added = ojson::array();
  for (auto [id, content] :
       {std::pair{kEndOfText, "<|endoftext|>"}, {kImStart, "<|im_start|>"}, {kImEnd, "<|im_end|>"}})
    added.push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  ojson vocab = ojson::object();
  for (int b = 0; b < 256; ++b) vocab[byte_token(b)] = b;
  auto byte_level = [](bool add_prefix_space) {
    return ojson{{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true},
                 {"use_regex", true}};
  };
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level(false)},
          {"post_processor", nullptr},
          {"decoder", byte_level(true)},
          {"model",
           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
            {"vocab", vocab}, {"merges", ojson::array()}}}};
}

// ChatML, as Qwen's templates render plain conversations.
constexpr std::string_view kChatTemplate =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

void write_tokenizer_and_generation_config(const std::filesystem::path& out, const ModelConfig& config) {
  write_json_file(out / "generation_config.json",
                  nlohmann::ordered_json{{"bos_token_id", kEndOfText},
                                         {"eos_token_id", {kImEnd, kEndOfText}},
                                         {"pad_token_id", kEndOfText},
                                         {"do_sample", true},
                                         {"temperature", 0.6},
                                         {"top_k", 20},
                                         {"top_p", 0.95}});
  write_json_file(out / "tokenizer.json", tokenizer_json());
  write_json_file(out / "tokenizer_config.json",
                  nlohmann::ordered_json{{"bos_token", nullptr},
                                         {"eos_token", "<|im_end|>"},
                                         {"pad_token", "<|endoftext|>"},
                                         {"chat_template", kChatTemplate},
                                         {"model_max_length", config.max_position_embeddings}});
}

void run_synth(const SynthOptions& options) {
  const ModelConfig config = preset_config(options);
  const std::filesystem::path out = options.out;
  const std::vector<TensorDecl> tensors = model_tensors(config);
  uint64_t total_bytes = 0;
  for (const TensorDecl& t : tensors) total_bytes += t.nbytes();
  spdlog::info("synth: {} {} ({} layers): {} tensors, {:.2f} GB bf16 -> {} {}",
               architecture_name(config.architecture), options.preset, config.num_hidden_layers, tensors.size(),
               static_cast<double>(total_bytes) / 1e9, options.format, out.string());
  auto fill = [&options](const TensorDecl& tensor, std::span<uint8_t> bytes) {
    fill_tensor(tensor, options.seed, bytes);
  };
  if (options.format == "nvfp4") {
    write_quantized_checkpoint({.source = "synth", .tensors = tensors, .read = fill, .model_config = to_json(config)},
                               {.output_dir = out, .max_shard_bytes = kMaxShardBytes});
    write_tokenizer_and_generation_config(out, config);
    return;
  }
  CheckpointWriter writer(out, kMaxShardBytes);  // creates `out`, refuses an existing checkpoint
  for (const TensorDecl& t : tensors) writer.add(t);
  write_json_file(out / "config.json", to_json(config));
  write_tokenizer_and_generation_config(out, config);
  // Weights last: the index, written at the very end, marks the checkpoint complete.
  writer.write(fill);
}

}  // namespace

void register_synth(CLI::App& app) {
  auto options = std::make_shared<SynthOptions>();
  CLI::App* cmd =
      app.add_subcommand("synth", "Write a random-weight HF checkpoint, bf16 or NVFP4 (config, tokenizer, shards)");
  cmd->add_option("--arch", options->arch, "Architecture")
      ->check(CLI::IsMember({"qwen3-moe", "qwen3"}))
      ->capture_default_str();
  cmd->add_option("--preset", options->preset, "Model sizes")
      ->check(CLI::IsMember({"tiny", "small", "qwen3-30b-a3b"}))
      ->required();
  cmd->add_option("--layers", options->layers, "Override the preset's number of layers")->check(CLI::PositiveNumber);
  cmd->add_option("--format", options->format,
                  "bf16, or nvfp4: the checkpoint `fp4serve quantize` makes of the bf16 one, written directly")
      ->check(CLI::IsMember({"bf16", "nvfp4"}))
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "Random seed (same seed, same bytes)")->capture_default_str();
  cmd->add_option("--out", options->out, "Output directory (created; must not hold a checkpoint)")->required();
  cmd->callback([options] { run_synth(*options); });
}

}  // namespace fp4serve::tools
