#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <chrono>
#include <future>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>

#include "hotboot/http_client.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"

namespace hotboot {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

double MsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// Where a restore's clock starts: opts.started, when the caller waited
// before calling (never later than the call), else the call itself.
Clock::time_point TimeOrigin(const RestoreOptions& opts, Clock::time_point call) {
  return opts.started ? std::min(*opts.started, call) : call;
}

std::string NewInstanceId(std::mt19937_64& rng) {
  static const char* kHex = "0123456789abcdef";
  std::string id = "r-";
  for (int i = 0; i < 12; ++i) id += kHex[rng() % 16];
  return id;
}

class TempDir {
 public:
  // Unpacked images are read once by CRIU and deleted: memory-backed /dev/shm
  // spares the disk a write of the whole image when it has room.
  // Registered with the job before it exists: removed if this restore dies.
  static Result<TempDir> Make(const std::string& root, uint64_t need_bytes, host::Job& job) {
    std::string base = root;
    if (base.empty()) {
      struct statvfs vfs{};
      if (::statvfs("/dev/shm", &vfs) == 0 &&
          static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize > 2 * need_bytes + (256u << 20)) {
        base = "/dev/shm";
      } else {
        const char* t = std::getenv("TMPDIR");
        base = t && *t ? t : "/tmp";
      }
    }
    host::SweepNamedTemporaries(base);
    // mkdir, never an existing directory (one planted there is skipped).
    for (int i = 0; i < 64; ++i) {
      const std::string path = base + "/hotboot-restore." + std::to_string(::getpid()) + "." + std::to_string(i);
      HB_RETURN_IF_ERROR(job.AddTemporary(path));
      if (::mkdir(path.c_str(), 0700) == 0) return TempDir(path);
      const int e = errno;
      job.DropTemporary(path);
      if (e != EEXIST) return ErrnoError("mkdir " + path, e);
    }
    return FailedPrecondition("no free work directory name in " + base);
  }
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

// The readiness verification: the digest of the warm state must match the
// build's, and the canary must give the same tokens within the bound.
Status VerifyReplica(const json& manifest, const RestoreOptions& opts, const std::string& digest,
                     double* canary_ms) {
  const json warm = manifest.value("warm", json::object());
  const std::string want = warm.value("digest", "");
  if (want.empty()) return Corrupt("manifest records no warm-state digest");
  if (digest != want) {
    return FailedPrecondition("warm-state digest after restore is " + digest + ", the build recorded " +
                              want + ": the restored weights/config/plan differ");
  }
  const json canary = warm.value("canary", json::object());
  json req = {{"prompt", canary.value("prompt", "")}, {"max_tokens", canary.value("max_tokens", 16)}};
  HB_ASSIGN_OR_RETURN(HttpResponse r, HttpRequest(opts.host, opts.port, "POST", "/v1/generate",
                                                  req.dump(), opts.verify_timeout));
  if (r.status != 200) {
    return FailedPrecondition("canary request answered HTTP " + std::to_string(r.status) + ": " +
                              r.body.substr(0, 200));
  }
  json got = json::parse(r.body, nullptr, false);
  if (!got.is_object() || got.value("tokens", json()) != canary.value("tokens", json())) {
    return FailedPrecondition("canary answer differs from the build's: expected tokens " +
                              canary.value("tokens", json()).dump() + ", got " +
                              (got.is_object() ? got.value("tokens", json()).dump() : r.body.substr(0, 200)));
  }
  *canary_ms = r.elapsed_ms;
  const double bound = canary.value("latency_bound_ms", 0.0);
  if (!opts.skip_latency_check && bound > 0 && r.elapsed_ms > bound) {
    return FailedPrecondition("canary answered correctly but in " + std::to_string(r.elapsed_ms) +
                              " ms, over the warm bound of " + std::to_string(bound) +
                              " ms recorded at build: this replica is not warm");
  }
  return Status::Ok();
}

bool IsTransparent(const json& manifest) { return manifest.value("mode", "") == "transparent"; }

// The port the replica will serve on: any for a cooperative server (it
// re-listens in after_restore), the build's for a transparent one (CRIU
// restores its listening socket as it was).
Result<int> ReplicaPort(const json& manifest, int asked) {
  if (!IsTransparent(manifest)) {
    if (asked == 0) return InvalidArgument("--port is required: the restored server listens where you say");
    if (asked < 0 || asked > 65535) return InvalidArgument("--port must be 1..65535");
    return asked;
  }
  const json http = manifest.value("http", json::object());
  const int built = http.is_object() && http.contains("port") && http["port"].is_number_integer()
                        ? http["port"].get<int>() : 0;
  if (built <= 0 || built > 65535) return Corrupt("manifest: a transparent snapshot without http.port");
  if (asked != 0 && asked != built) {
    return InvalidArgument("this snapshot's server was built listening on port " + std::to_string(built) +
                           " and is restored with that socket; use --port " + std::to_string(built) +
                           " or leave --port out");
  }
  return built;
}

// Cooperative: after_restore over the control channel (new port, identity,
// seed), then the digest and the canary, then mark_ready.
Status VerifyCooperative(const json& manifest, const RestoreOptions& opts, Replica& replica,
                         const std::function<void(const std::string&)>& phase, RestoreResult* res) {
  phase("after-restore");
  const auto ta = Clock::now();
  std::mt19937_64 rng(opts.seed ? opts.seed : std::random_device{}());
  const uint64_t seed = rng();
  res->instance = opts.instance.empty() ? NewInstanceId(rng) : opts.instance;
  json cmd = {{"cmd", "after_restore"}, {"port", opts.port}, {"host", opts.host},
              {"instance", res->instance}, {"seed", seed}};
  auto reply = replica.Call(cmd, opts.verify_timeout);
  if (!reply.ok()) return reply.status().Prefixed("after_restore hook");
  res->digest = reply->value("digest", "");
  res->timings_ms["after_restore"] = MsSince(ta);

  phase("verify");
  const auto tv = Clock::now();
  HB_RETURN_IF_ERROR(VerifyReplica(manifest, opts, res->digest, &res->canary_latency_ms)
                         .Prefixed("readiness verification failed"));
  auto ready = replica.Call({{"cmd", "mark_ready"}}, opts.verify_timeout);
  if (!ready.ok()) return ready.status().Prefixed("mark_ready");
  HB_ASSIGN_OR_RETURN(HttpResponse rz, HttpRequest(opts.host, opts.port, "GET", "/readyz", "", opts.verify_timeout));
  if (rz.status != 200) {
    return FailedPrecondition("replica passed verification but /readyz answers " + std::to_string(rz.status));
  }
  res->timings_ms["verify"] = MsSince(tv);
  return Status();
}

// Transparent: the optional after_restore hook, the server's own readiness
// probe, then the canary answer and latency against the build's.
Status VerifyTransparent(const json& manifest, const RestoreOptions& opts, int port, Replica& replica,
                         const std::function<void(const std::string&)>& phase, RestoreResult* res) {
  const json http = manifest.value("http", json::object());
  phase("after-restore");
  const auto ta = Clock::now();
  if (http.contains("after_restore")) {
    HB_ASSIGN_OR_RETURN(HttpCall hook, HttpCall::FromJson(http["after_restore"]));
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(opts.host, port, hook, opts.verify_timeout));
    if (r.status / 100 != 2) {
      return FailedPrecondition("after_restore hook " + hook.path + " answered " + std::to_string(r.status) + ": " +
                                r.body.substr(0, 200));
    }
  }
  res->timings_ms["after_restore"] = MsSince(ta);

  phase("verify");
  const auto tv = Clock::now();
  auto gone = [&]() -> std::string { return replica.Exited() ? "it exited: " + replica.FinalLogTail() : ""; };
  HB_RETURN_IF_ERROR(WaitHttpReady(opts.host, port, http.value("ready_path", "/health"), opts.verify_timeout, gone)
                         .Prefixed("readiness verification failed"));
  const json canary = manifest.value("warm", json::object()).value("canary", json::object());
  HB_ASSIGN_OR_RETURN(HttpCall call, HttpCall::FromJson(canary.value("request", json())));
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(opts.host, port, call, opts.verify_timeout));
  if (r.status / 100 != 2) {
    return FailedPrecondition("readiness verification failed: canary answered HTTP " + std::to_string(r.status));
  }
  auto got = CanaryValue(r.body, canary.value("compare", ""));
  if (!got.ok()) return got.status().Prefixed("readiness verification failed");
  if (*got != canary.value("expected", json())) {
    return FailedPrecondition("readiness verification failed: canary answer differs from the build's: expected " +
                              canary.value("expected", json()).dump().substr(0, 200) + ", got " +
                              got->dump().substr(0, 200));
  }
  res->canary_latency_ms = r.elapsed_ms;
  const double bound = canary.value("latency_bound_ms", 0.0);
  if (!opts.skip_latency_check && bound > 0 && r.elapsed_ms > bound) {
    return FailedPrecondition("readiness verification failed: canary answered correctly but in " +
                              std::to_string(r.elapsed_ms) + " ms, over the warm bound of " + std::to_string(bound) +
                              " ms recorded at build: this replica is not warm");
  }
  res->instance = opts.instance;
  res->control_channel = false;
  res->timings_ms["verify"] = MsSince(tv);
  return Status();
}

}  // namespace

Result<std::vector<GpuPair>> CheckGpuCompatibility(const json& manifest, CudaDriver* cuda, bool free_memory) {
  if (!manifest.contains("gpu")) return std::vector<GpuPair>{};
  HB_ASSIGN_OR_RETURN(GpuCaptureInfo captured, GpuCaptureInfoFromJson(manifest["gpu"]));
  if (captured.processes == 0) return std::vector<GpuPair>{};
  const auto want = captured.Captured();
  std::string what = std::to_string(captured.processes) + " CUDA process(es) on " + std::to_string(want.size()) +
                     " GPU(s) (" + want.front().name + ")";
  if (!cuda) return Incompatible("the snapshot holds the GPU state of " + what + "; this host has no usable NVIDIA driver");
  // The driver's checkpoint format is its own: a different driver branch may
  // not read it. Refuse rather than find out half-way through a restore.
  const std::string here = cuda->DriverVersion(), there = captured.driver_version;
  auto branch = [](const std::string& v) { return v.substr(0, v.find('.')); };
  if (!here.empty() && !there.empty() && branch(here) != branch(there)) {
    return Incompatible("the snapshot's GPU state was captured with NVIDIA driver " + there + "; this host runs " +
                        here + " (restore on the same driver branch)");
  }
  HB_ASSIGN_OR_RETURN(auto devices, cuda->Devices(free_memory));
  return PlanGpuPairs(captured, devices);
}

namespace {

// The PIDs a snapshot's tree must get back: empty when it had a PID
// namespace of its own (any PIDs will do).
Result<std::vector<long>> RecordedPids(const json& manifest) {
  const json process = manifest.value("process", json::object());
  std::vector<long> pids;
  if (process.value("pid_namespace", true)) return pids;
  for (const auto& p : process.value("pids", json::array())) {
    if (!p.is_number_integer()) return Corrupt("manifest: process.pids holds a non-integer");
    pids.push_back(p.get<long>());
  }
  return pids;
}

}  // namespace

// A tree built without a PID namespace of its own comes back with its PIDs
// (CRIU restores every thread's ID); one in use here would fail CRIU midway.
Status CheckPidsFree(const json& manifest) {
  HB_ASSIGN_OR_RETURN(std::vector<long> pids, RecordedPids(manifest));
  std::vector<std::string> busy;
  for (long p : pids) {
    std::error_code ec;
    if (fs::exists("/proc/" + std::to_string(p), ec)) busy.push_back(std::to_string(p));
  }
  if (busy.empty()) return Status::Ok();
  std::string list;
  for (size_t i = 0; i < busy.size() && i < 8; ++i) list += (i ? ", " : "") + busy[i];
  if (busy.size() > 8) list += ", ...";
  return Incompatible(std::to_string(busy.size()) + " of the PIDs its process tree had are in use on this " +
                      "host (" + list + "); it was built without a PID namespace of its own (--pid-namespace " +
                      "off, or auto on a GPU host), so restore it where they are free (a fresh container " +
                      "or host), or stop the process holding them");
}

void ReservePids(const json& manifest) {
  auto pids = RecordedPids(manifest);
  if (!pids.ok() || pids->empty()) return;  // a bad list is CheckPidsFree's to report
  const long top = *std::max_element(pids->begin(), pids->end());
  long last = 0;
  std::ifstream("/proc/sys/kernel/ns_last_pid") >> last;
  // Needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, which CRIU needs anyway;
  // without it CheckPidsFree and CRIU still say what collided.
  if (top > last) std::ofstream("/proc/sys/kernel/ns_last_pid") << top;
}

Result<RestoreResult> RestoreReplica(const RestoreOptions& opts, Criu& criu, const RestoreEvents& ev,
                                     CudaDriver* cuda) {
  auto phase = [&](const std::string& p) {
    if (ev.on_phase) ev.on_phase(p);
  };
  const auto t0 = Clock::now();
  const auto origin = TimeOrigin(opts, t0);
  RestoreResult res;
  if (opts.started) res.timings_ms["startup"] = MsBetween(origin, t0);

  // This restore's job (host/job.h): the restored tree's cgroup and the work
  // dir are ended/removed by a janitor if this process dies, whatever kills
  // it (a supervised replica dies with its supervisor); starting it sweeps
  // what dead builds and restores left.
  HB_ASSIGN_OR_RETURN(std::shared_ptr<host::Job> job, host::Job::Start({.kind = "restore"}));

  phase("open");
  HB_ASSIGN_OR_RETURN(auto reader, snapfile::SnapshotReader::Open(opts.snapshot_path, {opts.base_path}));
  json manifest = json::parse(reader->manifest_json(), nullptr, false);
  if (!manifest.is_object() || manifest.value("format", "") != "hotboot-snapshot-manifest") {
    return Corrupt(opts.snapshot_path + ": manifest is not a hotboot snapshot manifest");
  }

  // Before this process starts a thread or CRIU: new PIDs are handed out
  // above the ones the snapshot's tree must get back.
  ReservePids(manifest);

  phase("check");
  auto criu_version = criu.Version();
  auto problems = CheckCompatibility(manifest, ReadHostInfo(), criu_version.ok() ? *criu_version : "");
  if (!problems.empty()) {
    return Incompatible("snapshot " + opts.snapshot_path + " cannot be restored on this host:" +
                        DescribeProblems(problems));
  }
  HB_ASSIGN_OR_RETURN(const int port, ReplicaPort(manifest, opts.port));
  if (!PortAvailable(opts.host, port)) {
    return FailedPrecondition("port " + std::to_string(port) + " on " + opts.host + " is already in use; " +
                              (IsTransparent(manifest) ? "this snapshot's server can only listen there; free it"
                                                       : "pick a free --port"));
  }
  HB_RETURN_IF_ERROR(CheckPidsFree(manifest).Prefixed("snapshot " + opts.snapshot_path + " cannot be restored here"));
  // The GPUs' model, compute capability and count (and the driver branch)
  // are checked now, before anything is touched. Their free memory takes a
  // CUDA context (about 0.2 s on an H100): that check runs beside the unpack
  // and the CRIU restore and is joined before the GPU state is restored; if
  // the memory is not there after all, the restored tree is ended unready.
  const json gpu_manifest = manifest.contains("gpu") ? json{{"gpu", manifest["gpu"]}} : json::object();
  const std::string refused = "snapshot " + opts.snapshot_path + " cannot be restored on this host";
  auto fits = CheckGpuCompatibility(gpu_manifest, cuda, /*free_memory=*/false);
  if (!fits.ok()) return fits.status().Prefixed(refused);
  std::vector<GpuPair> gpu_pairs = std::move(fits).value();
  std::future<std::pair<Result<std::vector<GpuPair>>, double>> gpu_check;
  if (cuda && !gpu_pairs.empty()) {
    gpu_check = std::async(std::launch::async, [gpu_manifest, cuda] {
      const auto tg = Clock::now();
      auto pairs = CheckGpuCompatibility(gpu_manifest, cuda, /*free_memory=*/true);
      return std::make_pair(std::move(pairs), MsSince(tg));
    });
  }
  const int gpu_processes = manifest.contains("gpu") ? manifest["gpu"].value("processes", 0) : 0;
  res.timings_ms["check"] = MsSince(t0);

  phase("unpack");
  const auto tu = Clock::now();
  uint64_t raw_bytes = 0;
  for (const auto& sec : reader->sections()) {
    if (sec.name.rfind("criu/", 0) == 0) raw_bytes += sec.raw_size;
  }
  HB_ASSIGN_OR_RETURN(TempDir work, TempDir::Make(opts.work_root, raw_bytes, *job));
  const std::string images = work.path() + "/images";
  fs::create_directories(images);
  HB_RETURN_IF_ERROR(reader->ExtractTo(images, "criu/", opts.threads));
  res.timings_ms["unpack"] = MsSince(tu);

  // Files the snapshot provides (the server's weights): reuse one already on
  // this host (content-addressed name, same size; the digest check below
  // catches anything else), or extract it next to its final path and rename,
  // never rewriting a file another replica maps.
  phase("weights");
  const auto tw = Clock::now();
  const json provided = manifest.value("process", json::object()).value("provided_files", json::array());
  for (const auto& f : provided) {
    const std::string path = f.value("path", ""), section = f.value("section", "");
    const uint64_t size = f.value("size", uint64_t{0});
    std::error_code ec;
    if (path.empty() || section.rfind("weights/", 0) != 0) return Corrupt("manifest: bad provided_files entry");
    if (fs::exists(path, ec) && fs::file_size(path, ec) == size) continue;
    const fs::path dir = fs::path(path).parent_path();
    fs::create_directories(dir, ec);
    const fs::path stage = dir / (".extract." + std::to_string(::getpid()));
    fs::create_directories(stage, ec);
    if (ec) return IoError("create " + stage.string() + ": " + ec.message());
    Status s = reader->ExtractTo(stage.string(), section.substr(0, section.rfind('/') + 1), opts.threads);
    const fs::path got = stage / fs::path(section).filename();
    if (s.ok() && ::rename(got.c_str(), path.c_str()) != 0) s = ErrnoError("rename " + got.string(), errno);
    fs::remove_all(stage, ec);
    HB_RETURN_IF_ERROR(s.Prefixed("weights for " + path));
  }
  res.timings_ms["weights"] = MsSince(tw);

  phase("criu-restore");
  const auto tr = Clock::now();
  const json proc = manifest.value("process", json::object());
  std::vector<std::string> keys = proc.value("fd_keys", std::vector<std::string>{});
  HB_ASSIGN_OR_RETURN(ReplicaPipes pipes, MakeReplicaPipes(opts.log_file));
  CriuRestoreOptions ro;
  ro.images_dir = images;
  ro.work_dir = work.path();
  // The restored tree starts in a cgroup of its own (CRIU runs in it).
  HB_ASSIGN_OR_RETURN(std::shared_ptr<host::Cgroup> cgroup, job->NewCgroup());
  if (cgroup) ro.cgroup = cgroup->path();
  // One pipe behind two fds (a transparent server's stdout and stderr both
  // go to the log) is inherited once, by the higher fd: the log.
  std::set<std::string> inherited;
  for (int fd = std::min<int>(3, static_cast<int>(keys.size())) - 1; fd >= 0; --fd) {
    if (keys[fd].rfind("pipe:", 0) == 0 && inherited.insert(keys[fd]).second) {
      ro.inherit_fds.emplace_back(pipes.child_fds[fd], keys[fd]);
    }
  }
  auto pid = criu.Restore(ro);
  pipes.CloseChildEnds();
  if (!pid.ok()) {
    pipes.CloseAll();
    return pid.status().Prefixed("CRIU restore");
  }
  auto replica = std::make_unique<Replica>(*pid, pipes.control_write, pipes.control_read,
                                           pipes.log_read, ev.on_server_log);
  replica->Contain(job, std::move(cgroup));  // from here a failure ends the whole tree
  res.timings_ms["criu_restore"] = MsSince(tr);

  if (gpu_check.valid()) {
    const auto tj = Clock::now();
    auto [pairs, ms] = gpu_check.get();
    res.timings_ms["gpu_check_wait"] = MsSince(tj);  // what the restore waited for it
    res.timings_ms["gpu_check_overlapped"] = ms;     // all of it, beside unpack and CRIU
    if (!pairs.ok()) return pairs.status().Prefixed(refused + "; the restored processes were ended");
    gpu_pairs = std::move(pairs).value();
  }
  if (gpu_processes > 0) {
    // Nothing runs CUDA until this is done: the restored processes are
    // checkpointed on the GPU side, their CUDA calls blocked by the driver.
    phase("gpu-restore");
    auto g = RestoreGpuProcesses(*cuda, ProcessTree(*pid), gpu_pairs, gpu_processes);
    if (!g.ok()) return g.status().Prefixed("the replica's GPU state was not restored; it is not ready");
    res.timings_ms["gpu_restore"] = g->restore_ms;
    res.timings_ms["gpu_unlock"] = g->unlock_ms;
  }

  if (IsTransparent(manifest)) {
    HB_RETURN_IF_ERROR(VerifyTransparent(manifest, opts, port, *replica, phase, &res));
  } else {
    RestoreOptions o = opts;
    o.port = port;
    HB_RETURN_IF_ERROR(VerifyCooperative(manifest, o, *replica, phase, &res));
  }
  res.time_to_ready_ms = MsSince(origin);
  res.timings_ms["total"] = res.time_to_ready_ms;
  res.port = port;
  res.replica = std::move(replica);
  phase("ready");
  return res;
}

Result<RestoreResult> ColdBootFromManifest(const json& manifest, const RestoreOptions& opts,
                                           const RestoreEvents& ev) {
  const auto t0 = Clock::now();
  const auto origin = TimeOrigin(opts, t0);
  std::vector<std::string> cmd =
      manifest.value("process", json::object()).value("command", std::vector<std::string>{});
  if (cmd.empty()) return FailedPrecondition("the manifest records no server command to boot cold");
  HB_ASSIGN_OR_RETURN(const int port, ReplicaPort(manifest, opts.port));
  if (!PortAvailable(opts.host, port)) {
    return FailedPrecondition("port " + std::to_string(port) + " is already in use; pick a free --port");
  }
  if (ev.on_phase) ev.on_phase("cold-boot");
  const bool transparent = IsTransparent(manifest);
  LaunchOptions lo;
  lo.argv = transparent ? cmd : WithPort(cmd, port);
  lo.log_file = opts.log_file;
  lo.new_pid_namespace = false;
  lo.stdout_to_log = transparent;
  // In a cgroup of its own, ended with its driver like a restored one.
  HB_ASSIGN_OR_RETURN(lo.job, host::Job::Start({.kind = "restore"}));
  HB_ASSIGN_OR_RETURN(auto replica, LaunchReplica(lo, ev.on_server_log));
  RestoreResult res;
  if (transparent) {
    const json http = manifest.value("http", json::object());
    auto gone = [&]() -> std::string { return replica->Exited() ? "it exited: " + replica->FinalLogTail() : ""; };
    HB_RETURN_IF_ERROR(WaitHttpReady(opts.host, port, http.value("ready_path", "/health"), std::chrono::minutes(10),
                                     gone)
                           .Prefixed("cold boot"));
  } else {
    auto warm = replica->WaitForState("warm", std::chrono::minutes(10));
    if (!warm.ok()) return warm.status().Prefixed("cold boot");
    res.instance = warm->value("instance", "");
  }
  res.cold = true;
  res.control_channel = !transparent;
  res.port = port;
  // From opts.started, the time before the cold boot (for `hotboot restore
  // --fallback-cold`: its startup and the restore attempt that failed) is
  // part of what the caller waited for.
  if (opts.started) res.timings_ms["before_cold_boot"] = MsBetween(origin, t0);
  res.timings_ms["cold_boot"] = MsSince(t0);
  res.time_to_ready_ms = MsSince(origin);
  res.timings_ms["total"] = res.time_to_ready_ms;
  res.replica = std::move(replica);
  return res;
}

}  // namespace hotboot
