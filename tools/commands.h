// Each fp4serve subcommand lives in tools/cmd_<name>.cpp and registers its flags and action on the app.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>

namespace fp4serve::tools {

void register_synth(CLI::App& app);
void register_inspect(CLI::App& app);
void register_quantize(CLI::App& app);
void register_generate(CLI::App& app);
void register_serve(CLI::App& app);
void register_digest(CLI::App& app);

// SGLang's --cuda-graph-max-bs and --disable-cuda-graph, for the commands that run the model on --device cuda.
inline void add_cuda_graph_flags(CLI::App* cmd, int64_t& max_bs, bool& disable) {
  cmd->add_option("--cuda-graph-max-bs", max_bs, "Decode steps of up to this many sequences replay CUDA graphs")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--disable-cuda-graph", disable, "Run every GPU step eagerly");
}

}  // namespace fp4serve::tools
