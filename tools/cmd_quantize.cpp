// fp4serve quantize: a bf16 HF checkpoint -> a ModelOpt NVFP4 checkpoint (src/quant/quantize_checkpoint.h does the
// work; this file only maps flags). Calibration (--calib-prompts) fills QuantizeOptions::input_amax from the model
// forward once the engine provides it; until then the flag is refused rather than silently ignored.
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "quant/quantize_checkpoint.h"
#include "tools/commands.h"

namespace fp4serve::tools {

namespace {
struct QuantizeFlags {
  std::string in, out, calib_prompts;
  std::vector<std::string> exclude;
};

void run_quantize(const QuantizeFlags& flags) {
  FP4_CHECK(flags.calib_prompts.empty(),
            "--calib-prompts {}: calibration needs the model forward (calibrate_input_amax in src/engine), which this "
            "build does not have yet; quantize without it (input_scale = 1.0) and serve with --act-quant none or "
            "per-token",
            flags.calib_prompts);
  quantize_checkpoint({.input_dir = flags.in, .output_dir = flags.out, .exclude = flags.exclude});
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
  cmd->add_option("--calib-prompts", flags->calib_prompts, "Prompts file for input-scale calibration");
  cmd->callback([flags] { run_quantize(*flags); });
}

}  // namespace fp4serve::tools
