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

// --gpu-sampling on|off (EngineOptions::gpu_sampling): with --device cuda, sample on the GPU (off: every logits row
// goes to the host sampler, for comparison).
inline void add_gpu_sampling_flag(CLI::App* cmd, std::string& value) {
  cmd->add_option("--gpu-sampling", value,
                  "With --device cuda: sample on the GPU (off: copy the logits and sample on the host; requests with "
                  "token_ids_logprob or prompt logprobs always read host logits)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
}

}  // namespace fp4serve::tools
