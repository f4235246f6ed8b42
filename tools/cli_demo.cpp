// `hotboot demo`: the main job end to end on the reference server: generate
// a model, cold-boot the server and time it to ready, build a snapshot,
// restore it as a new replica, and compare the two side by side.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <utility>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/builder.h"
#include "hotboot/http_client.h"
#include "hotboot/restore.h"

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
};

const char* kPrompt = "User: I liked the film about a lonely robot. What should I watch next?\nAssistant:";
const int kMaxTokens = 16;

struct Measured {
  double ready_ms = 0;
  double first_ms = 0;
  double steady_ms = 0;
  std::vector<int> tokens;
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
  static Result<std::unique_ptr<RestoreProcess>> Start(std::vector<std::string> argv) {
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
      ::execv(args[0], args.data());
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

int RunDemo(const DemoArgs& a) {
  auto server = FindSibling("hotboot-server");
  if (!server.ok()) return Fail(server.status());
  auto model = EnsureModel(a.model, a.preset);
  if (!model.ok()) return Fail(model.status());
  std::string work = a.work_dir.empty() ? fs::temp_directory_path().string() + "/hotboot-demo" : a.work_dir;
  fs::create_directories(work);
  const std::string snap = work + "/replica.hbsnap";

  Note("1/3 cold boot of the reference server on " + *model);
  Measured cold;
  if (Status s = ColdBoot(*server, *model, a.port, work + "/cold.log", &cold); !s.ok()) return Fail(s);
  Note("    ready in " + Ms(cold.ready_ms) + ", first request " + Ms(cold.first_ms));

  Note("2/3 building a snapshot at " + snap);
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

  Note("3/3 restoring the snapshot as a new replica: hotboot restore, a process of its own");
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return Fail(IoError("cannot find this executable (/proc/self/exe): " + ec.message()));
  const int restore_port = a.port + 1;
  std::vector<std::string> argv = {self.string()};
  if (Quiet()) argv.push_back("--quiet");
  for (const std::string& s : {std::string("restore"), snap, std::string("--port"), std::to_string(restore_port),
                               std::string("--json"), std::string("--log"), work + "/restored.log"}) {
    argv.push_back(s);
  }
  const auto t0 = Clock::now();
  auto child = RestoreProcess::Start(argv);
  if (!child.ok()) return Fail(child.status().Prefixed("start hotboot restore"));
  auto restored = (*child)->WaitReady();
  Measured rest;
  rest.ready_ms = MsSince(t0);
  if (!restored.ok()) {
    const int rc = Fail(restored.status());
    const int st = (*child)->Stop();  // its exit code says more (3: incompatible, 5: not ready, ...)
    return WIFEXITED(st) && WEXITSTATUS(st) > kExitFailure && WEXITSTATUS(st) <= kExitTimeout ? WEXITSTATUS(st) : rc;
  }
  // Its phases, as it reports them, except "startup": its own clock starts at
  // the kernel's record of its start (10 ms ticks); the demo's started just
  // before the fork, so "startup" is what is left of the demo's measure (fork,
  // exec, linking, options, drivers; and the result line's trip back).
  json phases = restored->value("timings_ms", json::object());
  const double own_total = phases.value("total", 0.0), own_startup = phases.value("startup", 0.0);
  phases["startup"] = std::max(0.0, rest.ready_ms - (own_total - own_startup));
  phases["total"] = rest.ready_ms;
  if (Status s = MeasureRequests(restore_port, &rest); !s.ok()) return Fail(s);
  if (const int st = (*child)->Stop(); !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    Note("warning: hotboot restore " + RestoreProcess::Describe(st) + " when stopped");
  }
  if (rest.tokens != cold.tokens) {
    return Fail(FailedPrecondition("the restored replica answered differently from the cold one"));
  }

  const json& m = built->manifest;
  uint64_t model_bytes = fs::file_size(*model);
  if (a.json_out) {
    json out = {{"model", *model},
                {"model_bytes", model_bytes},
                {"cold", {{"time_to_ready_ms", cold.ready_ms}, {"first_request_ms", cold.first_ms}, {"steady_request_ms", cold.steady_ms}}},
                {"restore", {{"time_to_ready_ms", rest.ready_ms}, {"first_request_ms", rest.first_ms}, {"steady_request_ms", rest.steady_ms}, {"phases_ms", phases},
                             {"reported_by_restore_ms", restored->value("time_to_ready_ms", 0.0)}}},
                {"time_to_ready_from", "the demo's fork of the process (server or hotboot restore) to ready"},
                {"speedup_time_to_ready", cold.ready_ms / rest.ready_ms},
                {"snapshot_bytes", built->file_size},
                {"criu_images_bytes", built->images_bytes},
                {"weights_bytes", built->weights_bytes},
                {"build_timings_ms", m["timings_ms"]}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("\nhotboot demo: %s (%s)\n\n", fs::path(*model).filename().c_str(), HumanBytes(model_bytes).c_str());
    std::printf("%-28s %14s %14s %10s\n", "", "cold boot", "restore", "ratio");
    auto row = [](const char* name, double c, double r) {
      std::printf("%-28s %14s %14s %9.1fx\n", name, Ms(c).c_str(), Ms(r).c_str(), r > 0 ? c / r : 0.0);
    };
    row("time to ready", cold.ready_ms, rest.ready_ms);
    row("first request", cold.first_ms, rest.first_ms);
    row("steady request (median)", cold.steady_ms, rest.steady_ms);
    std::printf("(time to ready: from the demo's fork of the process to ready; cold: first 200 from GET /readyz,\n"
                " polled every 10 ms; restore: `hotboot restore` reporting the replica verified, canary included)\n");
    std::printf("\nrestore phases:");
    for (const auto& [k, v] : phases.items()) std::printf(" %s %s;", k.c_str(), Ms(v.get<double>()).c_str());
    std::printf("\nbuild: warm in %s, CRIU dump %s, pack %s\n", Ms(m["timings_ms"]["launch_to_warm"].get<double>()).c_str(),
                Ms(m["timings_ms"]["criu_dump"].get<double>()).c_str(), Ms(m["timings_ms"]["pack"].get<double>()).c_str());
    const uint64_t raw = built->images_bytes + built->weights_bytes;
    std::printf("snapshot %s vs raw %s: CRIU images %s + weights %s (%.1f%%)\n", HumanBytes(built->file_size).c_str(),
                HumanBytes(raw).c_str(), HumanBytes(built->images_bytes).c_str(), HumanBytes(built->weights_bytes).c_str(),
                100.0 * built->file_size / std::max<uint64_t>(1, raw));
    std::printf("both replicas answered the same %zu tokens for the same prompt\n", rest.tokens.size());
  }
  if (!a.keep) fs::remove(snap);
  return kExitOk;
}

}  // namespace

Runner AddDemo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  app.footer("Generate the default model (when missing), cold-boot the reference server and time it\n"
             "to ready, build a snapshot, restore it as a new replica (`hotboot restore`, run as a process\n"
             "of its own), and print both side by side. Both times to ready are wall clock from the demo's\n"
             "fork of the process: cold until GET /readyz answers 200 (polled every 10 ms), restore until\n"
             "`hotboot restore` reports the replica verified (canary included).");
  app.add_option("-m,--model", a->model, "Model file (default: the preset's, generated when missing)");
  app.add_option("--preset", a->preset, "Model preset")->check(CLI::IsMember({"tiny", "small", "1b"}));
  app.add_option("--work-dir", a->work_dir, "Where the snapshot and logs go (default $TMPDIR/hotboot-demo)");
  app.add_option("--port", a->port, "Cold server port; the restored replica uses port+1");
  app.add_flag("--json", a->json_out, "Print the comparison as JSON");
  app.add_flag("--keep", a->keep, "Keep the snapshot file");
  return [a] { return RunDemo(*a); };
}

}  // namespace hotboot::cli
