// Reload benchmark: time and throughput of update_weights_from_disk on a checkpoint, next to the time to merely
// read the same bytes from disk in the same run (both usually from the page cache after the first pass; the table
// says so). Usage: bench_reload MODEL_DIR [OTHER_DIR] [--repeat N] [--threads N] [--act-quant M] [--moe-backend B]
// (--threads: the loader's threads, LoadOptions::threads; default min(hardware threads, 8)).
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine/weight_updater.h"
#include "io/checkpoint.h"
#include "io/quant_config.h"
#include "model/qwen3_model.h"

using namespace fp4serve;
namespace fs = std::filesystem;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Reads every tensor of the checkpoint once through pread into a 64 MiB buffer: the disk-side floor of a reload.
double read_seconds(const fs::path& dir, uint64_t& bytes) {
  Checkpoint ckpt = Checkpoint::open(dir, {.map = false});
  std::vector<uint8_t> buffer(size_t{64} << 20);
  bytes = 0;
  double start = now();
  for (const auto& name : ckpt.tensor_names()) {
    const CheckpointTensor& t = ckpt.tensor(name);
    for (uint64_t off = 0; off < t.info->nbytes; off += buffer.size()) {
      uint64_t len = std::min<uint64_t>(buffer.size(), t.info->nbytes - off);
      t.shard->read(*t.info, off, {buffer.data(), len});
    }
    bytes += t.info->nbytes;
  }
  return now() - start;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> dirs;
  int repeat = 3;
  QuantOptions options;
  LoadOptions load_options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc) repeat = std::stoi(argv[++i]);
    else if (arg == "--threads" && i + 1 < argc) load_options.threads = std::stoi(argv[++i]);
    else if (arg == "--act-quant" && i + 1 < argc) options.act_quant = parse_act_quant(argv[++i]);
    else if (arg == "--moe-backend" && i + 1 < argc) options.layout = parse_weight_layout(argv[++i]);
    else dirs.push_back(arg);
  }
  if (dirs.empty()) {
    fmt::print(stderr, "usage: bench_reload MODEL_DIR [OTHER_DIR] [--repeat N] [--threads N] [--act-quant M] "
               "[--moe-backend B]\n");
    return 2;
  }
  if (dirs.size() == 1) dirs.push_back(dirs[0]);
  try {
    ModelConfig config = load_model_config(dirs[0]);
    Qwen3Model model(config, load_quant_config(dirs[0]), options);
    WeightUpdater updater(model, config, load_options);
    double t0 = now();
    LoadResult first = updater.load(dirs[0]);
    double first_seconds = now() - t0;

    fmt::print("reload benchmark: {} ({}), {} cores, loader threads {}, layout {}, act-quant {}\n", dirs[0],
               architecture_name(config.architecture), std::thread::hardware_concurrency(), first.threads,
               weight_layout_name(options.layout), act_quant_name(options.act_quant));
    fmt::print("{:<28} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}\n", "operation", "bytes MB", "total s", "validate",
               "write", "post-proc", "GB/s");
    fmt::print("{:<28} {:>10.1f} {:>10.3f} {:>10.3f} {:>10.3f} {:>12.3f} {:>10.2f}\n", "first load", first.bytes / 1e6,
               first_seconds, first.validate_seconds, first.commit_seconds, first.post_process_seconds,
               first.bytes / first_seconds / 1e9);
    for (int r = 0; r < repeat; ++r) {
      const std::string& dir = dirs[(r + 1) % dirs.size()];
      double start = now();
      LoadResult result = updater.load(dir);
      double seconds = now() - start;
      fmt::print("{:<28} {:>10.1f} {:>10.3f} {:>10.3f} {:>10.3f} {:>12.3f} {:>10.2f}\n",
                 fmt::format("reload {} ({})", r + 1, fs::path(dir).filename().string()), result.bytes / 1e6, seconds,
                 result.validate_seconds, result.commit_seconds, result.post_process_seconds,
                 result.bytes / seconds / 1e9);
    }
    uint64_t bytes = 0;
    double read = read_seconds(dirs[0], bytes);
    fmt::print("{:<28} {:>10.1f} {:>10.3f} {:>10} {:>10} {:>12} {:>10.2f}\n", "read once (page cache)", bytes / 1e6, read,
               "-", "-", "-", bytes / read / 1e9);
    fmt::print("peak staging: {:.1f} MB (reload reads every byte twice: validate, then write)\n",
               first.peak_staging_bytes / 1e6);
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
