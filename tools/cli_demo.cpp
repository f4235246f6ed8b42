// `hotboot demo`: the main job end to end on the reference server: generate
// a model, cold-boot the server and time it to ready, build a snapshot,
// restore it as a new replica, restore it again on a host made to look fresh
// (no weights file, page cache dropped), and compare them side by side.
#include <fcntl.h>
#include <signal.h>
#include <linux/magic.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/builder.h"
#include "hotboot/http_client.h"
#include "hotboot/model.h"
#include "hotboot/presets.h"
#include "hotboot/restore.h"
#include "timeline.h"

namespace hotboot::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct DemoArgs {
  std::string model;
  std::string preset = "small";
  std::string work_dir;
  int port = 18080;
  bool json_out = false;
  bool keep = false;
  bool no_fresh_host = false;
  std::string timeline;  // --timeline FILE.svg
};

const char* kPrompt = "User: I liked the film about a lonely robot. What should I watch next?\nAssistant:";
const int kMaxTokens = 16;

struct Measured {
  double ready_ms = 0;
  double first_ms = 0;
  double steady_ms = 0;
  std::vector<int> tokens;
  std::map<std::string, double> boot_phases_ms;  // cold boot: the server's /metrics
};

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// First request after ready, then the median of three more.
Status MeasureRequests(int port, Measured* m) {
  json req = {{"prompt", kPrompt}, {"max_tokens", kMaxTokens}};
  std::vector<double> steady;
  for (int i = 0; i < 4; ++i) {
    HB_ASSIGN_OR_RETURN(HttpResponse r, HttpRequest("127.0.0.1", port, "POST", "/v1/generate", req.dump(),
                                                    std::chrono::minutes(5)));
    if (r.status != 200) return FailedPrecondition("generate answered " + std::to_string(r.status) + ": " + r.body);
    json j = json::parse(r.body, nullptr, false);
    if (i == 0) {
      m->first_ms = r.elapsed_ms;
      m->tokens = j.value("tokens", std::vector<int>{});
    } else {
      steady.push_back(r.elapsed_ms);
    }
  }
  std::sort(steady.begin(), steady.end());
  m->steady_ms = steady[steady.size() / 2];
  return Status::Ok();
}

// Both times to ready count from just before the demo forks the process
// (the server, or `hotboot restore`) until the demo sees it ready.
Status ColdBoot(const std::string& server, const std::string& model, int port, const std::string& log,
                Measured* m) {
  if (!PortAvailable("127.0.0.1", port)) return FailedPrecondition("port " + std::to_string(port) + " is in use; pass --port");
  const auto t0 = Clock::now();
  LaunchOptions lo;
  lo.argv = {server, "--model", model, "--port", std::to_string(port)};
  lo.new_pid_namespace = false;
  lo.log_file = log;
  HB_ASSIGN_OR_RETURN(auto replica, LaunchReplica(lo, nullptr));
  // Poll /readyz as a load balancer would.
  for (;;) {
    auto r = HttpRequest("127.0.0.1", port, "GET", "/readyz", "", std::chrono::seconds(2));
    if (r.ok() && r->status == 200) break;
    if (auto st = replica->Exited()) return FailedPrecondition("cold server exited before ready; see " + log);
    if (MsSince(t0) > 30 * 60 * 1000) return Timeout("cold server not ready within 30 minutes");
    ::usleep(10 * 1000);
  }
  m->ready_ms = MsSince(t0);
  HB_RETURN_IF_ERROR(MeasureRequests(port, m));
  // Its boot phases, for the timeline.
  if (auto r = HttpRequest("127.0.0.1", port, "GET", "/metrics", "", std::chrono::seconds(10)); r.ok() && r->status == 200) {
    m->boot_phases_ms = BootPhasesFromMetrics(r->body);
  }
  ::kill(replica->pid(), SIGTERM);
  replica->Wait();
  return Status::Ok();
}

// `hotboot restore` run as its own process, the way a user runs it, so that
// everything it pays (exec, loading the CUDA driver and libcriu, ...) is in
// its time to ready. It stays in the foreground as the replica's supervisor;
// its one --json line arrives on a pipe once the replica passed the
// readiness check. Stopping it (SIGTERM) stops the replica; if the demo
// dies, the kernel sends it SIGTERM.
class RestoreProcess {
 public:
  // Execs `program` with `argv` (argv[0] is what the process sees as its name).
  static Result<std::unique_ptr<RestoreProcess>> Start(const std::string& program, std::vector<std::string> argv) {
    std::vector<char*> args;
    for (auto& s : argv) args.push_back(s.data());
    args.push_back(nullptr);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return ErrnoError("pipe", errno);
    const pid_t parent = ::getpid();
    sigset_t none;
    sigemptyset(&none);
    // vfork, not fork: the demo's address space (it has built and packed a
    // snapshot) is not copied for a process that execs at once, a cost a
    // shell starting `hotboot restore` does not have either. The child shares
    // our memory until exec: nothing but system calls until then.
    const pid_t pid = ::vfork();
    if (pid < 0) {
      const int e = errno;
      ::close(out[0]);
      ::close(out[1]);
      return ErrnoError("vfork", e);
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);
      const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (in < 0 || ::dup2(in, STDIN_FILENO) < 0 || ::dup2(out[1], STDOUT_FILENO) < 0) ::_exit(127);
      ::close_range(3, ~0u, 0);  // nothing of the demo's leaks into the restore
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(program.c_str(), args.data());
      ::_exit(127);
    }
    ::close(out[1]);
    return std::unique_ptr<RestoreProcess>(new RestoreProcess(pid, out[0]));
  }
  RestoreProcess(const RestoreProcess&) = delete;
  RestoreProcess& operator=(const RestoreProcess&) = delete;
  ~RestoreProcess() { Stop(); }

  // Its result once the replica is ready; an error when it exits first.
  Result<json> WaitReady() {
    std::string line;
    char buf[4096];
    while (line.find('\n') == std::string::npos) {
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("read from hotboot restore", errno);
      if (n == 0) {
        const int status = Stop();
        return FailedPrecondition("hotboot restore " + Describe(status) + " before reporting a ready replica " +
                                  "(its messages are above)");
      }
      line.append(buf, static_cast<size_t>(n));
    }
    json j = json::parse(line.substr(0, line.find('\n')), nullptr, false);
    if (!j.is_object()) return Internal("hotboot restore printed no JSON result: " + line.substr(0, 200));
    return j;
  }

  // SIGTERM (the supervisor forwards it to the replica and waits for it),
  // then its exit status; idempotent.
  int Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
    if (out_ >= 0) ::close(std::exchange(out_, -1));
    return status_;
  }

  static std::string Describe(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by ") + strsignal(WTERMSIG(status));
    return "ended";
  }

 private:
  RestoreProcess(pid_t pid, int out) : pid_(pid), out_(out) {}
  pid_t pid_;
  int out_;
  int status_ = 0;
};

// The servers' weights directory: one the demo creates (mkdtemp, 0700) under
// $HOTBOOT_WEIGHTS_DIR or /dev/shm, passed to the cold server and to the build
// through the environment (LaunchReplica execs with ours). Making the host look
// fresh deletes the snapshot's weights files, which is only safe in a
// directory nobody else uses. Removed at the end unless kept.
class DemoWeightsDir {
 public:
  static Result<std::unique_ptr<DemoWeightsDir>> Make(const std::string& work) {
    const char* env = std::getenv("HOTBOOT_WEIGHTS_DIR");
    std::string base = env && *env ? env : "/dev/shm";
    std::error_code ec;
    if (!(env && *env) && !fs::is_directory(base, ec)) base = work;
    fs::create_directories(base, ec);
    if (ec) return IoError("create " + base + ": " + ec.message());
    std::string tmpl = (fs::path(base) / "hotboot-demo-weights.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) return ErrnoError("mkdtemp " + tmpl, errno);
    auto dir = std::unique_ptr<DemoWeightsDir>(new DemoWeightsDir(fs::path(tmpl).lexically_normal()));
    // What mkdtemp promises, checked: ours, a directory (not a link), 0700.
    struct stat st{};
    if (::lstat(tmpl.c_str(), &st) != 0) return ErrnoError("stat " + tmpl, errno);
    if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
      return FailedPrecondition(tmpl + " is not a private directory of ours after mkdtemp");
    }
    if (::setenv("HOTBOOT_WEIGHTS_DIR", tmpl.c_str(), 1) != 0) return ErrnoError("setenv HOTBOOT_WEIGHTS_DIR", errno);
    return dir;
  }
  DemoWeightsDir(const DemoWeightsDir&) = delete;
  DemoWeightsDir& operator=(const DemoWeightsDir&) = delete;
  ~DemoWeightsDir() {
    std::error_code ec;
    if (!keep_) fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  void Keep() { keep_ = true; }

 private:
  explicit DemoWeightsDir(fs::path p) : path_(std::move(p)) {}
  fs::path path_;
  bool keep_ = false;
};

// A restore as timed by the demo.
struct RestoreRun {
  Measured m;
  json phases;               // hotboot restore's own, "startup" and "total" on the demo's clock
  double reported_ms = 0;    // hotboot restore's own time to ready
};

// `hotboot restore` as its own process, timed from just before the fork to
// the replica verified, then its requests measured, then stopped. On failure
// the message is printed and the exit code returned.
int RestoreAndMeasure(const std::string& self, const std::string& snap, int port, const std::string& log,
                      RestoreRun* out) {
  std::vector<std::string> argv = {self};
  if (Quiet()) argv.push_back("--quiet");
  for (const std::string& s : {std::string("restore"), snap, std::string("--port"), std::to_string(port),
                               std::string("--json"), std::string("--log"), log}) {
    argv.push_back(s);
  }
  const auto t0 = Clock::now();
  // This very executable, through /proc/self/exe rather than its path: a
  // rebuild while the demo runs replaces the file at the path (exec would
  // fail, or run another build than the one that built the snapshot).
  auto child = RestoreProcess::Start("/proc/self/exe", argv);
  if (!child.ok()) return Fail(child.status().Prefixed("start hotboot restore"));
  auto restored = (*child)->WaitReady();
  out->m.ready_ms = MsSince(t0);
  if (!restored.ok()) {
    const int rc = Fail(restored.status());
    const int st = (*child)->Stop();  // its exit code says more (3: incompatible, 5: not ready, ...)
    return WIFEXITED(st) && WEXITSTATUS(st) > kExitFailure && WEXITSTATUS(st) <= kExitTimeout ? WEXITSTATUS(st) : rc;
  }
  // Its phases, as it reports them, except "startup": its own clock starts at
  // the kernel's record of its start (10 ms ticks); the demo's started just
  // before the fork, so "startup" is what is left of the demo's measure (fork,
  // exec, linking, options, drivers; and the result line's trip back).
  out->phases = restored->value("timings_ms", json::object());
  const double own_total = out->phases.value("total", 0.0), own_startup = out->phases.value("startup", 0.0);
  out->phases["startup"] = std::max(0.0, out->m.ready_ms - (own_total - own_startup));
  out->phases["total"] = out->m.ready_ms;
  out->reported_ms = restored->value("time_to_ready_ms", 0.0);
  if (Status s = MeasureRequests(port, &out->m); !s.ok()) return Fail(s);
  if (const int st = (*child)->Stop(); !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    Note("warning: hotboot restore " + RestoreProcess::Describe(st) + " when stopped");
  }
  return kExitOk;
}

// What making this host look fresh did.
struct FreshHost {
  std::vector<std::string> removed;  // weights files deleted (restore extracts them again)
  uint64_t removed_bytes = 0;
  std::vector<std::string> kept;     // provided files outside the demo's directory: left alone
  Status page_cache;                 // OK when sync + drop_caches worked
  double prepare_ms = 0;
};

// Writes back dirty pages, then drops the clean ones with dentries and inodes
// (root only). tmpfs pages (/dev/shm) are not dropped: they have no backing.
Status DropPageCache() {
  ::sync();
  const char* knob = "/proc/sys/vm/drop_caches";
  const int fd = ::open(knob, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + std::string(knob), errno);
  const ssize_t n = ::write(fd, "3\n", 2);
  const int e = errno;
  ::close(fd);
  if (n != 2) return ErrnoError("write 3 to " + std::string(knob), n < 0 ? e : EIO);
  return Status::Ok();
}

// Makes this host look like one that never ran the server: the weights files
// the snapshot carries are removed (only from the demo's own directory), so
// that restore extracts them from the snapshot, and the page cache is dropped.
FreshHost MakeHostLookFresh(const Manifest& manifest, const DemoWeightsDir* dir) {
  const auto t0 = Clock::now();
  FreshHost f;
  for (const auto& p : manifest.process.provided_files) {
    const fs::path path = (fs::path(manifest.process.weights_dir) / p.name).lexically_normal();
    if (!dir || path.parent_path() != dir->path()) {
      f.kept.push_back(path.string());
      continue;
    }
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    if (::unlink(path.c_str()) == 0) {
      f.removed.push_back(path.string());
      f.removed_bytes += ec ? 0 : size;
    } else if (errno != ENOENT) {
      f.kept.push_back(path.string());
    }
  }
  f.page_cache = DropPageCache();
  f.prepare_ms = MsSince(t0);
  return f;
}

bool OnTmpfs(const std::string& path) {
  struct statfs s{};
  return ::statfs(path.c_str(), &s) == 0 && s.f_type == TMPFS_MAGIC;
}

json RestoreJson(const RestoreRun& r) {
  return {{"time_to_ready_ms", r.m.ready_ms}, {"first_request_ms", r.m.first_ms}, {"steady_request_ms", r.m.steady_ms},
          {"phases_ms", r.phases}, {"reported_by_restore_ms", r.reported_ms}};
}

std::map<std::string, double> MsMap(const json& phases) {
  std::map<std::string, double> out;
  for (const auto& [k, v] : phases.items()) {
    if (v.is_number()) out[k] = v.get<double>();
  }
  return out;
}

// The cold boot and the restores as lanes on one time axis (--timeline).
Status WriteDemoTimeline(const std::string& path, const std::string& model, uint64_t model_bytes,
                         const Measured& cold, const RestoreRun& rest, const RestoreRun* fresh, bool fresh_cache_dropped) {
  auto note = [](const Measured& m) { return "first request " + Ms(m.first_ms); };
  std::vector<Lane> lanes;
  Lane c = ColdBootLane("cold boot", cold.boot_phases_ms, cold.ready_ms);
  c.note = note(cold);
  lanes.push_back(std::move(c));
  auto faster = [&](const RestoreRun& x) {
    char b[48];
    std::snprintf(b, sizeof b, "%.1fx sooner", x.m.ready_ms > 0 ? cold.ready_ms / x.m.ready_ms : 0.0);
    return std::string(b);
  };
  Lane r = RestoreLane("restore", MsMap(rest.phases));
  r.note = "verified, " + faster(rest) + "\n" + note(rest.m);
  lanes.push_back(std::move(r));
  if (fresh) {
    Lane f = RestoreLane(fresh_cache_dropped ? "restore, fresh host" : "fresh host (cache warm)", MsMap(fresh->phases));
    f.note = "verified, " + faster(*fresh) + "\n" + note(fresh->m);
    lanes.push_back(std::move(f));
  }
  TimelineOptions o;
  o.title = "hotboot demo: cold boot vs restore to a ready replica";
  o.subtitle = fs::path(model).filename().string() + " (" + HumanBytes(model_bytes) + ") on " +
               (cold.boot_phases_ms.count("cuda_init") ? std::string("a GPU")
                                                        : std::to_string(std::max(1u, std::thread::hardware_concurrency())) +
                                                              " CPU cores") +
               "; times from the fork of the process to ready (restore: canary verified)";
  return WriteTimelineFile(path, RenderTimelineSvg(lanes, o));
}

std::string PhaseLine(const json& phases) {
  std::string s;
  for (const auto& [k, v] : phases.items()) s += " " + k + " " + Ms(v.get<double>()) + ";";
  return s;
}

int RunDemo(const DemoArgs& a) {
  auto server = FindSibling("hotboot-server");
  if (!server.ok()) return Fail(server.status());
  // A GPU-only preset (8b) is refused by EnsureModel before it is written.
  auto model = EnsureModel(a.model, a.preset);
  if (!model.ok()) return Fail(model.status());
  if (Status s = CheckServable(*model, "auto"); !s.ok()) return Fail(s);
  std::string work = a.work_dir.empty() ? fs::temp_directory_path().string() + "/hotboot-demo" : a.work_dir;
  fs::create_directories(work);
  const std::string snap = work + "/replica.hbsnap";
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return Fail(IoError("cannot find this executable (/proc/self/exe): " + ec.message()));
  // "none" keeps the CPU server's weights in anonymous memory: no file to remove.
  std::unique_ptr<DemoWeightsDir> weights_dir;
  if (const char* env = std::getenv("HOTBOOT_WEIGHTS_DIR"); !(env && std::string(env) == "none")) {
    auto d = DemoWeightsDir::Make(work);
    if (!d.ok()) return Fail(d.status().Prefixed("weights directory"));
    weights_dir = std::move(*d);
  }
  const int steps = a.no_fresh_host ? 3 : 4;
  auto step = [steps](int n, const std::string& what) {
    Note(std::to_string(n) + "/" + std::to_string(steps) + " " + what);
  };

  step(1, "cold boot of the reference server on " + *model +
              (weights_dir ? ", weights in " + weights_dir->path().string() : std::string()));
  Measured cold;
  if (Status s = ColdBoot(*server, *model, a.port, work + "/cold.log", &cold); !s.ok()) return Fail(s);
  Note("    ready in " + Ms(cold.ready_ms) + ", first request " + Ms(cold.first_ms));

  step(2, "building a snapshot at " + snap);
  BuildSpec spec;
  spec.command = {*server, "--model", *model, "--port", "0", "--control-stdio"};
  spec.canary = {kPrompt, 8, 3};
  spec.labels["model"] = *model;
  std::ofstream build_log(work + "/build.log");
  BuildEvents bev;
  bev.on_phase = [](const std::string& p) { Note("    " + p); };
  bev.on_server_log = [&](const std::string& l) { build_log << l << '\n'; };
  auto criu = MakeLibCriu();
  // On a GPU host the server runs on the GPU: its GPU state goes through the
  // driver's checkpoint API like `hotboot build` and `hotboot restore` do.
  Status cuda_failed;
  auto cuda = CudaDriverIfPresent("", &cuda_failed);
  if (!cuda_failed.ok()) return Fail(cuda_failed);
  auto built = BuildSnapshot(spec, snap, *criu, bev, cuda.get());
  build_log.close();  // not inherited by the restore process
  if (!built.ok()) return Fail(built.status());
  const Manifest& m = built->manifest;

  step(3, "restoring the snapshot as a new replica: hotboot restore, a process of its own");
  RestoreRun rest;
  if (int rc = RestoreAndMeasure(self.string(), snap, a.port + 1, work + "/restored.log", &rest); rc != kExitOk) {
    return rc;
  }
  if (rest.m.tokens != cold.tokens) {
    return Fail(FailedPrecondition("the restored replica answered differently from the cold one"));
  }

  // The same restore on a host that never ran the server: no weights file,
  // nothing in the page cache. Its own port: the first replica's may linger.
  std::optional<RestoreRun> fresh;
  FreshHost fh;
  const bool snap_on_tmpfs = OnTmpfs(work);
  if (!a.no_fresh_host) {
    fh = MakeHostLookFresh(m, weights_dir.get());
    step(4, "restoring again as on a fresh host: " + std::to_string(fh.removed.size()) + " weights file (" +
                HumanBytes(fh.removed_bytes) + ") removed, " +
                (fh.page_cache.ok() ? std::string("page cache dropped")
                                    : "page cache NOT dropped (" + fh.page_cache.message() + ")"));
    for (const auto& k : fh.kept) Note("    warning: " + k + " is still there (not in the demo's weights directory)");
    if (snap_on_tmpfs) Note("    note: the snapshot is on tmpfs (" + work + "): it stays in memory");
    fresh.emplace();
    if (int rc = RestoreAndMeasure(self.string(), snap, a.port + 2, work + "/restored-fresh.log", &*fresh);
        rc != kExitOk) {
      return rc;
    }
    if (fresh->m.tokens != cold.tokens) {
      return Fail(FailedPrecondition("the replica restored on the fresh host answered differently from the cold one"));
    }
  }

  uint64_t model_bytes = fs::file_size(*model);
  if (!a.timeline.empty()) {
    Status s = WriteDemoTimeline(a.timeline, *model, model_bytes, cold, rest, fresh ? &*fresh : nullptr,
                                 fh.page_cache.ok());
    if (!s.ok()) return Fail(s.Prefixed("--timeline"));
    Note("timeline written to " + a.timeline);
  }
  // What the fresh host lacked, in words: for the JSON, and under the table.
  std::vector<std::string> fresh_state = {
      fh.removed.empty() ? std::string("no weights file to remove")
                         : std::to_string(fh.removed.size()) + " weights file (" + HumanBytes(fh.removed_bytes) +
                               ") removed from the demo's weights directory: restore extracts it from the snapshot",
      fh.page_cache.ok() ? std::string("page cache dropped (sync, drop_caches=3)")
                         : "page cache warm, not dropped (" + fh.page_cache.message() + ")"};
  if (!fh.kept.empty()) fresh_state.push_back(std::to_string(fh.kept.size()) + " left in place (not the demo's)");
  auto joined = [&](const std::string& sep) {
    std::string s;
    for (const auto& p : fresh_state) s += (s.empty() ? "" : sep) + p;
    return s;
  };
  if (a.json_out) {
    json out = {{"model", *model},
                {"model_bytes", model_bytes},
                {"cold", {{"time_to_ready_ms", cold.ready_ms}, {"first_request_ms", cold.first_ms}, {"steady_request_ms", cold.steady_ms}}},
                {"restore", RestoreJson(rest)},
                {"time_to_ready_from", "the demo's fork of the process (server or hotboot restore) to ready"},
                {"speedup_time_to_ready", cold.ready_ms / rest.m.ready_ms},
                {"weights_dir", weights_dir ? weights_dir->path().string() : std::string("none")},
                {"snapshot_bytes", built->file_size},
                {"criu_images_bytes", built->images_bytes},
                {"weights_bytes", built->weights_bytes},
                {"build_timings_ms", ToJsonValue(m)["timings_ms"]},
                {"cold_boot_phases_ms", cold.boot_phases_ms}};
    if (!a.timeline.empty()) out["timeline"] = a.timeline;
    if (fresh) {
      json f = RestoreJson(*fresh);
      f["weights_files_removed"] = fh.removed;
      f["weights_bytes_removed"] = fh.removed_bytes;
      f["weights_files_left_in_place"] = fh.kept;
      f["page_cache_dropped"] = fh.page_cache.ok();
      if (!fh.page_cache.ok()) f["page_cache_not_dropped_because"] = fh.page_cache.message();
      f["snapshot_on_tmpfs"] = snap_on_tmpfs;
      f["host_state"] = joined("; ");
      f["prepare_ms"] = fh.prepare_ms;
      out["restore_fresh_host"] = f;
      out["speedup_time_to_ready_fresh_host"] = cold.ready_ms / fresh->m.ready_ms;
    }
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    // A fresh host whose page cache could not be dropped says so in its heading.
    const std::string fresh_head = fh.page_cache.ok() ? "restore, fresh host" : "fresh host (cache warm)";
    std::printf("\nhotboot demo: %s (%s)\n\n", fs::path(*model).filename().c_str(), HumanBytes(model_bytes).c_str());
    std::printf("%-28s %14s %14s", "", "cold boot", "restore");
    if (fresh) std::printf(" %24s", fresh_head.c_str());
    std::printf(" %10s", "ratio");
    if (fresh) std::printf(" %13s", "ratio, fresh");
    std::printf("\n");
    auto row = [&](const char* name, double c, double r, double f) {
      std::printf("%-28s %14s %14s", name, Ms(c).c_str(), Ms(r).c_str());
      if (fresh) std::printf(" %24s", Ms(f).c_str());
      std::printf(" %9.1fx", r > 0 ? c / r : 0.0);
      if (fresh) std::printf(" %12.1fx", f > 0 ? c / f : 0.0);
      std::printf("\n");
    };
    const Measured none;
    const Measured& fm = fresh ? fresh->m : none;
    row("time to ready", cold.ready_ms, rest.m.ready_ms, fm.ready_ms);
    row("first request", cold.first_ms, rest.m.first_ms, fm.first_ms);
    row("steady request (median)", cold.steady_ms, rest.m.steady_ms, fm.steady_ms);
    std::printf("(time to ready: from the demo's fork of the process to ready; cold: first 200 from GET /readyz,\n"
                " polled every 10 ms; restore: `hotboot restore` reporting the replica verified, canary included)\n");
    if (fresh) {
      std::printf("(fresh host: the same restore again after making this host look new:\n %s)\n", joined(";\n ").c_str());
    }
    std::printf("\nrestore phases:%s\n", PhaseLine(rest.phases).c_str());
    if (fresh) std::printf("restore phases, fresh host:%s\n", PhaseLine(fresh->phases).c_str());
    std::printf("build: warm in %s, CRIU dump %s, pack %s\n", Ms(m.Timing("launch_to_warm")).c_str(),
                Ms(m.Timing("criu_dump")).c_str(), Ms(m.Timing("pack")).c_str());
    const uint64_t raw = built->images_bytes + built->weights_bytes;
    std::printf("snapshot %s vs raw %s: CRIU images %s + weights %s (%.1f%%)\n", HumanBytes(built->file_size).c_str(),
                HumanBytes(raw).c_str(), HumanBytes(built->images_bytes).c_str(), HumanBytes(built->weights_bytes).c_str(),
                100.0 * built->file_size / std::max<uint64_t>(1, raw));
    std::printf("%s replicas answered the same %zu tokens for the same prompt\n", fresh ? "all three" : "both",
                rest.m.tokens.size());
  }
  if (a.keep) {
    if (weights_dir) {
      weights_dir->Keep();
      Note("kept " + snap + " and the weights directory " + weights_dir->path().string());
    }
  } else {
    fs::remove(snap, ec);
  }
  return kExitOk;
}

}  // namespace

Runner AddDemo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  app.footer("Generate the default model (when missing), cold-boot the reference server and time it\n"
             "to ready, build a snapshot, restore it as a new replica (`hotboot restore`, run as a process\n"
             "of its own), then restore it again as on a fresh host, and print them side by side. Times to\n"
             "ready are wall clock from the demo's fork of the process: cold until GET /readyz answers 200\n"
             "(polled every 10 ms), restore until `hotboot restore` reports the replica verified (canary\n"
             "included).\n"
             "The servers put their weights file in a directory the demo creates for them\n"
             "($HOTBOOT_WEIGHTS_DIR or /dev/shm)/hotboot-demo-weights.XXXXXX, removed at the end.\n"
             "Fresh host: the snapshot's weights file is deleted from that directory (restore extracts it\n"
             "from the snapshot) and the whole machine's page cache is dropped (sync, then 3 >\n"
             "/proc/sys/vm/drop_caches, as root; when that fails the column says \"cache warm\").");
  app.add_option("-m,--model", a->model, "Model file (default: the preset's, generated when missing)");
  app.add_option("--preset", a->preset, "Model preset: tiny, small, 1b; 8b (Llama-3-8B's shape, ~16 GB) is GPU only")
      ->check(CLI::IsMember(PresetNames()));
  app.add_option("--work-dir", a->work_dir, "Where the snapshot and logs go (default $TMPDIR/hotboot-demo)");
  app.add_option("--port", a->port, "Cold server port; the restored replicas use port+1 and port+2");
  app.add_flag("--json", a->json_out, "Print the comparison as JSON");
  app.add_option("--timeline", a->timeline,
                 "Also draw the cold boot and the restores as phase timelines on one time axis, as an SVG\n"
                 "picture written to this file");
  app.add_flag("--keep", a->keep, "Keep the snapshot file and the servers' weights directory");
  app.add_flag("--no-fresh-host", a->no_fresh_host,
               "Skip the fresh-host restore (it deletes the demo's weights file and drops the whole\n"
               "machine's page cache: sync; echo 3 > /proc/sys/vm/drop_caches)");
  return [a] { return RunDemo(*a); };
}

}  // namespace hotboot::cli
