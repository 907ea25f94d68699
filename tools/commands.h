// Each fp4serve subcommand lives in tools/cmd_<name>.cpp and registers its flags and action on the app.
#pragma once
#include <CLI/CLI.hpp>

namespace fp4serve::tools {

void register_synth(CLI::App& app);
void register_inspect(CLI::App& app);
void register_quantize(CLI::App& app);
void register_generate(CLI::App& app);
void register_serve(CLI::App& app);
void register_digest(CLI::App& app);

}  // namespace fp4serve::tools
