// hotboot: build a snapshot of a warm inference server, restore it as a ready
// replica, inspect and verify snapshots.
#include <signal.h>

#include <map>

#include "cli_common.h"
#include "commands.h"

int main(int argc, char** argv) {
  using namespace hotboot::cli;
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "hotboot " HOTBOOT_VERSION
      " - make a new inference replica answer its first request as fast as a warm one.\n\n"
      "  hotboot build --out SNAP [--model PATH] [-- COMMAND ARGS...]   capture a warm server\n"
      "  hotboot restore SNAP --port N [--detach] [--json]             revive it, ready-checked\n"
      "  hotboot inspect SNAP [--json]                                  what a snapshot holds\n"
      "  hotboot verify SNAP                                            check every checksum\n"
      "  hotboot demo                                                   cold boot vs restore, side by side\n"
      "  hotboot bench format [--json]                                  the container vs tar+zstd, MB/s\n"
      "  hotboot bench gpu [--json]                                     weight upload vs pinned H2D GB/s\n\n"
      "Exit codes: 0 ok, 1 failed, 2 usage, 3 snapshot incompatible with this host,\n"
      "4 snapshot corrupt/truncated/not a snapshot, 5 replica not ready, 6 timeout.",
      "hotboot"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "hotboot " HOTBOOT_VERSION);
  bool quiet = false;
  app.add_flag("-q,--quiet", quiet, "Print only results and errors");

  std::map<std::string, Runner> runners;
  auto add = [&](const char* name, const char* help, Runner (*fn)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    runners[name] = fn(*sub);
  };
  add("build", "Boot a server, wait until warm, capture it into one snapshot file", AddBuild);
  add("restore", "Restore a snapshot as a replica; returns once it passed the readiness check", AddRestore);
  add("inspect", "Show what a snapshot holds: sections, sizes, host, versions, timings, canary", AddInspect);
  add("verify", "Check every chunk checksum and the whole-file digest of a snapshot", AddVerify);
  add("demo", "Generate a model, cold-boot it, snapshot it, restore it, and compare", AddDemo);
  add("bench", "Benchmarks; `bench format`: the snapshot container vs tar+zstd, the write floor and a plain-zstd reference; `bench gpu`: weight upload vs the pinned H2D ceiling", AddBench);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  SetQuiet(quiet);
  for (CLI::App* sub : app.get_subcommands()) {
    return runners.at(sub->get_name())();
  }
  return kExitUsage;
}
