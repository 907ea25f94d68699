// fp4serve quantize: a bf16 HF checkpoint -> a ModelOpt NVFP4 checkpoint (src/quant/quantize_checkpoint.h does the
// work; this file only maps flags). Calibration (--calib-prompts FILE: one prompt per line, empty lines skipped, or
// one JSON string per line in a .jsonl file; encoded with the input's tokenizer.json) fills
// QuantizeOptions::input_amax from the bf16 model's forward (engine/calibration.h).
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "engine/calibration.h"
#include "quant/quantize_checkpoint.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"

namespace fp4serve::tools {

namespace {
struct QuantizeFlags {
  std::string in, out, calib_prompts;
  std::vector<std::string> exclude;
};

std::map<std::string, float> calibrate(const QuantizeFlags& flags) {
  if (flags.calib_prompts.empty()) return {};
  std::ifstream file(flags.calib_prompts);
  FP4_CHECK(file.good(), "--calib-prompts {}: cannot open the file", flags.calib_prompts);
  const Tokenizer tokenizer = Tokenizer::from_files(flags.in);
  // A .jsonl file holds one JSON string per line, so prompts can span lines (chat turns).
  const bool jsonl = std::filesystem::path(flags.calib_prompts).extension() == ".jsonl";
  std::vector<std::vector<int32_t>> prompts;
  int line_number = 0;
  for (std::string line; std::getline(file, line);) {
    ++line_number;
    if (line.empty()) continue;
    if (!jsonl) {
      prompts.push_back(tokenizer.encode(line));
      continue;
    }
    const nlohmann::json prompt = nlohmann::json::parse(line, nullptr, false);
    FP4_CHECK(prompt.is_string(), "--calib-prompts {}:{}: a .jsonl prompt file holds one JSON string per line",
              flags.calib_prompts, line_number);
    prompts.push_back(tokenizer.encode(prompt.get<std::string>()));
  }
  FP4_CHECK(!prompts.empty(), "--calib-prompts {}: no prompts (one per line)", flags.calib_prompts);
  return calibrate_input_amax(flags.in, prompts);
}

void run_quantize(const QuantizeFlags& flags) {
  quantize_checkpoint(
      {.input_dir = flags.in, .output_dir = flags.out, .exclude = flags.exclude, .input_amax = calibrate(flags)});
}
}  // namespace

void register_quantize(CLI::App& app) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize a bf16 HF checkpoint to ModelOpt NVFP4");
  cmd->add_option("--in", flags->in, "bf16 checkpoint directory")->required();
  cmd->add_option("--out", flags->out, "Output directory (created; must not hold a checkpoint)")->required();
  cmd->add_option("--exclude", flags->exclude,
                  "Module glob kept bf16, in addition to lm_head, model.layers.*.mlp.gate, model.embed_tokens "
                  "(repeatable)");
  cmd->add_option("--calib-prompts", flags->calib_prompts,
                  "Prompts for input-scale calibration: a text file, one prompt per line (.jsonl: one JSON string per line)");
  cmd->callback([flags] { run_quantize(*flags); });
}

}  // namespace fp4serve::tools
