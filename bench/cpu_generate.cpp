// Generation throughput through the engine: for each model directory (bf16 or ModelOpt NVFP4), device and activation
// mode, one batch of identical-length random prompts is prefilled in one step, then decoded step by step; prints
// prefill and decode tokens/s and the OpenMP thread count as a table. The prefix cache is off so every prompt
// token is computed. --device cuda runs the GPU forward (NVFP4 layers only as W4A16: act none) with decode steps
// replaying CUDA graphs; cuda-eager runs it without graphs. --deterministic on runs the batch-invariant kernels
// (QuantOptions::deterministic), off,on measures both. --gpu-sampling on (the default) samples on the GPU with a
// cuda device, off copies every logits row to the host sampler (EngineOptions::gpu_sampling); on,off compares them.
// Requests are greedy unless --temperature is given (then seeded, with --top-p).
//   bench_cpu_generate [--device cpu,cuda,cuda-eager] [--batch N] [--prompt-tokens N] [--new-tokens N]
//                      [--act-quant none,per-token,...] [--deterministic off,on] [--gpu-sampling on,off]
//                      [--temperature T] [--top-p P] DIR...
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/weight_loader.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "kernels/device.h"

namespace fp4serve {
namespace {

struct BenchOptions {
  int64_t batch = 4, prompt_tokens = 128, new_tokens = 32;
  std::vector<std::string> act_quant{"none"};
  std::vector<std::string> devices{"cpu"};
  std::vector<std::string> deterministic{"off"};
  std::vector<std::string> gpu_sampling{"on"};
  SamplingParams sampling{.temperature = 0.0f, .seed = 1};
  std::vector<std::string> model_dirs;
};

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> items;
  std::stringstream stream(list);
  for (std::string item; std::getline(stream, item, ',');) items.push_back(item);
  return items;
}

BenchOptions parse(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&] {
      FP4_CHECK(i + 1 < argc, "{} needs a value", arg);
      return std::string(argv[++i]);
    };
    if (arg == "--batch") {
      options.batch = std::stoll(value());
    } else if (arg == "--prompt-tokens") {
      options.prompt_tokens = std::stoll(value());
    } else if (arg == "--new-tokens") {
      options.new_tokens = std::stoll(value());
    } else if (arg == "--act-quant") {
      options.act_quant = split(value());
    } else if (arg == "--device") {
      options.devices = split(value());
    } else if (arg == "--deterministic") {
      options.deterministic = split(value());
      for (const std::string& mode : options.deterministic)
        FP4_CHECK(mode == "off" || mode == "on", "--deterministic takes off, on or off,on; got '{}'", mode);
    } else if (arg == "--gpu-sampling") {
      options.gpu_sampling = split(value());
      for (const std::string& mode : options.gpu_sampling)
        FP4_CHECK(mode == "off" || mode == "on", "--gpu-sampling takes on, off or on,off; got '{}'", mode);
    } else if (arg == "--temperature") {
      options.sampling.temperature = std::stof(value());
    } else if (arg == "--top-p") {
      options.sampling.top_p = std::stof(value());
    } else {
      options.model_dirs.push_back(arg);
    }
  }
  FP4_CHECK(!options.model_dirs.empty(),
            "usage: bench_cpu_generate [--device cpu,cuda,cuda-eager] [--batch N] [--prompt-tokens N] "
            "[--new-tokens N] [--act-quant none,static,per-token] [--deterministic off,on] [--gpu-sampling on,off] "
            "[--temperature T] [--top-p P] MODEL_DIR...");
  options.sampling.validate("bench_cpu_generate");
  return options;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void bench_one(const BenchOptions& options, const std::string& dir, const std::string& device,
               const std::string& act_quant, const std::string& deterministic, const std::string& gpu_sampling) {
  if (device == "cpu" && gpu_sampling != options.gpu_sampling.front()) return;  // the CPU samples on the host
  const ModelConfig config = load_model_config(dir);
  const QuantConfig quant = load_quant_config(dir);
  if (quant.algo == QuantAlgo::None && act_quant != options.act_quant.front()) return;  // bf16: modes do not apply
  const bool eager = device == "cuda-eager";
  auto model = std::make_unique<Qwen3Model>(config, quant,
                                            QuantOptions{.act_quant = parse_act_quant(act_quant),
                                                         .device = parse_device(eager ? "cuda" : device),
                                                         .cuda_graph_max_batch = eager ? 0 : options.batch,
                                                         .deterministic = deterministic == "on"});
  WeightLoader(*model).load(dir, SourceFormat::Native);
  const std::string format = model->is_nvfp4() ? "NVFP4" : "bf16", act = model->is_nvfp4() ? act_quant : "-";

  const int64_t per_sequence = options.prompt_tokens + options.new_tokens;
  Engine engine(std::move(model), {.kv_cache_tokens = options.batch * per_sequence,
                                   .scheduler = {.max_running_sequences = options.batch,
                                                 .max_prefill_tokens = options.batch * options.prompt_tokens,
                                                 .chunked_prefill_size = -1},  // the whole batch in one step
                                   .enable_prefix_cache = false,
                                   .gpu_sampling = gpu_sampling == "on"});
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, config.vocab_size - 1);
  // Warm-up, untimed: first launches load kernels and create library handles and workspaces.
  GenerateRequest warm_up{.sampling = {.temperature = 0.0f}, .max_new_tokens = 2, .ignore_eos = true};
  for (int t = 0; t < 16; ++t) warm_up.input_ids.push_back(token(rng));
  engine.generate({std::move(warm_up)});
  for (int64_t b = 0; b < options.batch; ++b) {
    GenerateRequest request{.sampling = options.sampling, .max_new_tokens = options.new_tokens, .ignore_eos = true};
    request.sampling.seed += static_cast<uint64_t>(b);
    for (int64_t t = 0; t < options.prompt_tokens; ++t) request.input_ids.push_back(token(rng));
    engine.add_request(std::move(request));
  }
  auto start = std::chrono::steady_clock::now();
  engine.step();  // the whole batch's prefill (and its first sampled token)
  const double prefill_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  int64_t decoded = 0;
  while (engine.has_unfinished()) decoded += static_cast<int64_t>(engine.step().size());
  const double decode_seconds = seconds_since(start);

  std::printf("| %-28s | %-10s | %-5s | %-9s | %-3s | %-10s | %5lld | %6lld | %13.1f | %12.1f | %7d |\n",
              std::filesystem::path(dir).filename().c_str(), device.c_str(), format.c_str(), act.c_str(),
              deterministic.c_str(), device != "cpu" && gpu_sampling == "on" ? "gpu" : "host",
              static_cast<long long>(options.batch), static_cast<long long>(options.prompt_tokens),
              static_cast<double>(options.batch * options.prompt_tokens) / prefill_seconds,
              static_cast<double>(decoded) / decode_seconds, omp_get_max_threads());
}

}  // namespace
}  // namespace fp4serve

int main(int argc, char** argv) {
  try {
    const fp4serve::BenchOptions options = fp4serve::parse(argc, argv);
    std::printf(
        "| model                        | device     | fmt   | act       | det | sampling   | batch | prompt | "
        "prefill tok/s | decode tok/s | threads |\n");
    std::printf(
        "|------------------------------|------------|-------|-----------|-----|------------|-------|--------|"
        "---------------|--------------|---------|\n");
    for (const std::string& dir : options.model_dirs)
      for (const std::string& device : options.devices)
        for (const std::string& act : options.act_quant)
          for (const std::string& deterministic : options.deterministic)
            for (const std::string& gpu_sampling : options.gpu_sampling)
              fp4serve::bench_one(options, dir, device, act, deterministic, gpu_sampling);
  } catch (const fp4serve::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
