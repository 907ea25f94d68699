// Each fp4serve subcommand lives in tools/cmd_<name>.cpp and registers its flags and action on the app.
#pragma once
#include <CLI/CLI.hpp>

namespace fp4serve::tools {

}  // namespace fp4serve::tools
