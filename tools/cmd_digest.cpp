// fp4serve digest: the logical-weights digest of a checkpoint (engine/weights_digest.h). With --load the checkpoint
// is also loaded into a model (in the chosen layout) and the model's digest, computed from its derived parameters
// with every layout inverted, is printed beside it: the two agree exactly when the server would hold these weights.
#include <fmt/format.h>

#include "common/error.h"
#include "engine/weight_updater.h"
#include "engine/weights_digest.h"
#include "io/quant_config.h"
#include "model/qwen3_model.h"
#include "tools/commands.h"

namespace fp4serve::tools {

void register_digest(CLI::App& app) {
  struct Options {
    std::string dir;
    bool load = false;
    std::string moe_backend = "cutlass";
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("digest", "Print the logical-weights digest (XXH64) of a checkpoint directory");
  cmd->add_option("dir", options->dir, "Checkpoint directory")->required();
  cmd->add_flag("--load", options->load, "Also load it into a model and print the model's digest (must be equal)");
  cmd->add_option("--moe-backend", options->moe_backend, "Weight layout used with --load: cutlass | trtllm");
  cmd->callback([options] {
    uint64_t file_digest = checkpoint_digest(options->dir);
    fmt::print("checkpoint {} {}\n", digest_hex(file_digest), options->dir);
    if (!options->load) return;
    ModelConfig config = load_model_config(options->dir);
    Qwen3Model model(config, load_quant_config(options->dir),
                     {.layout = parse_weight_layout(options->moe_backend), .act_quant = ActQuant::None});
    WeightUpdater(model, config).load(options->dir);
    uint64_t model_digest = model_weights_digest(model);
    fmt::print("model      {} ({} layout)\n", digest_hex(model_digest), options->moe_backend);
    if (model_digest != file_digest) throw Error("the loaded model's digest differs from the checkpoint's");
  });
}

}  // namespace fp4serve::tools
