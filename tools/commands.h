// The subcommands of `hotboot`; each registers its options on the app and
// returns the function that runs it once argv is parsed.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace hotboot::cli {

using Runner = std::function<int()>;

Runner AddBuild(CLI::App& app);
Runner AddRestore(CLI::App& app);
Runner AddInspect(CLI::App& app);
Runner AddVerify(CLI::App& app);
Runner AddDemo(CLI::App& app);
Runner AddBench(CLI::App& app);
// `bench gpu`, registered by AddBench; *run answers -1 when not chosen.
void AddBenchGpu(CLI::App& bench, Runner* run);

}  // namespace hotboot::cli
