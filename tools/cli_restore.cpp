#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>

#include "cli_common.h"
#include "cli_remote.h"
#include "cli_trust.h"
#include "commands.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {

struct RestoreArgs {
  std::string snapshot;
  std::string base;
  int port = 0;
  std::string host = "127.0.0.1";
  bool detach = false;
  bool fallback_cold = false;
  bool json_out = false;
  bool no_latency_check = false;
  std::string log_file;
  std::string work_dir;
  std::string cuda_lib;
  int verify_timeout_s = 120;
  TrustArgs trust;
  RemoteArgs remote;
};

// SIGTERM/SIGINT/SIGHUP are blocked in every thread and taken by one watcher:
// before the replica is ready a signal ends us at once (the replica, seeing
// its control channel close before it was marked ready, exits too, per
// server/CONTROL.md: no orphan is left); once supervising, it is forwarded.
std::atomic<bool> g_supervising{false};
std::atomic<int> g_signal{0};

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

void StartSignalWatcher() {
  sigset_t set = StopSignals();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    for (;;) {
      int sig = 0;
      if (::sigwait(&set, &sig) != 0) continue;
      if (!g_supervising.load()) {
        std::fprintf(stderr, "hotboot: interrupted by %s before the replica was ready; nothing is left running\n",
                     strsignal(sig));
        std::_Exit(128 + sig);
      }
      g_signal.store(sig);
    }
  }).detach();
}

// Forwards a stop signal to the replica and waits for it; returns our exit code.
int Supervise(Replica& replica) {
  g_supervising.store(true);
  for (;;) {
    if (auto st = replica.Exited()) {
      if (WIFEXITED(*st)) {
        Note("replica exited with status " + std::to_string(WEXITSTATUS(*st)));
        return WEXITSTATUS(*st) == 0 ? kExitOk : kExitFailure;
      }
      Note(std::string("replica was killed by signal ") + strsignal(WTERMSIG(*st)));
      return kExitFailure;
    }
    ::usleep(100 * 1000);
    if (int sig = g_signal.exchange(0); sig > 0) {
      Note(std::string("got ") + strsignal(sig) + ", stopping the replica");
      ::kill(replica.pid(), SIGTERM);
      for (int i = 0; i < 100 && !replica.Exited(); ++i) ::usleep(100 * 1000);
      if (!replica.Exited()) {
        Note("replica did not stop within 10 s; killing it");
        replica.Kill();
      }
      return kExitOk;
    }
  }
}

int RunRestore(const RestoreArgs& a, const ProcessStart& start) {
  RestoreOptions o;
  // Timed from this process's start: exec, dynamic linking, option parsing
  // and loading the CUDA driver and libcriu are part of what the caller
  // waits for (the phase "startup").
  o.started = start.at;
  o.snapshot_path = a.snapshot;
  o.base_path = a.base;
  o.port = a.port;
  o.host = a.host;
  o.work_root = a.work_dir;
  o.verify_timeout = std::chrono::seconds(a.verify_timeout_s);
  o.skip_latency_check = a.no_latency_check;
  o.log_file = a.log_file;
  if (a.detach && o.log_file.empty()) {
    const char* t = std::getenv("TMPDIR");
    o.log_file = std::string(t && *t ? t : "/tmp") + "/hotboot-replica-" + std::to_string(a.port ? a.port : ::getpid()) + ".log";
  }
  RestoreEvents ev;
  ev.on_phase = [&](const std::string& p) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start.at).count();
    char buf[32];
    std::snprintf(buf, sizeof buf, "[%6.2fs] ", s);
    Note(buf + p);
  };
  ev.on_server_log = [](const std::string& line) { std::fprintf(stderr, "  replica | %s\n", line.c_str()); };

  Status cuda_failed;
  auto cuda = CudaDriverIfPresent(a.cuda_lib, &cuda_failed);
  if (!cuda_failed.ok()) return Fail(cuda_failed);
  // Said once, before anything starts: without a cgroup of its own, what the
  // replica forks and setsid()s can outlive this process.
  std::string containment = host::ContainmentProblem();
  if (!containment.empty()) {
    containment = "containment reduced: the replica gets no cgroup of its own here (" + containment +
                  "); only its process group is ended with hotboot, so what it setsid()s can outlive it";
    Note("warning: " + containment);
  }
  // The policy is read before the snapshot is opened: a host that trusts
  // no one in particular restores what it is given, and says so.
  auto policy = LoadPolicy(a.trust);
  if (!policy.ok()) return FailJson(policy.status().Prefixed("trust policy"), a.json_out);
  o.trust = std::move(policy).value();
  std::string unverified;
  if (!o.trust.in_force()) {
    unverified = "no trust policy is in force (no --trust KEY.pub, no " + std::string(snapfile::kDefaultTrustDir) +
                 "): restoring a snapshot whose signer is not checked";
    Note("warning: " + unverified);
  }
  // oci:// or https://: read while it arrives, through the node cache.
  std::shared_ptr<fetch::RemoteSnapshot> remote;
  std::shared_ptr<host::Job> fetch_job;
  if (IsRemoteSnapshot(a.snapshot)) {
    auto job = host::Job::Start({.kind = "fetch"});
    if (!job.ok()) return FailJson(job.status(), a.json_out);
    fetch_job = *job;
    auto src = OpenRemote(a.snapshot, a.remote, a.json_out, fetch_job);
    if (!src.ok()) {
      const int rc = FailJson(src.status(), a.json_out, {{"replica_running", false}});
      std::fprintf(stderr, "hotboot: no replica is running from this attempt\n");
      return rc;
    }
    remote = *src;
    o.source = remote;
    o.on_plan = [remote](const snapfile::SnapshotReader& reader, const std::vector<std::string>& reused) {
      remote->PrefetchAllBut(reader, reused);
    };
  }
  auto criu = MakeLibCriu();
  auto r = RestoreReplica(o, *criu, ev, cuda.get());
  EndProgress();
  if (!r.ok()) {
    Status s = r.status();
    bool port_problem = s.message().find("already in use") != std::string::npos ||
                        s.code() == Code::kInvalidArgument;
    // A snapshot that is corrupt, unreadable or refused by the trust policy
    // is not one whose recorded command we would run cold either.
    const bool refused = s.code() == Code::kCorrupt || s.code() == Code::kTruncated ||
                         s.code() == Code::kUnsupported || s.code() == Code::kUntrusted;
    if (!a.fallback_cold || port_problem || refused) {
      int rc = Fail(s);
      if (rc == kExitFailure && s.message().find("readiness verification") != std::string::npos) rc = kExitNotReady;
      std::fprintf(stderr, "hotboot: no replica is running from this attempt%s\n",
                   a.fallback_cold ? "" : " (--fallback-cold would boot the server cold instead)");
      if (a.json_out) {
        json out = {{"ok", false}, {"error", s.message()}, {"outcome", CodeName(s.code())},
                    {"exit", rc}, {"replica_running", false}};
        if (remote) out["fetch"] = FetchJson(remote->stats());
        std::printf("%s\n", out.dump().c_str());
      }
      return rc;
    }
    auto reader = remote ? snapfile::SnapshotReader::Open(remote) : snapfile::SnapshotReader::Open(a.snapshot);
    auto manifest = reader.ok() ? ParseManifest((*reader)->manifest_json()) : Result<Manifest>(reader.status());
    if (!manifest.ok()) {
      std::fprintf(stderr, "hotboot: cannot fall back to a cold boot: %s\n", manifest.status().message().c_str());
      return FailJson(s, a.json_out);
    }
    Note("snapshot cannot be used here (" + s.message() + ")");
    Note("falling back to a cold boot of the same server, as asked by --fallback-cold");
    r = ColdBootFromManifest(*manifest, o, ev);
    if (!r.ok()) return FailJson(r.status(), a.json_out);
  }
  RestoreResult& res = *r;
  // The replica is ready and every chunk it was made of was checked. What
  // was fetched is checked blob by blob and kept in the node cache after the
  // replica is reported ready (hashing and syncing a weights blob takes
  // seconds that nobody needs to wait for); this process ends only once
  // that is done.
  json fetched;
  if (remote) fetched = FetchJson(remote->stats());
  auto keep_fetched = [remote] {
    if (!remote) return;
    if (Status f = remote->Finish(); !f.ok()) {
      Note("warning: the replica is ready, but the node cache did not keep what was fetched: " + f.message());
    }
  };
  std::string handed_over;
  if (a.detach) {
    if (res.control_channel) {
      auto d = res.replica->Call({{"cmd", "detach"}}, std::chrono::seconds(10));
      if (!d.ok()) {
        return Fail(d.status().Prefixed("detach"));  // the replica dies with us: never half-detached
      }
    }
    // Its cgroup is handed over, not ended: recorded where an operator (or
    // a later hotboot) finds it (host/job.h).
    handed_over = res.replica->Release();
    res.replica->CloseChannel();
  }
  if (a.json_out) {
    json out = {{"pid", res.replica->pid()},
                {"port", res.port},
                {"host", a.host},
                {"instance", res.instance},
                {"mode", res.cold ? "cold" : "restored"},
                {"time_to_ready_ms", res.time_to_ready_ms},
                {"timed_from", start.from},
                {"canary_latency_ms", res.canary_latency_ms},
                {"digest", res.digest},
                {"timings_ms", res.timings_ms},
                {"detached", a.detach}};
    if (a.detach) out["log_file"] = o.log_file;
    if (a.detach && !handed_over.empty()) out["cgroup_record"] = handed_over;
    if (const host::Cgroup* cg = res.replica->cgroup()) out["cgroup"] = cg->path();
    if (!containment.empty()) out["warning"] = containment;
    if (!res.cold) out["trust"] = TrustJson(res.trust, &o.trust);
    if (!unverified.empty()) out["trust_warning"] = unverified;
    if (remote) out["fetch"] = fetched;
    std::printf("%s\n", out.dump().c_str());
  } else {
    if (!res.cold) {
      for (const auto& line : TrustLines(res.trust, &o.trust)) Note("snapshot " + line);
    }
    std::printf("replica %s ready on http://%s:%d (pid %d, %s in %s from %s)%s\n", res.instance.c_str(),
                a.host.c_str(), res.port, res.replica->pid(), res.cold ? "cold boot" : "restored",
                Ms(res.time_to_ready_ms).c_str(), start.from,
                a.detach ? (", detached; log: " + o.log_file +
                            (handed_over.empty() ? "" : "; its cgroup: " + handed_over)).c_str()
                         : "");
  }
  std::fflush(stdout);
  if (a.detach) {
    keep_fetched();
    return kExitOk;
  }
  std::thread keeper(keep_fetched);
  const int rc = Supervise(*res.replica);
  keeper.join();
  return rc;
}

}  // namespace

Runner AddRestore(CLI::App& app) {
  auto a = std::make_shared<RestoreArgs>();
  app.footer(
      "Restore a snapshot as a new replica serving on --port. Checks first that the snapshot can\n"
      "run here (CPU, kernel, CRIU, files) and refuses with the reason before touching anything;\n"
      "verifies every chunk before using it; after the CRIU restore, runs the replica's\n"
      "after-restore hook and the readiness verification (warm-state digest and canary answer\n"
      "within the build's warm latency bound). Prints the result only once the replica is ready.\n"
      "Its time to ready counts from this process's start (the kernel's record, 10 ms ticks), so\n"
      "exec, option parsing and loading the CUDA driver count too (phase \"startup\").\n"
      "Without --detach it then supervises the replica (forwards its log and SIGTERM/SIGINT) and\n"
      "exits when it does; with --detach it exits 0 and leaves the replica running.\n\n"
      "Trust: with a policy in force (--trust KEY.pub, repeatable, or any *.pub in the trust\n"
      "directory, default /etc/hotboot/trust.d/, which puts the policy in force by existing), a\n"
      "snapshot that is unsigned, signed by no trusted key or badly signed is refused with exit 7\n"
      "right after it is opened, before anything is written or started. Without one, restore\n"
      "warns and restores it unverified. Every chunk is checked against its SHA-256 (signed with\n"
      "the root) before it is decoded; a chunk that does not match ends the restore (exit 4).");
  app.add_option("snapshot", a->snapshot,
                 "Snapshot: a file, oci://HOST[:PORT]/REPO[:TAG|@sha256:...] or an http(s):// URL (streamed: "
                 "restore starts before the download ends)")
      ->required();
  app.add_option("-p,--port", a->port,
                 "Port the replica serves on (required, except for transparent snapshots: their build port)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--host", a->host, "Address the replica listens on");
  app.add_flag("-d,--detach", a->detach, "Exit once ready and leave the replica running");
  app.add_option("--base", a->base, "The base snapshot the snapshot was built against (default: its recorded name, next to it)");
  app.add_flag("--fallback-cold", a->fallback_cold,
               "Boot the server cold when the snapshot cannot be used here");
  app.add_option("--log", a->log_file, "Replica log file (default with --detach: $TMPDIR/hotboot-replica-PORT.log)");
  app.add_option("--cuda-lib", a->cuda_lib,
                 "CUDA driver library for GPU snapshots (default: libcuda.so.1 when the host has one)");
  app.add_option("--work-dir", a->work_dir, "Where to unpack CRIU images (default /dev/shm when they fit, else $TMPDIR or /tmp)");
  app.add_option("--verify-timeout", a->verify_timeout_s, "Seconds allowed for each verification step");
  app.add_flag("--no-latency-check", a->no_latency_check,
               "Accept a canary answer slower than the build's warm bound");
  AddTrustOptions(app, &a->trust);
  AddRemoteOptions(app, &a->remote, /*with_cache=*/true);
  app.add_flag("--json", a->json_out, "Print the result as one JSON line (also on failure: ok, error, outcome, exit)");
  return [a] {
    const ProcessStart start = StartOfProcess();
    StartSignalWatcher();
    return RunRestore(*a, start);
  };
}

}  // namespace hotboot::cli
