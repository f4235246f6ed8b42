// The subcommands of `hotboot`; each registers its options on the app and
// returns the function that runs it once argv is parsed.
#pragma once

#include <chrono>
#include <functional>

#include <CLI/CLI.hpp>

namespace hotboot::cli {

using Runner = std::function<int()>;

// When this process started, for times that count what a user waits for
// (`hotboot restore`'s time to ready): the kernel's record of the process's
// start (/proc/self/stat, in clock ticks of 10 ms, rounded down: an interval
// from it reads at most one tick long, never short), so exec, dynamic linking
// and option parsing count. The kernel records the fork, not the exec: when
// that was over a second before main (a script that ran, then exec'd us),
// or /proc cannot say, main's first instant is used instead.
struct ProcessStart {
  std::chrono::steady_clock::time_point at;
  const char* from;  // "process start" or "main"
};
ProcessStart StartOfProcess();

Runner AddBuild(CLI::App& app);
Runner AddRestore(CLI::App& app);
Runner AddInspect(CLI::App& app);
Runner AddVerify(CLI::App& app);
Runner AddKeygen(CLI::App& app);  // cli_trust.cpp
Runner AddSign(CLI::App& app);
Runner AddDemo(CLI::App& app);
Runner AddBench(CLI::App& app);
Runner AddPush(CLI::App& app);  // cli_push_pull.cpp
Runner AddPull(CLI::App& app);
Runner AddCache(CLI::App& app);  // cli_cache.cpp: cache ls|gc|prune
// `bench gpu`, registered by AddBench; *run answers -1 when not chosen.
void AddBenchGpu(CLI::App& bench, Runner* run);
// `bench trust`, likewise: what signature and chunk SHA-256 checks cost a restore.
void AddBenchTrust(CLI::App& bench, Runner* run);
// `bench fetch`: restore from a registry, streamed, vs download-then-restore, under shaped links.
void AddBenchFetch(CLI::App& bench, Runner* run);
// `bench burst`: N restores from a registry at once onto one fresh host, vs one alone and N cold boots.
void AddBenchBurst(CLI::App& bench, Runner* run);

}  // namespace hotboot::cli
