#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "cli_common.h"
#include "cli_remote.h"
#include "cli_trust.h"
#include "commands.h"
#include "hotboot/keep_warm.h"
#include "hotboot/metrics.h"
#include "hotboot/orphans.h"
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
  std::string gpu_weights = "auto";
  int verify_timeout_s = 120;
  int criu_timeout_s = 300;
  TrustArgs trust;
  RemoteArgs remote;
  // What operators watch (hotboot/metrics.h, hotboot/keep_warm.h).
  int metrics_port = -1;  // -1: no listener
  std::string metrics_host = "127.0.0.1";
  std::string metrics_textfile;
  double keep_warm_interval_s = 0;  // 0: off
};

using Clock = std::chrono::steady_clock;

// The restore's metrics as it goes: phases from the events (their names with
// '-' as '_'), then the library's own timings once ready; served on
// --metrics-port and written to --metrics-textfile on every change that
// matters (start, failure, ready, keep-warm, replica exit).
class Observer {
 public:
  Observer(const RestoreArgs& a, const ProcessStart& start) : textfile_(a.metrics_textfile), start_(start.at) {
    const double age = std::chrono::duration<double>(Clock::now() - start.at).count();
    m_.start_time_unix_s =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count() - age;
    m_.snapshot = a.snapshot;
    m_.source = a.snapshot.rfind("oci://", 0) == 0 ? "oci"
                : a.snapshot.rfind("http", 0) == 0 && IsRemoteSnapshot(a.snapshot) ? "https"
                                                                                   : "file";
    m_.keep_warm_interval_s = a.keep_warm_interval_s;
    m_.port = a.port;
    phase_start_ = start.at;
    phase_ = "startup";
  }

  Status Serve(const std::string& host, int port) {
    auto srv = MetricsServer::Start(host, port, [this] { return Render(); });
    if (!srv.ok()) return srv.status();
    server_ = std::move(srv).value();
    return Status::Ok();
  }
  int served_port() const { return server_ ? server_->port() : 0; }

  void Phase(const std::string& p) {
    std::lock_guard lk(mu_);
    ClosePhaseLocked();
    phase_ = p;
    m_.current_phase = p;
  }

  void Fetched(const fetch::FetchStats& s) {
    std::lock_guard lk(mu_);
    m_.fetched = true;
    m_.fetch_network_bytes = s.bytes_fetched;
    m_.fetch_cache_bytes = s.bytes_from_cache;
    m_.fetch_skipped_bytes = s.bytes_skipped;
    if (m_.digest.empty()) m_.digest = s.resolved;
  }

  void Failed(const Status& st) {
    {
      std::lock_guard lk(mu_);
      ClosePhaseLocked();
      m_.current_phase.clear();
      m_.outcome = OutcomeFor(st.code(), st.message());
      m_.replica_up = false;
    }
    Write();
  }

  void Ready(const RestoreResult& res) {
    {
      std::lock_guard lk(mu_);
      phase_.clear();
      m_.current_phase.clear();
      m_.phase_s.clear();
      for (const auto& [k, v] : res.timings_ms.items()) {
        if (k != "total" && v.is_number()) m_.phase_s[k] = v.get<double>() / 1000;
      }
      m_.outcome = "ready";
      m_.time_to_ready_s = res.time_to_ready_ms / 1000;
      if (!res.digest.empty()) m_.digest = res.digest;
      m_.capture_mode = res.control_channel ? "cooperative" : "transparent";
      m_.replica_mode = res.cold ? "cold" : "restored";
      m_.instance = res.instance;
      m_.port = res.port;
      m_.replica_up = true;
    }
    Write();
  }

  void ReplicaGone() {
    {
      std::lock_guard lk(mu_);
      m_.replica_up = false;
    }
    Write();
  }

  void Watch(const KeepWarm* kw) {
    std::lock_guard lk(mu_);
    kw_ = kw;
  }

  std::string Render() {
    std::lock_guard lk(mu_);
    RestoreMetrics m = m_;
    if (!phase_.empty()) m.phase_s[Normal(phase_)] += std::chrono::duration<double>(Clock::now() - phase_start_).count();
    if (kw_) {
      m.keep_warm_requests = kw_->sent();
      m.keep_warm_failures = kw_->failed();
      m.keep_warm_last_latency_s = kw_->last_latency_s();
      m.idle_s = kw_->idle_s();
    }
    // Microseconds are plenty, and read better than 0.32056505199999996.
    auto us = [](double& v) {
      if (v > 0) v = std::round(v * 1e6) / 1e6;
    };
    for (auto& [k, v] : m.phase_s) us(v);
    us(m.time_to_ready_s);
    us(m.keep_warm_last_latency_s);
    us(m.idle_s);
    us(m.start_time_unix_s);
    return RenderPrometheus(m);
  }

  // The textfile, when asked for; a failure to write it is said once and
  // does not stop the replica.
  void Write() {
    if (textfile_.empty()) return;
    Status st = WriteMetricsTextfile(textfile_, Render());
    if (!st.ok() && !write_failed_.exchange(true)) Note("warning: " + st.message());
  }

 private:
  static std::string Normal(std::string p) {
    for (char& c : p) {
      if (c == '-') c = '_';
    }
    return p;
  }
  void ClosePhaseLocked() {
    const auto now = Clock::now();
    if (!phase_.empty()) m_.phase_s[Normal(phase_)] += std::chrono::duration<double>(now - phase_start_).count();
    phase_start_ = now;
    phase_.clear();
  }

  std::mutex mu_;
  RestoreMetrics m_;
  std::string textfile_;
  Clock::time_point start_;
  std::string phase_;
  Clock::time_point phase_start_;
  const KeepWarm* kw_ = nullptr;
  std::unique_ptr<MetricsServer> server_;
  std::atomic<bool> write_failed_{false};
};

// What a person reads of each phase on the status line.
std::string PhaseText(const std::string& p) {
  static const std::map<std::string, std::string> kText = {
      {"open", "opening"},           {"check", "checking"},          {"unpack", "unpacking"},
      {"weights", "placing weights"}, {"criu-restore", "criu restore"}, {"gpu-restore", "GPU restore"},
      {"weights-handoff", "waiting for the GPU weights handoff"},
      {"after-restore", "after-restore hook"}, {"verify", "verifying"}, {"ready", "ready"},
      {"cold-boot", "cold boot"}};
  auto it = kText.find(p);
  return it == kText.end() ? p : it->second;
}

// SIGTERM/SIGINT/SIGHUP are blocked in every thread and taken by one watcher:
// before the replica is ready a signal ends us at once (the replica, seeing
// its control channel close before it was marked ready, exits too, per
// server/CONTROL.md: no orphan is left); once supervising, it is forwarded.
std::atomic<bool> g_supervising{false};
// The restore's metrics, for a stop before ready to be recorded as its outcome.
std::atomic<Observer*> g_observer{nullptr};
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
        const Status stopped(Code::kFailedPrecondition, std::string("interrupted by ") + strsignal(sig) +
                                                            " before the replica was ready; nothing is left running");
        if (Observer* obs = g_observer.load()) obs->Failed(stopped);
        Log("error", stopped.message());
        std::_Exit(128 + sig);
      }
      g_signal.store(sig);
    }
  }).detach();
}

// Forwards a stop signal to the replica and waits for it; returns our exit
// code. `stopping` runs first (keep-warm stops: nothing is sent to a replica
// on its way out).
int Supervise(Replica& replica, const std::function<void()>& stopping) {
  g_supervising.store(true);
  // As PID 1 (a container's entrypoint) we adopt the orphans of a replica
  // without a PID namespace of its own (GPU hosts): reap them.
  host::OrphanReaper orphans;
  for (;;) {
    orphans.Reap();
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
      if (stopping) stopping();
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

// Keep-warm for a transparent replica, started once it is ready; null when
// off, not applicable (said why) or the port cannot be observed (said why).
std::unique_ptr<KeepWarm> StartKeepWarm(const RestoreArgs& a, const RestoreResult& res, Observer& obs) {
  if (a.keep_warm_interval_s <= 0) return nullptr;
  if (res.control_channel) {
    Note("--keep-warm-interval applies to transparent snapshots; this replica is the reference server, which keeps "
         "itself warm with its own --keep-warm-interval (given to it at build, and part of the snapshot): nothing "
         "sent from here");
    return nullptr;
  }
  if (res.keep_warm.empty()) {
    Note("warning: keep-warm is off: the snapshot records no canary request to send");
    return nullptr;
  }
  auto watcher = WatchTcpPort(res.replica->pid(), res.port);
  if (!watcher.ok()) {
    Note("warning: keep-warm is off: " + watcher.status().message() +
         " (its idle time must be observed, not assumed)");
    return nullptr;
  }
  const std::string host = a.host;
  const int port = res.port;
  const std::vector<HttpCall> calls = res.keep_warm;
  const auto timeout = std::chrono::seconds(a.verify_timeout_s);
  KeepWarmOptions ko;
  ko.interval = std::chrono::milliseconds(static_cast<int64_t>(a.keep_warm_interval_s * 1000));
  ko.poll = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(50), ko.interval / 4 + std::chrono::milliseconds(1));
  KeepWarmEvents ke;
  ke.on_sent = [&obs, interval = a.keep_warm_interval_s](bool ok, double latency_s, const std::string& error) {
    if (ok) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "keep-warm: idle for over %g s; sent the canary request, answered in %s",
                    interval, Ms(latency_s * 1000).c_str());
      Log("info", buf, {{"event", "keep_warm"}, {"latency_s", latency_s}});
    } else {
      Log("warn", "keep-warm request failed: " + error, {{"event", "keep_warm"}, {"error", error}});
    }
    obs.Write();
  };
  ke.on_watch_error = [](const Status& st) {
    Note("warning: keep-warm cannot observe the replica's port now (" + st.message() + "); nothing is sent until it can");
  };
  auto kw = std::make_unique<KeepWarm>(
      ko, std::move(watcher).value(), [host, port, calls, timeout] { return SendKeepWarm(host, port, calls, timeout); },
      std::move(ke));
  obs.Watch(kw.get());
  kw->Start();
  char buf[128];
  std::snprintf(buf, sizeof buf, "keep-warm: a canary request to the replica whenever it has been idle for %g s",
                a.keep_warm_interval_s);
  Note(buf);
  return kw;
}

int RunRestore(const RestoreArgs& a, const ProcessStart& start) {
  Observer obs(a, start);
  g_observer.store(&obs);
  struct Unwatch {
    ~Unwatch() { g_observer.store(nullptr); }
  } unwatch;
  // Every failure below: its outcome into the metrics (and the textfile),
  // then the message and, with --json, the object.
  auto fail = [&](const Status& s, const json& extra = json::object()) {
    obs.Failed(s);
    json more = {{"outcome", OutcomeFor(s.code(), s.message())}, {"code", CodeName(s.code())}};
    for (const auto& [k, v] : extra.items()) more[k] = v;
    return FailJson(s, a.json_out, more);
  };
  if (a.metrics_port >= 0) {
    if (Status st = obs.Serve(a.metrics_host, a.metrics_port); !st.ok()) return fail(st.Prefixed("--metrics-port"));
    Note("metrics on http://" + a.metrics_host + ":" + std::to_string(obs.served_port()) + "/metrics" +
         (a.detach ? " until this process exits (with --detach, --metrics-textfile outlives it)" : ""));
  }
  if (a.detach && a.keep_warm_interval_s > 0) {
    Note("warning: --keep-warm-interval needs the supervising hotboot restore; with --detach nothing keeps the "
         "replica warm");
  }
  obs.Write();  // "restoring", so that a restore under way is visible too
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
  o.criu_timeout = std::chrono::seconds(a.criu_timeout_s);
  o.skip_latency_check = a.no_latency_check;
  o.log_file = a.log_file;
  ParseGpuWeightsMode(a.gpu_weights, &o.gpu_weights);  // CLI11 checked it
  if (a.detach && o.log_file.empty()) {
    const char* t = std::getenv("TMPDIR");
    o.log_file = std::string(t && *t ? t : "/tmp") + "/hotboot-replica-" + std::to_string(a.port ? a.port : ::getpid()) + ".log";
  }
  const bool json_log = GetLogFormat() == LogFormat::kJson;
  RestoreEvents ev;
  std::mutex unpack_mu;
  int unpack_step = -1;
  ev.on_phase = [&](const std::string& p) {
    obs.Phase(p);
    const double s = std::chrono::duration<double>(Clock::now() - start.at).count();
    char buf[32];
    std::snprintf(buf, sizeof buf, "[%6.2fs] ", s);
    if (json_log) {
      Log("info", PhaseText(p), {{"event", "phase"}, {"phase", p}, {"elapsed_s", s}});
    } else if (StatusLineEnabled()) {
      StatusLine("phase", buf + PhaseText(p));
    } else {
      Note(buf + p);
    }
  };
  ev.on_unpack_progress = [&](uint64_t done, uint64_t total) {
    if (total == 0) return;
    std::lock_guard lk(unpack_mu);
    if (json_log) {  // a line per 10%
      const int step = static_cast<int>(done * 10 / total);
      if (step == unpack_step) return;
      unpack_step = step;
      LogEvent({{"event", "progress"}, {"what", "unpack"}, {"bytes", done}, {"total", total}});
    } else if (StatusLineEnabled()) {
      const int pct = static_cast<int>(done * 100 / total);
      if (pct == unpack_step) return;
      unpack_step = pct;
      const double s = std::chrono::duration<double>(Clock::now() - start.at).count();
      char buf[32];
      std::snprintf(buf, sizeof buf, "[%6.2fs] ", s);
      StatusLine("phase", buf + std::string("unpacking ") + HumanBytes(done) + " / " + HumanBytes(total));
    }
  };
  ev.on_server_log = [](const std::string& line) { ForwardLine("replica", line); };

  Status cuda_failed;
  auto cuda = CudaDriverIfPresent(a.cuda_lib, &cuda_failed);
  if (!cuda_failed.ok()) return fail(cuda_failed);
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
  if (!policy.ok()) return fail(policy.status().Prefixed("trust policy"));
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
    if (!job.ok()) return fail(job.status());
    fetch_job = *job;
    auto src = OpenRemote(a.snapshot, a.remote, a.json_out || json_log, fetch_job);
    if (!src.ok()) {
      const int rc = fail(src.status(), {{"replica_running", false}});
      Note("no replica is running from this attempt");
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
  if (remote) obs.Fetched(remote->stats());
  if (!r.ok()) {
    Status s = r.status();
    bool port_problem = s.message().find("already in use") != std::string::npos ||
                        s.code() == Code::kInvalidArgument;
    // A snapshot that is corrupt, unreadable or refused by the trust policy
    // is not one whose recorded command we would run cold either.
    const bool refused = s.code() == Code::kCorrupt || s.code() == Code::kTruncated ||
                         s.code() == Code::kUnsupported || s.code() == Code::kUntrusted;
    if (!a.fallback_cold || port_problem || refused) {
      obs.Failed(s);
      int rc = ExitCodeFor(s);
      if (rc == kExitFailure && s.message().find("readiness verification") != std::string::npos) rc = kExitNotReady;
      if (a.json_out) {
        // The restore's outcome, as /metrics names it; "code" is the error's kind.
        json extra = {{"outcome", OutcomeFor(s.code(), s.message())}, {"code", CodeName(s.code())},
                      {"replica_running", false}};
        if (remote) extra["fetch"] = FetchJson(remote->stats());
        PrintFailureJson(s.message(), rc, std::move(extra));
      }
      Fail(s);
      Note(std::string("no replica is running from this attempt") +
           (a.fallback_cold ? "" : " (--fallback-cold would boot the server cold instead)"));
      return rc;
    }
    auto reader = remote ? snapfile::SnapshotReader::Open(remote) : snapfile::SnapshotReader::Open(a.snapshot);
    auto manifest = reader.ok() ? ParseManifest((*reader)->manifest_json()) : Result<Manifest>(reader.status());
    if (!manifest.ok()) {
      Note("cannot fall back to a cold boot: " + manifest.status().message());
      return fail(s);
    }
    Note("snapshot cannot be used here (" + s.message() + ")");
    Note("falling back to a cold boot of the same server, as asked by --fallback-cold");
    r = ColdBootFromManifest(*manifest, o, ev);
    if (!r.ok()) return fail(r.status());
  }
  RestoreResult& res = *r;
  EndStatusLine();
  if (res.gpu_weights && res.gpu_weights->mode != "handoff") {
    Note("GPU weights: the server uploaded them itself (" + res.gpu_weights->reason + ")");
  }
  obs.Ready(res);
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
        obs.Failed(d.status());
        return Fail(d.status().Prefixed("detach"));  // the replica dies with us: never half-detached
      }
    }
    // Its cgroup is handed over, not ended: recorded where an operator (or
    // a later hotboot) finds it (host/job.h).
    handed_over = res.replica->Release();
    res.replica->CloseChannel();
  }
  if (a.json_out) {
    json out = {{"ok", true},
                {"outcome", "ready"},
                {"pid", res.replica->pid()},
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
    if (res.gpu_weights) out["gpu_weights"] = res.gpu_weights->ToJson();
    if (a.metrics_port >= 0) out["metrics_port"] = obs.served_port();
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
  std::unique_ptr<KeepWarm> keep_warm = StartKeepWarm(a, res, obs);
  const int rc = Supervise(*res.replica, [&keep_warm] {
    if (keep_warm) keep_warm->Stop();
  });
  if (keep_warm) keep_warm->Stop();
  obs.ReplicaGone();
  keeper.join();
  obs.Watch(nullptr);
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
  app.add_option("--gpu-weights", a->gpu_weights,
                 "How a GPU snapshot's weights file gets back onto the device. handoff: this process uploads it "
                 "(from the weights directory, or straight from the snapshot) into shareable device memory beside "
                 "the CRIU and driver restore, and the server maps that memory in after_restore; refused with exit 3 "
                 "(incompatible host) where this process cannot open the GPU or make shareable memory. server: the "
                 "file goes into the weights directory and the server uploads it (as before). auto: handoff where "
                 "it can be done, else server, saying why (--json: gpu_weights)")
      ->check(CLI::IsMember({"auto", "handoff", "server"}))
      ->capture_default_str();
  app.add_option("--work-dir", a->work_dir, "Where to unpack CRIU images (default /dev/shm when they fit, else $TMPDIR or /tmp)");
  app.add_option("--verify-timeout", a->verify_timeout_s, "Seconds allowed for each verification step");
  app.add_option("--criu-timeout", a->criu_timeout_s,
                 "Seconds CRIU's restore may take before it is ended with what it restored (exit 6): CRIU can hang, "
                 "e.g. in a container with fewer capabilities than the build's")
      ->check(CLI::Range(1, 86400));
  app.add_flag("--no-latency-check", a->no_latency_check,
               "Accept a canary answer slower than the build's warm bound");
  AddTrustOptions(app, &a->trust);
  AddRemoteOptions(app, &a->remote, /*with_cache=*/true);
  app.add_flag("--json", a->json_out,
               "Print the result as one JSON line; on failure too: ok false, error, outcome (ready, not_ready, "
               "incompatible, corrupt, untrusted, timeout, failed: as in /metrics), code, exit_code (and exit)");
  auto* watch = app.add_option_group("What operators watch");
  watch->add_option("--metrics-port", a->metrics_port,
                    "Serve Prometheus metrics of this restore and its replica on GET /metrics (text format 0.0.4) "
                    "while hotboot runs: outcome, time to ready, phases, fetched bytes, replica up, keep-warm; "
                    "0 picks a free port")
      ->check(CLI::Range(0, 65535));
  watch->add_option("--metrics-host", a->metrics_host, "Address the metrics listener binds")->capture_default_str();
  watch->add_option("--metrics-textfile", a->metrics_textfile,
                    "Write the same metrics to this node-exporter textfile (e.g. /var/lib/node_exporter/"
                    "hotboot.prom), atomically (temporary beside it, then rename): at start, on failure (so a failed "
                    "restore is visible), when ready, after each keep-warm and when the replica exits");
  watch->add_option("--keep-warm-interval", a->keep_warm_interval_s,
                    "Transparent snapshots: when the replica has been idle this many seconds (observed on its "
                    "port's TCP connections with sock_diag; never while a request is seen in flight), send it the "
                    "snapshot's canary request and count it in the metrics. 0 (default): off. For the reference "
                    "server (cooperative) this is the server's own job (hotboot-server --keep-warm-interval, fixed "
                    "at build): restore sends nothing and says so. Needs the supervising restore (not --detach)")
      ->check(CLI::Range(0.0, 86400.0));
  AddLogFormatOption(app);
  return [a] {
    const ProcessStart start = StartOfProcess();
    StartSignalWatcher();
    return RunRestore(*a, start);
  };
}

}  // namespace hotboot::cli
