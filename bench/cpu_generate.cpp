// Generation throughput through the engine: for each model directory (bf16 or ModelOpt NVFP4), device and activation
// mode, the model is loaded once; then for each batch size one batch of identical-length random prompts is prefilled
// in one step and decoded step by step; prints prefill and decode tokens/s and the OpenMP thread count as a table.
// The prefix cache is off so every prompt token is computed. --device cuda runs the GPU forward (NVFP4 layers only
// as W4A16: act none) with decode steps replaying CUDA graphs; cuda-eager runs it without graphs. --deterministic on
// runs the batch-invariant kernels (QuantOptions::deterministic), off,on measures both. --long-prompt-tokens N adds
// a row that prefills one N-token prompt alone. --floor-gbs G adds each decode row's floor: the bytes a decode step
// must read (decode_step_bytes) over G GB/s, e.g. the device-to-device copy bandwidth of bench_bandwidth.
// --gpu-sampling on (the default) samples on the GPU with a cuda device, off copies every logits row to the host
// sampler (EngineOptions::gpu_sampling); on,off compares them. Requests are greedy unless --temperature is given
// (then seeded, with --top-p).
//   bench_cpu_generate [--device cpu,cuda,cuda-eager] [--batch 1,16,...] [--prompt-tokens N] [--new-tokens N]
//                      [--act-quant none,per-token,...] [--deterministic off,on] [--long-prompt-tokens N]
//                      [--floor-gbs G] [--gpu-sampling on,off] [--temperature T] [--top-p P] DIR...
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/weight_loader.h"
#include "io/checkpoint.h"
#include "io/model_config.h"
#include "io/quant_config.h"
#include "kernels/device.h"

namespace fp4serve {
namespace {

struct BenchOptions {
  std::vector<int64_t> batches{4};
  int64_t prompt_tokens = 128, new_tokens = 32, long_prompt_tokens = 0;
  double floor_gbs = 0;  // 0: no floor columns
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
      options.batches.clear();
      for (const std::string& batch : split(value())) options.batches.push_back(std::stoll(batch));
    } else if (arg == "--long-prompt-tokens") {
      options.long_prompt_tokens = std::stoll(value());
    } else if (arg == "--floor-gbs") {
      options.floor_gbs = std::stod(value());
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
            "usage: bench_cpu_generate [--device cpu,cuda,cuda-eager] [--batch 1,16,...] [--prompt-tokens N] "
            "[--new-tokens N] [--act-quant none,static,per-token] [--deterministic off,on] [--long-prompt-tokens N] "
            "[--floor-gbs G] [--gpu-sampling on,off] [--temperature T] [--top-p P] MODEL_DIR...");
  for (int64_t batch : options.batches) FP4_CHECK(batch > 0, "--batch: sizes must be positive, got {}", batch);
  options.sampling.validate("bench_cpu_generate");
  return options;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Bytes one decode step of `batch` sequences at mean context `context` must read at least, the numerator of the
// decode floor: every weight except the embedding and the experts (attention, norms, routers, dense MLPs, lm_head:
// all read whatever the batch), the embedding rows of the batch, in each MoE layer the distinct experts that
// `batch` tokens route to, E * (1 - (1 - k/E)^batch) of them under uniform routing (8 of 128 at batch 1, all 128 at
// 256), and the batch's whole KV cache (bf16 K and V of every layer). Sizes come from the checkpoint's tensors.
struct StepBytes {
  double weights = 0, experts = 0, kv_cache = 0;
  double total() const { return weights + experts + kv_cache; }
};

// The checkpoint's tensor bytes by how a decode step reads them.
struct CheckpointBytes {
  double experts = 0, embedding = 0, other = 0;
};

CheckpointBytes checkpoint_bytes(const std::string& dir) {
  const Checkpoint checkpoint = Checkpoint::open(dir);
  CheckpointBytes bytes;
  for (const std::string& name : checkpoint.tensor_names()) {
    const double nbytes = static_cast<double>(checkpoint.tensor(name).info->nbytes);
    if (name.find(".mlp.experts.") != std::string::npos) bytes.experts += nbytes;
    else if (name.starts_with("model.embed_tokens.")) bytes.embedding += nbytes;
    else bytes.other += nbytes;
  }
  return bytes;
}

StepBytes decode_step_bytes(const CheckpointBytes& checkpoint, const ModelConfig& config, int64_t batch,
                            double context) {
  StepBytes bytes;
  bytes.weights = checkpoint.other + checkpoint.embedding * static_cast<double>(batch) / config.vocab_size;
  int moe_layers = 0;
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) moe_layers += config.is_moe_layer(layer) ? 1 : 0;
  if (moe_layers > 0) {
    const double experts = config.num_experts;
    const double touched = experts * (1.0 - std::pow(1.0 - config.num_experts_per_tok / experts,
                                                     static_cast<double>(batch)));
    bytes.experts = checkpoint.experts / experts * touched;  // experts / (layers * E) per expert, touched per layer
  }
  const double kv_bytes_per_token =
      2.0 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * sizeof(uint16_t);
  bytes.kv_cache = kv_bytes_per_token * context * static_cast<double>(batch);
  return bytes;
}

struct Row {
  std::string model, device, format, act, deterministic, sampling;
  int64_t batch = 0, prompt = 0;
  double prefill_tps = 0, decode_tps = 0;  // decode < 0: prefill only
  double floor_tps = 0, step_gb = 0;       // with --floor-gbs
};

void print_row(const Row& row, bool floor_columns) {
  std::printf("| %-28s | %-10s | %-5s | %-9s | %-3s | %-8s | %5lld | %6lld | %13.1f | ", row.model.c_str(),
              row.device.c_str(), row.format.c_str(), row.act.c_str(), row.deterministic.c_str(), row.sampling.c_str(),
              static_cast<long long>(row.batch), static_cast<long long>(row.prompt), row.prefill_tps);
  if (row.decode_tps < 0) std::printf("%12s | ", "-");
  else std::printf("%12.1f | ", row.decode_tps);
  std::printf("%7d |", omp_get_max_threads());
  if (floor_columns && row.decode_tps >= 0)
    std::printf(" %7.2f | %11.1f | %6.1f%% |", row.step_gb, row.floor_tps, 100.0 * row.decode_tps / row.floor_tps);
  else if (floor_columns)
    std::printf(" %7s | %11s | %7s |", "-", "-", "-");
  std::printf("\n");
  std::fflush(stdout);
}

// Prefills `batch` random prompts of `prompt_tokens` in one step, then decodes them to the end; returns
// {prefill tokens/s, decode output tokens/s (-1 when nothing was decoded)}.
std::pair<double, double> time_batch(Engine& engine, std::mt19937& rng, int32_t vocab_size, int64_t batch,
                                     int64_t prompt_tokens, int64_t new_tokens, const SamplingParams& sampling) {
  std::uniform_int_distribution<int32_t> token(0, vocab_size - 1);
  for (int64_t b = 0; b < batch; ++b) {
    GenerateRequest request{.sampling = sampling, .max_new_tokens = new_tokens, .ignore_eos = true};
    request.sampling.seed += static_cast<uint64_t>(b);
    for (int64_t t = 0; t < prompt_tokens; ++t) request.input_ids.push_back(token(rng));
    engine.add_request(std::move(request));
  }
  auto start = std::chrono::steady_clock::now();
  engine.step();  // the whole batch's prefill (and its first sampled token)
  const double prefill_seconds = seconds_since(start);
  start = std::chrono::steady_clock::now();
  int64_t decoded = 0;
  while (engine.has_unfinished()) decoded += static_cast<int64_t>(engine.step().size());
  const double decode_seconds = seconds_since(start);
  return {static_cast<double>(batch * prompt_tokens) / prefill_seconds,
          decoded > 0 ? static_cast<double>(decoded) / decode_seconds : -1.0};
}

void bench_one(const BenchOptions& options, const std::string& dir, const std::string& device,
               const std::string& act_quant, const std::string& deterministic, const std::string& gpu_sampling) {
  if (device == "cpu" && gpu_sampling != options.gpu_sampling.front()) return;  // the CPU samples on the host
  const ModelConfig config = load_model_config(dir);
  const QuantConfig quant = load_quant_config(dir);
  if (quant.algo == QuantAlgo::None && act_quant != options.act_quant.front()) return;  // bf16: modes do not apply
  const bool eager = device == "cuda-eager";
  const int64_t max_batch = *std::max_element(options.batches.begin(), options.batches.end());
  auto model = std::make_unique<Qwen3Model>(config, quant,
                                            QuantOptions{.act_quant = parse_act_quant(act_quant),
                                                         .device = parse_device(eager ? "cuda" : device),
                                                         .cuda_graph_max_batch = eager ? 0 : max_batch,
                                                         .deterministic = deterministic == "on"});
  WeightLoader(*model).load(dir, SourceFormat::Native);
  Row row{.model = std::filesystem::path(dir).filename().string(),
          .device = device,
          .format = model->is_nvfp4() ? "NVFP4" : "bf16",
          .act = model->is_nvfp4() ? act_quant : "-",
          .deterministic = deterministic,
          .sampling = device != "cpu" && gpu_sampling == "on" ? "gpu" : "host"};

  const int64_t per_sequence = options.prompt_tokens + options.new_tokens;
  const int64_t max_prefill = std::max(max_batch * options.prompt_tokens, options.long_prompt_tokens);
  Engine engine(std::move(model),
                {.kv_cache_tokens = std::max(max_batch * per_sequence, options.long_prompt_tokens + 1),
                 .scheduler = {.max_running_sequences = max_batch,
                               .max_prefill_tokens = max_prefill,
                               .chunked_prefill_size = -1},  // the whole batch in one step
                 .enable_prefix_cache = false,
                 .gpu_sampling = gpu_sampling == "on"});
  std::mt19937 rng(1);
  // Warm-up, untimed: first launches load kernels and create library handles and workspaces.
  time_batch(engine, rng, config.vocab_size, 1, 16, 2, options.sampling);
  const CheckpointBytes sizes = options.floor_gbs > 0 ? checkpoint_bytes(dir) : CheckpointBytes{};
  const double mean_context =
      static_cast<double>(options.prompt_tokens) + 0.5 * static_cast<double>(options.new_tokens);
  for (int64_t batch : options.batches) {
    std::tie(row.prefill_tps, row.decode_tps) =
        time_batch(engine, rng, config.vocab_size, batch, options.prompt_tokens, options.new_tokens, options.sampling);
    row.batch = batch, row.prompt = options.prompt_tokens;
    if (options.floor_gbs > 0) {
      const StepBytes bytes = decode_step_bytes(sizes, config, batch, mean_context);
      row.step_gb = bytes.total() / 1e9;
      row.floor_tps = static_cast<double>(batch) / (bytes.total() / (options.floor_gbs * 1e9));
    }
    print_row(row, options.floor_gbs > 0);
  }
  if (options.long_prompt_tokens > 0) {
    std::tie(row.prefill_tps, row.decode_tps) =
        time_batch(engine, rng, config.vocab_size, 1, options.long_prompt_tokens, 1, options.sampling);
    row.batch = 1, row.prompt = options.long_prompt_tokens;
    print_row(row, options.floor_gbs > 0);
  }
}

}  // namespace
}  // namespace fp4serve

int main(int argc, char** argv) {
  try {
    const fp4serve::BenchOptions options = fp4serve::parse(argc, argv);
    const bool floor = options.floor_gbs > 0;
    std::printf(
        "| model                        | device     | fmt   | act       | det | sampling | batch | prompt | prefill tok/s | "
        "decode tok/s | threads |%s\n",
        floor ? " step GB | floor tok/s | % floor |" : "");
    std::printf(
        "|------------------------------|------------|-------|-----------|-----|----------|-------|--------|---------------|"
        "--------------|---------|%s\n",
        floor ? "---------|-------------|---------|" : "");
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
