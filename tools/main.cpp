// fp4serve: one binary, one subcommand per job (synth, quantize, inspect, generate, serve).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include "common/error.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"fp4serve: NVFP4 inference server with hot weight reload"};
  app.require_subcommand(1);
  fp4serve::tools::register_synth(app);
  fp4serve::tools::register_inspect(app);
  fp4serve::tools::register_quantize(app);
  fp4serve::tools::register_generate(app);
  fp4serve::tools::register_serve(app);
  fp4serve::tools::register_digest(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const fp4serve::Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
