// fp4serve generate: one request through the engine (on the CPU, or on the GPU with --device cuda), from a prompt
// (encoded with the model directory's tokenizer.json) or token ids. Prints the generated text, or with --json one
// object {"output_ids", "text", "output_token_logprobs" ([logprob, token_id, null] per token, SGLang's shape),
// "finish_reason", "weight_version"}. Logs go to stderr, so stdout holds only the result.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/weight_loader.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "kernels/device.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace fp4serve::tools {

namespace {

struct GenerateFlags {
  std::string model_path, prompt, device = "cpu", act_quant = "static", moe_backend = "cutlass",
      weight_version = "default";
  std::vector<int32_t> input_ids;
  int64_t max_new_tokens = 32;
  SamplingParams sampling;
  bool logprobs = false, json = false, deterministic = false;
  int64_t cuda_graph_max_bs = 256;
  bool disable_cuda_graph = false;
  std::string gpu_sampling = "on";
};

void run_generate(const GenerateFlags& flags) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("generate"));  // stdout carries only the result
  const std::filesystem::path dir = flags.model_path;
  const bool has_tokenizer = std::filesystem::exists(dir / "tokenizer.json");
  FP4_CHECK(has_tokenizer || flags.prompt.empty(), "--prompt needs {}; pass --input-ids instead",
            (dir / "tokenizer.json").string());
  std::optional<Tokenizer> tokenizer;
  if (has_tokenizer) tokenizer = Tokenizer::from_files(dir);

  const QuantOptions quant{.layout = parse_weight_layout(flags.moe_backend),
                           .act_quant = parse_act_quant(flags.act_quant),
                           .device = parse_device(flags.device),
                           .cuda_graph_max_batch = flags.disable_cuda_graph ? 0 : flags.cuda_graph_max_bs,
                           .deterministic = flags.deterministic};
  const ModelConfig config = load_model_config(dir);
  auto model = std::make_unique<Qwen3Model>(config, load_quant_config(dir), quant);
  const auto load_start = std::chrono::steady_clock::now();
  WeightLoader(*model).load(dir, SourceFormat::Native);
  spdlog::info("loaded {} ({}) in {:.2f} s", dir.string(), model->is_nvfp4() ? "NVFP4" : "bf16",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count());

  GenerateRequest request{.input_ids = flags.prompt.empty() ? flags.input_ids : tokenizer->encode(flags.prompt),
                          .sampling = flags.sampling,
                          .max_new_tokens = flags.max_new_tokens};
  std::vector<int32_t> eos = config.eos_token_ids;
  if (tokenizer) eos.insert(eos.end(), tokenizer->stop_ids().begin(), tokenizer->stop_ids().end());
  Engine engine(std::move(model), {.kv_cache_tokens = std::max<int64_t>(
                                       1, static_cast<int64_t>(request.input_ids.size()) + flags.max_new_tokens),
                                   .eos_token_ids = eos,
                                   .weight_version = flags.weight_version,
                                   .gpu_sampling = flags.gpu_sampling == "on"});
  const auto generate_start = std::chrono::steady_clock::now();
  const GenerateResult result = engine.generate({std::move(request)})[0];
  spdlog::info("{} prompt + {} new tokens in {:.2f} s, finish reason {}", result.prompt_tokens,
               result.output_ids.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - generate_start).count(),
               finish_reason_name(result.finish_reason));

  const std::optional<std::string> text =
      tokenizer ? std::optional(tokenizer->decode(result.output_ids, /*skip_special=*/true)) : std::nullopt;
  if (flags.json) {
    nlohmann::ordered_json logprobs = nlohmann::ordered_json::array();
    for (size_t i = 0; i < result.output_ids.size(); ++i)
      logprobs.push_back({result.output_logprobs[i], result.output_ids[i], nullptr});
    nlohmann::ordered_json finish{{"type", finish_reason_name(result.finish_reason)}};
    if (result.matched_stop_token) finish["matched"] = *result.matched_stop_token;
    const nlohmann::ordered_json out{{"output_ids", result.output_ids},
                                     {"text", text ? nlohmann::ordered_json(*text) : nlohmann::ordered_json()},
                                     {"output_token_logprobs", logprobs},
                                     {"finish_reason", finish},
                                     {"weight_version", result.weight_version}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  if (text) std::printf("%s\n", text->c_str());
  if (flags.logprobs || !text)
    for (size_t i = 0; i < result.output_ids.size(); ++i)
      std::printf("%d\t%.6f\n", result.output_ids[i], result.output_logprobs[i]);
}

}  // namespace

void register_generate(CLI::App& app) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate from one prompt (greedy with --temperature 0)");
  cmd->add_option("--model-path", flags->model_path, "HF checkpoint directory (bf16 or ModelOpt NVFP4)")->required();
  auto* prompt = cmd->add_option("--prompt", flags->prompt, "Prompt text (encoded with the model's tokenizer.json)");
  auto* ids = cmd->add_option("--input-ids", flags->input_ids, "Prompt token ids, e.g. 1,2,3")->delimiter(',');
  prompt->excludes(ids);
  ids->excludes(prompt);
  cmd->add_option("--max-new-tokens", flags->max_new_tokens, "Tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", flags->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", flags->sampling.top_p, "Nucleus sampling mass, (0, 1]")->capture_default_str();
  cmd->add_option("--top-k", flags->sampling.top_k, "-1 = all tokens")->capture_default_str();
  cmd->add_option("--min-p", flags->sampling.min_p, "Drop tokens below min_p * max probability")->capture_default_str();
  cmd->add_option("--seed", flags->sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("--logprobs", flags->logprobs, "Also print each token's id and logprob");
  cmd->add_flag("--json", flags->json, "Print one JSON object");
  cmd->add_option("--device", flags->device, "Compute device (cuda: NVFP4 layers need --act-quant none)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  add_cuda_graph_flags(cmd, flags->cuda_graph_max_bs, flags->disable_cuda_graph);
  add_gpu_sampling_flag(cmd, flags->gpu_sampling);
  cmd->add_option("--act-quant", flags->act_quant, "NVFP4 activations: none (W4A16), static, per-token")
      ->check(CLI::IsMember({"none", "static", "per-token"}))
      ->capture_default_str();
  cmd->add_option("--moe-backend", flags->moe_backend, "NVFP4 weight layout: cutlass or trtllm")
      ->check(CLI::IsMember({"cutlass", "trtllm"}))
      ->capture_default_str();
  cmd->add_option("--weight-version", flags->weight_version, "Reported in the result")->capture_default_str();
  cmd->add_flag("--deterministic", flags->deterministic,
                "Batch-invariant kernels, as serve takes them (README: Deterministic inference)");
  cmd->callback([flags] {
    FP4_CHECK(!flags->prompt.empty() || !flags->input_ids.empty(), "generate: pass --prompt TEXT or --input-ids 1,2,3");
    run_generate(*flags);
  });
}

}  // namespace fp4serve::tools
