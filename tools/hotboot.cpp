// hotboot: build a snapshot of a warm inference server, restore it as a ready
// replica, inspect and verify snapshots.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "cli_common.h"
#include "commands.h"

namespace hotboot::cli {

namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point g_main_entry = Clock::now();  // main sets it first thing; this is a fallback

// Nanoseconds since boot at which this process started: field 22 of
// /proc/self/stat (clock ticks on CLOCK_BOOTTIME), or -1 when unreadable.
int64_t StartBootNs() {
  std::ifstream in("/proc/self/stat");
  const std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Field 2, the command name, is in parentheses and may hold spaces and
  // ')': the fields after it are counted from the last ')'.
  size_t at = stat.rfind(')');
  if (at == std::string::npos) return -1;
  ++at;
  for (int field = 3; field < 22; ++field) {
    at = stat.find(' ', at + 1);
    if (at == std::string::npos) return -1;
  }
  char* end = nullptr;
  const unsigned long long ticks = std::strtoull(stat.c_str() + at + 1, &end, 10);
  const long hz = ::sysconf(_SC_CLK_TCK);
  if (end == stat.c_str() + at + 1 || (*end != ' ' && *end != '\0') || hz <= 0 ||
      ticks > static_cast<unsigned long long>(INT64_MAX / 1000000000)) {
    return -1;
  }
  return static_cast<int64_t>(ticks) * (1000000000 / hz);
}

}  // namespace

ProcessStart StartOfProcess() {
  static const ProcessStart start = [] {
    const ProcessStart from_main{g_main_entry, "main"};
    const int64_t started = StartBootNs();
    timespec boot{};
    if (started < 0 || ::clock_gettime(CLOCK_BOOTTIME, &boot) != 0) return from_main;
    const auto now = Clock::now();
    const int64_t age_ns = static_cast<int64_t>(boot.tv_sec) * 1000000000 + boot.tv_nsec - started;
    if (age_ns < 0) return from_main;
    const auto at = now - std::chrono::nanoseconds(age_ns);
    if (at > g_main_entry) return from_main;  // the two clocks disagree: trust neither
    if (g_main_entry - at > std::chrono::seconds(1)) return from_main;  // forked long before it exec'd us
    return ProcessStart{at, "process start"};
  }();
  return start;
}

}  // namespace hotboot::cli

int main(int argc, char** argv) {
  using namespace hotboot::cli;
  g_main_entry = std::chrono::steady_clock::now();
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "hotboot " HOTBOOT_VERSION
      " - make a new inference replica answer its first request as fast as a warm one.\n\n"
      "  hotboot build --out SNAP [--model PATH] [-- COMMAND ARGS...]   capture a warm server\n"
      "  hotboot restore SNAP --port N [--detach] [--json]             revive it, ready-checked\n"
      "  hotboot inspect SNAP [--json]                                  what a snapshot holds\n"
      "  hotboot verify SNAP [--trust KEY.pub]                          check every checksum and signature\n"
      "  hotboot keygen --out KEY                                       an Ed25519 key pair to sign with\n"
      "  hotboot sign SNAP --key KEY                                    sign a snapshot\n"
      "  hotboot demo                                                   cold boot vs restore, side by side\n"
      "  hotboot bench format [--json]                                  the container vs tar+zstd, MB/s\n"
      "  hotboot bench gpu [--json]                                     weight upload vs pinned H2D GB/s\n"
      "  hotboot bench trust --snapshot SNAP                            what signature checks cost a restore\n"
      "  hotboot bench fetch [--presets small,1b] [--rates 1,5,10]      registry restore vs download, shaped links\n"
      "  hotboot bench burst --replicas N [--preset small] [--json]     N restores at once vs one, vs N cold boots\n"
      "  hotboot cache ls | gc | prune --keep 40G                       the node cache\n\n"
      "Exit codes: 0 ok, 1 failed, 2 usage, 3 snapshot incompatible with this host,\n"
      "4 snapshot corrupt/truncated/not a snapshot, 5 replica not ready, 6 timeout,\n"
      "7 untrusted (a trust policy is in force: unsigned, unknown key or bad signature).",
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
  add("verify", "Check every chunk checksum and SHA-256, the whole-file digest and the signatures of a snapshot; with a trust policy, refuse one it does not accept (exit 7)", AddVerify);
  add("keygen", "Create an Ed25519 key pair (KEY, KEY.pub) for signing snapshots", AddKeygen);
  add("sign", "Sign a snapshot with an Ed25519 key (atomically; its digest does not change)", AddSign);
  add("demo", "Generate a model, cold-boot it, snapshot it, restore it, and compare", AddDemo);
  add("push", "Upload a snapshot to an OCI registry (oci://HOST/REPO:TAG); only blobs the registry lacks travel", AddPush);
  add("pull", "Fetch a snapshot (oci:// or https://) into the node cache ahead of a restore", AddPull);
  add("cache", "The node cache: `cache ls`, `cache gc`, `cache prune --keep SIZE` (blobs fetched from registries, and the weights directory)", AddCache);
  add("bench", "Benchmarks; `bench format`: the snapshot container vs tar+zstd, the write floor and a plain-zstd reference; `bench gpu`: weight upload vs the pinned H2D ceiling; `bench trust`: what signature and chunk SHA-256 checks cost a restore; `bench fetch`: restore from a registry, streamed, vs download-then-restore, under shaped links; `bench burst`: N restores from a registry at once onto one fresh host, vs one alone and N cold boots", AddBench);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    if (rc == 0) return 0;
    // A usage error with --json (before any "--") still answers in JSON.
    for (int i = 1; i < argc && std::string(argv[i]) != "--"; ++i) {
      if (std::string(argv[i]) == "--json") {
        return PrintFailureJson(e.what(), kExitUsage, {{"outcome", "usage"}});
      }
    }
    return kExitUsage;
  }
  SetQuiet(quiet);
  // --json anywhere on the chosen command (e.g. `bench format --json`): its
  // failures answer in JSON too (cli_common.h Fail).
  for (std::vector<CLI::App*> level = app.get_subcommands(); !level.empty();) {
    std::vector<CLI::App*> next;
    for (CLI::App* sub : level) {
      if (const CLI::Option* j = sub->get_option_no_throw("--json"); j && j->count() > 0) SetJsonOutput(true);
      for (CLI::App* s : sub->get_subcommands()) next.push_back(s);
    }
    level = std::move(next);
  }
  for (CLI::App* sub : app.get_subcommands()) {
    return runners.at(sub->get_name())();
  }
  return kExitUsage;
}
