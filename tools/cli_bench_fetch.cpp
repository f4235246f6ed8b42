// `hotboot bench fetch`: what a new host waits for when its snapshot lives
// in a registry. A network namespace the bench creates holds Debian's
// docker-registry and nginx; its loopback is shaped with tc (tbf) to each
// rate; every command that moves bytes runs inside it (`ip netns exec`). Per
// preset and rate, side by side: (a) curl the whole file, then restore it
// from disk; (b) `hotboot restore oci://...` streamed, as on a fresh host;
// (c) the same with the node cache and weights kept; (d) a cold boot of the
// server. A benchmark, not a test (STYLE.md 9): real processes, real bytes.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/http_client.h"
#include "hotboot/manifest.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// Inside the namespace nothing else listens: fixed ports.
constexpr int kRegistryPort = 5000;
constexpr int kFilePort = 8443;
constexpr int kFirstReplicaPort = 18600;
constexpr auto kRestoreTimeout = std::chrono::minutes(15);
constexpr auto kCommandTimeout = std::chrono::minutes(30);  // a build of the 1b preset, a 2 GB download at 1 Gbit/s
constexpr auto kServerStartTimeout = std::chrono::seconds(30);

struct FetchBenchArgs {
  std::vector<std::string> presets{"small", "1b"};
  std::vector<double> rates{1, 5, 10};
  int repeat = 1;
  std::string workdir;  // default $HOTBOOT_HOME/bench-fetch
  bool plain_http = false;
  bool json_out = false;
  bool keep_going = false;
  bool keep = false;
  bool rebuild = false;
};

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string Fixed(double v, int digits = 2) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string Joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + (a.find(' ') == std::string::npos ? a : "'" + a + "'");
  return s;
}

// The last lines of a log, for an error message.
std::string LogTail(const std::string& path, int lines = 12) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0; i < all.size(); ++i) {
    out += "\n    " + all[i];
  }
  return out.empty() ? "" : "; the end of " + path + ":" + out;
}

// ---- what a stop signal must undo ------------------------------------------

// The children still running and the namespace, for the signal watcher:
// SIGINT/SIGTERM/SIGHUP are blocked in every thread of the bench and taken by
// one thread, which stops the children, removes the namespace and exits.
struct Undo {
  std::mutex mu;
  std::set<pid_t> children;
  std::string netns;
  std::string scratch;  // removed too, unless kept
  std::atomic<bool> stopping{false};
};
Undo& Pending() {
  static Undo u;
  return u;
}

void RemoveNetns(const std::string& name);

// A failure the bench reports, unless it is only the watcher stopping the
// children: then the watcher's exit is awaited (the signals stay blocked here).
int Failed(const Status& s) {
  while (Pending().stopping.load()) ::sleep(1);
  return Fail(s);
}

void StartSignalWatcher() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    while (::sigwait(&set, &sig) != 0) {
    }
    std::fprintf(stderr, "hotboot: bench fetch interrupted by %s: stopping its processes, removing its namespace\n",
                 strsignal(sig));
    Pending().stopping = true;
    std::set<pid_t> children;
    std::string netns, scratch;
    {
      std::lock_guard<std::mutex> lock(Pending().mu);
      children = Pending().children;
      netns = Pending().netns;
      scratch = Pending().scratch;
    }
    for (pid_t p : children) ::kill(p, SIGTERM);
    if (!netns.empty()) RemoveNetns(netns);  // also ends whatever still runs inside it
    std::error_code ec;
    if (!scratch.empty()) fs::remove_all(scratch, ec);
    std::_Exit(128 + sig);
  }).detach();
}

// ---- processes ----------------------------------------------------------------

Result<std::string> OnPath(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = std::string(path && *path ? path : "/usr/bin:/bin") + ":/usr/sbin:/sbin";
  std::stringstream ss(dirs);
  for (std::string d; std::getline(ss, d, ':');) {
    const std::string p = d + "/" + name;
    if (!d.empty() && ::access(p.c_str(), X_OK) == 0) return p;
  }
  return NotFound(name + " is not on PATH (tools/install-deps installs what bench fetch needs)");
}

// A child process of the bench: stdin /dev/null, stderr appended to a log,
// stdout to a pipe (Capture) or the log. It gets SIGTERM if the bench dies.
class Child {
 public:
  static Result<std::unique_ptr<Child>> Start(const std::vector<std::string>& argv, const std::string& log,
                                              bool capture) {
    HB_ASSIGN_OR_RETURN(std::string program, OnPath(argv[0]));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return ErrnoError("open " + log, errno);
    int out[2] = {-1, -1};
    if (capture && ::pipe2(out, O_CLOEXEC) != 0) {
      const int e = errno;
      ::close(log_fd);
      return ErrnoError("pipe", e);
    }
    {
      const std::string line = "+ " + Joined(argv) + "\n";
      (void)!::write(log_fd, line.data(), line.size());
    }
    const pid_t parent = ::getpid();
    sigset_t none;
    sigemptyset(&none);
    std::lock_guard<std::mutex> lock(Pending().mu);  // the watcher sees every child it could miss
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int e = errno;
      ::close(log_fd);
      if (capture) ::close(out[0]), ::close(out[1]);
      return ErrnoError("fork for " + argv[0], e);
    }
    if (pid == 0) {  // only system calls until exec
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);
      const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (in < 0 || ::dup2(in, STDIN_FILENO) < 0) ::_exit(127);
      if (::dup2(capture ? out[1] : log_fd, STDOUT_FILENO) < 0 || ::dup2(log_fd, STDERR_FILENO) < 0) ::_exit(127);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(program.c_str(), args.data());
      ::_exit(127);
    }
    ::close(log_fd);
    if (capture) ::close(out[1]);
    Pending().children.insert(pid);
    return std::unique_ptr<Child>(new Child(pid, capture ? out[0] : -1, Joined(argv), log));
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { Stop(); }

  pid_t pid() const { return pid_; }
  const std::string& command() const { return command_; }
  const std::string& log() const { return log_; }

  // Its status once it exited, without waiting.
  std::optional<int> Exited() {
    if (pid_ < 0) return status_;
    const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
    if (r != pid_) return std::nullopt;
    Reaped();
    return status_;
  }

  // Its stdout's first line; an error when it ends or the deadline passes first.
  Result<std::string> ReadLine(Clock::duration timeout) { return Read(timeout, true); }
  // All of its stdout, until it closes it.
  Result<std::string> ReadAll(Clock::duration timeout) { return Read(timeout, false); }

  // Waits for it to exit (SIGTERM, then SIGKILL after `grace`, when stop).
  int Wait(bool stop = false, std::chrono::seconds grace = std::chrono::seconds(20)) {
    if (pid_ >= 0 && stop) ::kill(pid_, SIGTERM);
    const auto t0 = Clock::now();
    bool killed = false;
    while (!Exited()) {
      if (stop && !killed && Clock::now() - t0 > grace) {
        ::kill(pid_, SIGKILL);
        killed = true;
      }
      ::usleep(10 * 1000);
    }
    if (out_ >= 0) ::close(std::exchange(out_, -1));
    return status_;
  }
  int Stop() { return Wait(true); }

  static std::string Describe(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by ") + strsignal(WTERMSIG(status));
    return "ended";
  }

 private:
  Child(pid_t pid, int out, std::string command, std::string log)
      : pid_(pid), out_(out), command_(std::move(command)), log_(std::move(log)) {}

  void Reaped() {
    std::lock_guard<std::mutex> lock(Pending().mu);
    Pending().children.erase(pid_);
    pid_ = -1;
  }

  Result<std::string> Read(Clock::duration timeout, bool line_only) {
    if (out_ < 0) return Internal("no output captured from " + command_);
    const auto deadline = Clock::now() + timeout;
    char buf[65536];
    for (;;) {
      if (line_only && got_.find('\n') != std::string::npos) return got_.substr(0, got_.find('\n'));
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        return Timeout(command_ + " did not " + (line_only ? "report" : "finish") + " within " +
                       std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) + " s" +
                       LogTail(log_));
      }
      pollfd p{out_, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ErrnoError("poll", errno);
      if (r == 0) continue;
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("read from " + command_, errno);
      if (n == 0) {
        if (!line_only) return got_;
        const int st = Wait();
        return FailedPrecondition(command_ + " " + Describe(st) + " before reporting" + LogTail(log_));
      }
      got_.append(buf, static_cast<size_t>(n));
    }
  }

  pid_t pid_;
  int out_;
  int status_ = 0;
  std::string command_, log_, got_;
};

// Runs argv to the end; its stdout when it exits 0, else an error with its log's end.
Result<std::string> RunCommand(const std::vector<std::string>& argv, const std::string& log,
                               Clock::duration timeout = kCommandTimeout) {
  HB_ASSIGN_OR_RETURN(auto child, Child::Start(argv, log, true));
  auto out = child->ReadAll(timeout);
  if (!out.ok()) return out.status();
  const int st = child->Wait(true);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return out;
  return Internal(child->command() + " " + Child::Describe(st) + LogTail(log));
}

// ---- the namespace ------------------------------------------------------------

// The processes whose network namespace is `name`'s.
std::vector<pid_t> PidsInNetns(const std::string& name) {
  std::vector<pid_t> pids;
  struct stat ns{};
  if (::stat(("/run/netns/" + name).c_str(), &ns) != 0) return pids;
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string pid = it->path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat st{};
    if (::stat(("/proc/" + pid + "/ns/net").c_str(), &st) == 0 && st.st_ino == ns.st_ino && st.st_dev == ns.st_dev) {
      pids.push_back(std::stoi(pid));
    }
  }
  return pids;
}

// Ends every process in `name`'s network namespace, then removes it.
void RemoveNetns(const std::string& name) {
  const std::string path = "/run/netns/" + name;
  struct stat ns{};
  if (::stat(path.c_str(), &ns) == 0) {
    auto inside = [&] { return PidsInNetns(name); };
    for (pid_t p : inside()) ::kill(p, SIGTERM);
    for (int i = 0; i < 200 && !inside().empty(); ++i) ::usleep(50 * 1000);
    for (pid_t p : inside()) ::kill(p, SIGKILL);
  }
  std::vector<std::string> argv = {"ip", "netns", "del", name};
  auto ip = OnPath("ip");
  if (!ip.ok()) return;
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) ::dup2(null, STDOUT_FILENO), ::dup2(null, STDERR_FILENO);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execl(ip->c_str(), "ip", "netns", "del", name.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int st = 0;
  while (pid > 0 && ::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

// A network namespace with only its loopback, up; removed (with everything
// still running in it) when destroyed.
class Netns {
 public:
  static Result<std::unique_ptr<Netns>> Create(const std::string& name, const std::string& log) {
    {
      std::lock_guard<std::mutex> lock(Pending().mu);
      Pending().netns = name;
    }
    auto ns = std::unique_ptr<Netns>(new Netns(name, log));
    HB_RETURN_IF_ERROR(RunCommand({"ip", "netns", "add", name}, log).status());
    HB_RETURN_IF_ERROR(RunCommand({"ip", "-n", name, "link", "set", "lo", "up"}, log).status());
    return ns;
  }
  ~Netns() {
    RemoveNetns(name_);
    std::lock_guard<std::mutex> lock(Pending().mu);
    Pending().netns.clear();
  }
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;

  const std::string& name() const { return name_; }

  // argv as run inside: ip netns exec NAME argv...
  std::vector<std::string> Exec(const std::vector<std::string>& argv) const {
    std::vector<std::string> out = {"ip", "netns", "exec", name_};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }

  // The loopback's egress, token bucket at `gbit` Gbit/s: a burst of 1 ms of
  // the rate (at least 1 MB, so that 64 KiB GSO packets pass), 50 ms of queue.
  Status Shape(double gbit) {
    const uint64_t burst = std::max<uint64_t>(1000000, static_cast<uint64_t>(gbit * 1e9 / 8 * 1e-3));
    const std::string rate = std::to_string(static_cast<uint64_t>(std::llround(gbit * 1000))) + "mbit";
    return RunCommand(Exec({"tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate, "burst",
                            std::to_string(burst), "latency", "50ms"}),
                      log_)
        .status();
  }

  // fn on a thread of ours inside the namespace (setns is per thread for
  // network namespaces); its sockets are the namespace's.
  Status RunInside(const std::function<Status()>& fn) const {
    Status result;
    std::thread t([&] {
      const std::string path = "/run/netns/" + name_;
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        result = ErrnoError("open " + path, errno);
        return;
      }
      const int rc = ::setns(fd, CLONE_NEWNET);
      const int e = errno;
      ::close(fd);
      result = rc == 0 ? fn() : ErrnoError("setns " + path, e);
    });
    t.join();
    return result;
  }

 private:
  Netns(std::string name, std::string log) : name_(std::move(name)), log_(std::move(log)) {}
  std::string name_, log_;
};

// ---- the servers inside ---------------------------------------------------

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  return out ? Status::Ok() : IoError("write " + path);
}

Status MakeDirs(const std::string& path, mode_t mode = 0755) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return IoError("create directory " + path + ": " + ec.message());
  if (::chmod(path.c_str(), mode) != 0) return ErrnoError("chmod " + path, errno);
  return Status::Ok();
}

// A CA of the bench's and a certificate for 127.0.0.1 signed by it (openssl CLI).
struct Tls {
  std::string ca, cert, key;
};

Result<Tls> MakeTls(const std::string& dir, const std::string& log) {
  HB_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  Tls t{dir + "/ca.pem", dir + "/server.pem", dir + "/server.key"};
  const std::string ca_key = dir + "/ca.key", csr = dir + "/server.csr", ext = dir + "/server.ext";
  HB_RETURN_IF_ERROR(RunCommand({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                 "-nodes", "-keyout", ca_key, "-out", t.ca, "-days", "2", "-subj",
                                 "/CN=hotboot bench fetch CA", "-addext", "basicConstraints=critical,CA:TRUE",
                                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"},
                                log)
                         .status());
  HB_RETURN_IF_ERROR(RunCommand({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                 "-nodes", "-keyout", t.key, "-out", csr, "-subj", "/CN=127.0.0.1"},
                                log)
                         .status());
  HB_RETURN_IF_ERROR(WriteText(ext, "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"));
  HB_RETURN_IF_ERROR(RunCommand({"openssl", "x509", "-req", "-in", csr, "-CA", t.ca, "-CAkey", ca_key,
                                 "-CAcreateserial", "-out", t.cert, "-days", "2", "-extfile", ext},
                                log)
                         .status());
  return t;
}

// What the clients inside need to reach the servers.
struct Endpoints {
  bool tls = true;
  std::string ca;  // empty without TLS
  std::string registry() const { return "127.0.0.1:" + std::to_string(kRegistryPort); }
  std::string file_url(const std::string& name) const {
    return std::string(tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(kFilePort) + "/" + name;
  }
  // curl's options for the file server / the registry.
  std::vector<std::string> curl_tls() const {
    return tls ? std::vector<std::string>{"--cacert", ca} : std::vector<std::string>{};
  }
  // hotboot push/restore's options for the registry.
  std::vector<std::string> hotboot_remote() const {
    return tls ? std::vector<std::string>{"--ca-cert", ca} : std::vector<std::string>{"--plain-http"};
  }
};

// Polls url with curl inside the namespace until it answers (any HTTP status)
// or the child serving it exits.
Status WaitServing(const Netns& ns, const Endpoints& ep, const std::string& url, Child& server,
                   const std::string& log) {
  const auto t0 = Clock::now();
  for (;;) {
    std::vector<std::string> argv = {"curl", "-s", "-o", "/dev/null", "--max-time", "2"};
    for (const auto& o : ep.curl_tls()) argv.push_back(o);
    argv.push_back(url);
    if (RunCommand(ns.Exec(argv), log, std::chrono::seconds(10)).ok()) return Status::Ok();
    if (auto st = server.Exited()) {
      return FailedPrecondition(server.command() + " " + Child::Describe(*st) + LogTail(server.log()));
    }
    if (Clock::now() - t0 > kServerStartTimeout) {
      return Timeout(url + " did not answer within 30 s" + LogTail(server.log()));
    }
    ::usleep(100 * 1000);
  }
}

// Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1:5000
// inside, filesystem storage under dir, no auth.
Result<std::unique_ptr<Child>> StartRegistry(const Netns& ns, const Endpoints& ep, const Tls& tls,
                                             const std::string& dir) {
  HB_RETURN_IF_ERROR(MakeDirs(dir + "/storage"));
  std::string config = "version: 0.1\n"
                       "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                       "storage:\n  filesystem:\n    rootdirectory: " + dir + "/storage\n"
                       "  delete:\n    enabled: true\n"
                       "http:\n  addr: " + ep.registry() + "\n";
  if (ep.tls) config += "  tls:\n    certificate: " + tls.cert + "\n    key: " + tls.key + "\n";
  HB_RETURN_IF_ERROR(WriteText(dir + "/config.yml", config));
  HB_ASSIGN_OR_RETURN(auto child,
                      Child::Start(ns.Exec({"docker-registry", "serve", dir + "/config.yml"}), dir + "/registry.log",
                                   false));
  HB_RETURN_IF_ERROR(WaitServing(ns, ep, std::string(ep.tls ? "https" : "http") + "://" + ep.registry() + "/v2/",
                                 *child, dir + "/probe.log"));
  return child;
}

// nginx serving docroot on 127.0.0.1:8443 inside (Range, as nginx does for
// static files), everything it writes under dir.
Result<std::unique_ptr<Child>> StartFileServer(const Netns& ns, const Endpoints& ep, const Tls& tls,
                                               const std::string& dir, const std::string& docroot) {
  HB_RETURN_IF_ERROR(MakeDirs(dir + "/tmp"));
  std::string config = "daemon off;\nmaster_process off;\nworker_processes 1;\n"
                       "pid " + dir + "/nginx.pid;\n"
                       "error_log " + dir + "/error.log warn;\n"
                       "events { worker_connections 64; }\n"
                       "http {\n  access_log off;\n  sendfile on;\n  default_type application/octet-stream;\n";
  for (const char* t : {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}) {
    config += std::string("  ") + t + "_temp_path " + dir + "/tmp/" + t + ";\n";
  }
  config += "  server {\n    listen 127.0.0.1:" + std::to_string(kFilePort) + (ep.tls ? " ssl" : "") + ";\n";
  if (ep.tls) config += "    ssl_certificate " + tls.cert + ";\n    ssl_certificate_key " + tls.key + ";\n";
  config += "    root " + docroot + ";\n  }\n}\n";
  HB_RETURN_IF_ERROR(WriteText(dir + "/nginx.conf", config));
  HB_ASSIGN_OR_RETURN(auto child, Child::Start(ns.Exec({"nginx", "-p", dir, "-e", dir + "/error.log", "-c",
                                                        dir + "/nginx.conf"}),
                                               dir + "/nginx.log", false));
  HB_RETURN_IF_ERROR(WaitServing(ns, ep, ep.file_url(""), *child, dir + "/probe.log"));
  return child;
}

// ---- the bench's directories and snapshots -----------------------------------

struct Ctx {
  const FetchBenchArgs* args = nullptr;
  std::string self;        // this executable, copied into the bench directory
  std::string server;      // hotboot-server, likewise
  std::string home;        // the bench directory (kept: snapshots, weights)
  std::string weights;     // HOTBOOT_WEIGHTS_DIR of every server, build, restore
  std::string scratch;     // this run's (removed unless --keep)
  std::string logs, cache, downloads, www;
  Netns* ns = nullptr;
  Endpoints ep;
  std::set<pid_t> servers;  // docker-registry and nginx: what stays in the namespace between cases
  bool oci = false;        // hotboot push / restore oci:// exist
  int next_port = kFirstReplicaPort;
  int log_seq = 0;

  std::string Log(const std::string& what) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%03d-", ++log_seq);
    return logs + "/" + buf + what + ".log";
  }
  std::string Ref(const std::string& preset) const { return "oci://" + ep.registry() + "/hotboot-bench/" + preset + ":v1"; }
};

// Removes everything in a directory the bench owns (its weights, the node cache).
Status EmptyDir(const std::string& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    fs::remove_all(it->path(), ec);
    if (ec) return IoError("remove " + it->path().string() + ": " + ec.message());
  }
  return ec ? IoError("list " + dir + ": " + ec.message()) : Status::Ok();
}

Result<uint64_t> FileSize(const std::string& path) {
  std::error_code ec;
  const uint64_t n = fs::file_size(path, ec);
  if (ec) return IoError("stat " + path + ": " + ec.message());
  return n;
}

std::string HomeDir() {
  if (const char* h = std::getenv("HOTBOOT_HOME"); h && *h) return h;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/root") + "/.cache/hotboot";
}

// True when both files hold the same bytes.
bool SameBytes(const std::string& a, const std::string& b) {
  std::error_code ec1, ec2;
  if (fs::file_size(a, ec1) != fs::file_size(b, ec2) || ec1 || ec2) return false;
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  while (fa && fb) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    if (fa.gcount() != fb.gcount() || std::memcmp(ba.data(), bb.data(), static_cast<size_t>(fa.gcount())) != 0) {
      return false;
    }
  }
  return fa.eof() && fb.eof();
}

// Copies from to dir/name (a temporary, then rename) unless it holds the same
// bytes already; true when it changed.
Result<bool> Pin(const std::string& from, const std::string& dir, const std::string& name) {
  const std::string to = dir + "/" + name, tmp = to + ".tmp";
  if (SameBytes(from, to)) return false;
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (ec) return IoError("copy " + from + " to " + tmp + ": " + ec.message());
  if (::chmod(tmp.c_str(), 0755) != 0) return ErrnoError("chmod " + tmp, errno);
  if (::rename(tmp.c_str(), to.c_str()) != 0) return ErrnoError("rename " + tmp + " to " + to, errno);
  return true;
}

// The executables every command of the run uses, copied into the bench
// directory: this very hotboot (read through /proc/self/exe, the file this
// process runs even if a rebuild replaced the path) and its hotboot-server.
// A build elsewhere can then neither break an exec mid-run nor change the
// server a snapshot maps (CRIU restores the very file); when the server
// changed, the snapshots made with the old one are removed and built again.
Status PinBinaries(Ctx& c) {
  const std::string dir = c.home + "/bin";
  HB_RETURN_IF_ERROR(MakeDirs(dir));
  HB_ASSIGN_OR_RETURN(std::string server, FindSibling("hotboot-server"));
  HB_RETURN_IF_ERROR(Pin("/proc/self/exe", dir, "hotboot").status());
  HB_ASSIGN_OR_RETURN(bool server_changed, Pin(server, dir, "hotboot-server"));
  c.self = dir + "/hotboot";
  c.server = dir + "/hotboot-server";
  if (server_changed) {
    std::error_code ec;
    for (fs::directory_iterator it(c.home + "/snapshots", ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() != ".hbsnap") continue;
      Note("removing " + it->path().string() + ": made with another hotboot-server than " + server);
      fs::remove(it->path(), ec);
    }
  }
  return Status::Ok();
}

// The preset's snapshot under the bench directory, built with `hotboot
// build --preset P` unless one is there that maps its weights from our
// weights directory.
Result<std::string> EnsureSnapshot(Ctx& c, const std::string& preset) {
  const std::string snap = c.home + "/snapshots/" + preset + ".hbsnap";
  if (!c.args->rebuild && fs::exists(snap)) {
    auto reader = snapfile::SnapshotReader::Open(snap);
    auto m = reader.ok() ? ParseManifest((*reader)->manifest_json()) : Result<Manifest>(reader.status());
    if (m.ok() && fs::path(m->process.weights_dir).lexically_normal() == fs::path(c.weights).lexically_normal()) {
      Note(preset + ": reusing " + snap + " (--rebuild builds it again)");
      return snap;
    }
    Note(preset + ": not reusing " + snap + ": " +
         (m.ok() ? "its weights directory is " + m->process.weights_dir : m.status().message()));
  }
  HB_RETURN_IF_ERROR(MakeDirs(c.home + "/snapshots"));
  const std::string log = c.Log("build-" + preset);
  Note(preset + ": building its snapshot: hotboot build --preset " + preset + " (log: " + log + ")");
  const auto t0 = Clock::now();
  HB_RETURN_IF_ERROR(RunCommand({c.self, "build", "--preset", preset, "-o", snap, "--server-log", log}, log).status());
  Note(preset + ": built " + snap + " in " + Fixed(SecondsSince(t0), 1) + " s");
  return snap;
}

// ---- what is measured ---------------------------------------------------------

// One `hotboot restore` inside the namespace, timed by the bench from just
// before it starts the process to the ready line (its time to ready counts
// from the process's start, which is the same instant within a clock tick;
// both are kept). Then it is stopped: SIGTERM to the supervising restore,
// which stops its replica and waits for it, as `hotboot demo` does.
struct RestoreRun {
  double wall_s = 0;
  double reported_s = 0;
  uint64_t bytes_fetched = 0, bytes_from_cache = 0;
  json timings_ms;
};

// Waits until nothing but the servers runs in the namespace (a stopped
// restore's replica may take a moment to exit); what is left after 20 s is
// killed, with a warning. Every case starts with no replica running.
void WaitForReplicasGone(Ctx& c, const std::string& what) {
  auto others = [&] {
    std::vector<pid_t> left;
    for (pid_t p : PidsInNetns(c.ns->name())) {
      if (!c.servers.count(p)) left.push_back(p);
    }
    return left;
  };
  const auto t0 = Clock::now();
  while (!others().empty() && Clock::now() - t0 < std::chrono::seconds(20)) ::usleep(20 * 1000);
  if (auto left = others(); !left.empty()) {
    Note("warning: " + what + ": " + std::to_string(left.size()) + " process(es) still in the namespace 20 s after "
         "it was stopped; killing them");
    for (pid_t p : left) ::kill(p, SIGKILL);
  }
}

Result<RestoreRun> Restore(Ctx& c, const std::string& source, const std::vector<std::string>& extra,
                           const std::string& what) {
  std::vector<std::string> argv = {c.self, "restore", source, "--port", std::to_string(c.next_port++), "--json",
                                   "--no-latency-check"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  const std::string log = c.Log(what);
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(auto child, Child::Start(c.ns->Exec(argv), log, true));
  auto line = child->ReadLine(kRestoreTimeout);
  RestoreRun r;
  r.wall_s = SecondsSince(t0);
  if (!line.ok()) return line.status().Prefixed(what);
  const json j = json::parse(*line, nullptr, false);
  if (!j.is_object() || !j.value("ok", true)) {
    child->Stop();
    return FailedPrecondition(what + ": hotboot restore failed: " + line->substr(0, 400) + LogTail(log));
  }
  r.reported_s = j.value("time_to_ready_ms", 0.0) / 1000;
  r.timings_ms = j.value("timings_ms", json::object());
  if (j.contains("fetch") && j["fetch"].is_object()) {
    r.bytes_fetched = j["fetch"].value("bytes_fetched", uint64_t{0});
    r.bytes_from_cache = j["fetch"].value("bytes_from_cache", uint64_t{0});
  }
  // 0: it stopped its replica; 143: SIGTERM came before it began supervising
  // (the replica exits when its control channel closes, server/CONTROL.md).
  if (const int st = child->Stop(); !WIFEXITED(st) || (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 128 + SIGTERM)) {
    Note("warning: " + what + ": hotboot restore " + Child::Describe(st) + " when stopped (log: " + log + ")");
  }
  WaitForReplicasGone(c, what);
  return r;
}

// curl of a whole file from nginx inside the namespace; its wall time.
Result<double> Download(Ctx& c, const std::string& name, const std::string& to, const std::string& what) {
  std::vector<std::string> argv = {"curl", "-sS", "--fail", "-o", to};
  for (const auto& o : c.ep.curl_tls()) argv.push_back(o);
  argv.push_back(c.ep.file_url(name));
  const auto t0 = Clock::now();
  HB_RETURN_IF_ERROR(RunCommand(c.ns->Exec(argv), c.Log(what)).status());
  return SecondsSince(t0);
}

// The reference server started cold inside the namespace, timed from just
// before it is started to the first 200 from GET /readyz (polled every
// 10 ms, as `hotboot demo` does), then stopped.
Result<double> ColdBoot(Ctx& c, const std::string& model, const std::string& what) {
  const int port = c.next_port++;
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(auto child, Child::Start(c.ns->Exec({c.server, "--model", model, "--port", std::to_string(port)}),
                                               c.Log(what), false));
  double ready_s = 0;
  Status st = c.ns->RunInside([&]() -> Status {
    for (;;) {
      auto r = HttpRequest("127.0.0.1", port, "GET", "/readyz", "", std::chrono::seconds(2));
      if (r.ok() && r->status == 200) {
        ready_s = SecondsSince(t0);
        return Status::Ok();
      }
      if (auto s = child->Exited()) {
        return FailedPrecondition(what + ": the server " + Child::Describe(*s) + " before ready" + LogTail(child->log()));
      }
      if (Clock::now() - t0 > kRestoreTimeout) return Timeout(what + ": the server was not ready within 15 minutes");
      ::usleep(10 * 1000);
    }
  });
  child->Stop();
  WaitForReplicasGone(c, what);
  HB_RETURN_IF_ERROR(st);
  return ready_s;
}

// One preset at one rate, once.
struct Sample {
  uint64_t snapshot_bytes = 0;
  double local_restore_s = 0, local_cached_s = 0;
  double download_s = 0, downloaded_restore_s = 0;
  std::optional<double> streamed_s, cached_s;
  std::optional<double> streamed_https_s;  // restore https://... (nginx, Range), fresh host
  uint64_t bytes_fetched_https = 0;
  uint64_t bytes_fetched = 0, bytes_fetched_cached = 0, bytes_from_cache_cached = 0;
  double cold_s = 0, model_download_s = 0;
};

struct Preset {
  std::string name, snapshot, model;
  uint64_t snapshot_bytes = 0, model_bytes = 0;
};

// Restores from a local file: the stage (a) runs after its download, with an
// empty weights directory, then again with the weights in place.
Status MeasureLocal(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_ASSIGN_OR_RETURN(RestoreRun local, Restore(c, p.snapshot, {}, tag + "-local"));
  HB_ASSIGN_OR_RETURN(RestoreRun warm, Restore(c, p.snapshot, {}, tag + "-local-cached"));
  s->local_restore_s = local.wall_s;
  s->local_cached_s = warm.wall_s;
  Note("  restore from a local file: " + Fixed(local.wall_s) + " s, weights in place " + Fixed(warm.wall_s) + " s");
  return Status::Ok();
}

// (a): curl the whole file, then restore it from disk (empty weights directory).
Status MeasureDownloadThenRestore(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  const std::string file = c.downloads + "/" + p.name + ".hbsnap";
  std::error_code ec;
  fs::remove(file, ec);
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_ASSIGN_OR_RETURN(s->download_s, Download(c, p.name + ".hbsnap", file, tag + "-curl"));
  HB_ASSIGN_OR_RETURN(uint64_t got, FileSize(file));
  if (got != p.snapshot_bytes) {
    return Internal("curl wrote " + std::to_string(got) + " bytes to " + file + ", the snapshot has " +
                    std::to_string(p.snapshot_bytes));
  }
  HB_ASSIGN_OR_RETURN(RestoreRun r, Restore(c, file, {}, tag + "-downloaded"));
  s->downloaded_restore_s = r.wall_s;
  fs::remove(file, ec);
  Note("  (a) curl " + Fixed(s->download_s) + " s (" + Fixed(p.snapshot_bytes * 8 / s->download_s / 1e9) +
       " Gbit/s) + restore " + Fixed(r.wall_s) + " s");
  return Status::Ok();
}

// (b) and (c): restore oci://... as on a fresh host (empty node cache, empty
// weights directory), then again with both kept.
Status MeasureStreamed(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_RETURN_IF_ERROR(EmptyDir(c.cache));
  std::vector<std::string> remote = c.ep.hotboot_remote();
  remote.insert(remote.end(), {"--cache-dir", c.cache});
  HB_ASSIGN_OR_RETURN(RestoreRun fresh, Restore(c, c.Ref(p.name), remote, tag + "-streamed"));
  HB_ASSIGN_OR_RETURN(RestoreRun cached, Restore(c, c.Ref(p.name), remote, tag + "-cached"));
  s->streamed_s = fresh.wall_s;
  s->bytes_fetched = fresh.bytes_fetched;
  s->cached_s = cached.wall_s;
  s->bytes_fetched_cached = cached.bytes_fetched;
  s->bytes_from_cache_cached = cached.bytes_from_cache;
  Note("  (b) streamed " + Fixed(fresh.wall_s) + " s (" + HumanBytes(fresh.bytes_fetched) + " fetched); (c) cached " +
       Fixed(cached.wall_s) + " s (" + HumanBytes(cached.bytes_fetched) + " fetched)");
  return Status::Ok();
}

// (b) from the file server: restore https://... (Range requests to nginx)
// as on a fresh host; the same server (a) downloads from.
Status MeasureStreamedHttps(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_RETURN_IF_ERROR(EmptyDir(c.cache));
  std::vector<std::string> remote = c.ep.hotboot_remote();
  remote.insert(remote.end(), {"--cache-dir", c.cache});
  HB_ASSIGN_OR_RETURN(RestoreRun r, Restore(c, c.ep.file_url(p.name + ".hbsnap"), remote, tag + "-streamed-https"));
  s->streamed_https_s = r.wall_s;
  s->bytes_fetched_https = r.bytes_fetched;
  Note("  (b) from nginx: streamed " + Fixed(r.wall_s) + " s (" + HumanBytes(r.bytes_fetched) + " fetched)");
  return Status::Ok();
}

// (d), with what a fresh host pays first: the model's download at the rate.
Status MeasureModelDownload(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  const std::string file = c.downloads + "/" + p.name + ".safetensors";
  HB_ASSIGN_OR_RETURN(s->model_download_s, Download(c, p.name + ".safetensors", file, tag + "-curl-model"));
  std::error_code ec;
  fs::remove(file, ec);
  return Status::Ok();
}

// ---- results ------------------------------------------------------------------

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Case {
  std::string preset;
  double rate = 0;
  std::vector<Sample> samples;
  std::vector<std::string> errors;
};

// The derived numbers of one sample (or of the medians).
struct Derived {
  double transfer_s, lower_bound_s, download_then_restore_s, overlap_efficiency, cached_vs_local;
};

Derived Derive(double rate, double local_restore_s, double local_cached_s, double download_then_restore_s,
               std::optional<double> streamed_s, std::optional<double> cached_s, uint64_t bytes_fetched) {
  Derived d{};
  d.transfer_s = static_cast<double>(bytes_fetched) * 8 / (rate * 1e9);
  d.lower_bound_s = std::max(d.transfer_s, local_restore_s);
  d.download_then_restore_s = download_then_restore_s;
  d.overlap_efficiency = streamed_s && *streamed_s > 0 ? d.lower_bound_s / *streamed_s : 0;
  d.cached_vs_local = cached_s && local_cached_s > 0 ? *cached_s / local_cached_s : 0;
  return d;
}

ojson SampleJson(const Case& k, const Sample& s) {
  // Without a streamed restore, its bytes are the file's: what (a) fetched.
  const uint64_t fetched = s.streamed_s ? s.bytes_fetched : s.snapshot_bytes;
  const Derived d = Derive(k.rate, s.local_restore_s, s.local_cached_s, s.download_s + s.downloaded_restore_s,
                           s.streamed_s, s.cached_s, fetched);
  ojson j = {{"bytes_fetched", fetched},
             {"transfer_s", d.transfer_s},
             {"local_restore_s", s.local_restore_s},
             {"lower_bound_s", d.lower_bound_s},
             {"download_s", s.download_s},
             {"downloaded_restore_s", s.downloaded_restore_s},
             {"download_then_restore_s", d.download_then_restore_s},
             {"streamed_s", s.streamed_s ? json(*s.streamed_s) : json(nullptr)},
             {"overlap_efficiency", s.streamed_s ? json(d.overlap_efficiency) : json(nullptr)},
             {"streamed_https_s", s.streamed_https_s ? json(*s.streamed_https_s) : json(nullptr)},
             {"https_bytes_fetched", s.bytes_fetched_https},
             {"cached_s", s.cached_s ? json(*s.cached_s) : json(nullptr)},
             {"cached_bytes_fetched", s.bytes_fetched_cached},
             {"local_cached_s", s.local_cached_s},
             {"cold_s", s.cold_s},
             {"model_download_s", s.model_download_s}};
  return j;
}

// The medians over the repeats, with the derived numbers from them.
ojson CaseJson(const Case& k, const FetchBenchArgs& a) {
  auto med = [&](const std::function<double(const Sample&)>& f) {
    std::vector<double> xs;
    for (const auto& s : k.samples) xs.push_back(f(s));
    return Median(xs);
  };
  const bool streamed = !k.samples.empty() && k.samples[0].streamed_s.has_value();
  const uint64_t fetched = static_cast<uint64_t>(
      med([&](const Sample& s) { return static_cast<double>(streamed ? s.bytes_fetched : s.snapshot_bytes); }));
  const double local = med([](const Sample& s) { return s.local_restore_s; });
  const double local_cached = med([](const Sample& s) { return s.local_cached_s; });
  const double dl = med([](const Sample& s) { return s.download_s; });
  const double dtr = med([](const Sample& s) { return s.download_s + s.downloaded_restore_s; });
  std::optional<double> st, ca;
  if (streamed) {
    st = med([](const Sample& s) { return s.streamed_s.value_or(0); });
    ca = med([](const Sample& s) { return s.cached_s.value_or(0); });
  }
  const Derived d = Derive(k.rate, local, local_cached, dtr, st, ca, fetched);
  // What the link reached in practice (curl from nginx to a file: on a small
  // machine TLS and the disk, not tbf, may set the pace): the bound again at
  // that rate.
  const uint64_t snap_bytes = k.samples.empty() ? 0 : k.samples[0].snapshot_bytes;
  const double link = dl > 0 ? static_cast<double>(snap_bytes) * 8 / dl / 1e9 : 0.0;
  const double bound_measured = link > 0 ? std::max(static_cast<double>(fetched) * 8 / (link * 1e9), local) : 0.0;
  std::optional<double> https;
  if (!k.samples.empty() && k.samples[0].streamed_https_s) {
    https = med([](const Sample& s) { return s.streamed_https_s.value_or(0); });
  }
  const uint64_t https_bytes =
      static_cast<uint64_t>(med([](const Sample& s) { return static_cast<double>(s.bytes_fetched_https); }));
  const double https_bound = std::max(static_cast<double>(https_bytes) * 8 / (k.rate * 1e9), local);
  const double cold = med([](const Sample& s) { return s.cold_s; });
  const double model_dl = med([](const Sample& s) { return s.model_download_s; });
  ojson j = {{"preset", k.preset},
             {"rate_gbit", k.rate},
             {"transport", a.plain_http ? "http" : "https"},
             {"repeat", k.samples.size()},
             {"snapshot_bytes", snap_bytes},
             {"bytes_fetched", fetched},
             {"bytes_fetched_is", streamed ? "streamed restore's fetch.bytes_fetched" : "the whole file (no oci restore)"},
             {"transfer_s", d.transfer_s},
             {"local_restore_s", local},
             {"lower_bound_s", d.lower_bound_s},
             {"download_s", dl},
             {"link_gbit_measured", link},
             {"lower_bound_measured_link_s", bound_measured},
             {"download_then_restore_s", d.download_then_restore_s},
             {"streamed_s", st ? json(*st) : json(nullptr)},
             {"overlap_efficiency", st ? json(d.overlap_efficiency) : json(nullptr)},
             {"streamed_target_met", st ? json(*st <= 1.15 * d.lower_bound_s) : json(nullptr)},
             {"overlap_efficiency_measured_link", st && *st > 0 ? json(bound_measured / *st) : json(nullptr)},
             {"streamed_https_s", https ? json(*https) : json(nullptr)},
             {"https_bytes_fetched", https_bytes},
             {"overlap_efficiency_https", https && *https > 0 ? json(https_bound / *https) : json(nullptr)},
             {"cached_s", ca ? json(*ca) : json(nullptr)},
             {"cached_bytes_fetched", static_cast<uint64_t>(med([](const Sample& s) {
                return static_cast<double>(s.bytes_fetched_cached);
              }))},
             {"local_cached_s", local_cached},
             {"cached_vs_local", ca ? json(d.cached_vs_local) : json(nullptr)},
             {"cached_target_met", ca ? json(*ca <= 1.2 * local_cached) : json(nullptr)},
             {"cold_s", cold},
             {"model_download_s", model_dl},
             {"cold_fresh_host_s", model_dl + cold}};
  ojson runs = ojson::array();
  for (const auto& s : k.samples) runs.push_back(SampleJson(k, s));
  j["runs"] = runs;
  if (!k.errors.empty()) j["errors"] = k.errors;
  return j;
}

std::string Cell(const ojson& j, const char* key, int digits = 2) {
  if (!j.contains(key) || j[key].is_null()) return "-";
  return Fixed(j[key].get<double>(), digits);
}

void PrintTable(FILE* out, const std::vector<ojson>& cases, const FetchBenchArgs& a, const std::string& netns) {
  std::fprintf(out, "hotboot bench fetch: docker-registry and nginx over %s in network namespace %s, its loopback shaped "
              "with tc tbf;\nmedians of %d; times to ready in seconds, each from the start of the process to the "
              "replica verified\n\n",
              a.plain_http ? "plain HTTP" : "HTTPS", netns.c_str(), a.repeat);
  std::fprintf(out, "%-6s %5s %10s %8s %8s %8s %10s %8s %6s %8s %8s %8s %6s %7s %6s %s\n", "preset", "Gbit", "fetched",
              "transfer", "local", "bound", "curl+rest", "streamed", "eff", "https", "cached", "local_c", "c/l",
              "cold", "link", "targets (b <= 1.15 bound, c <= 1.2 local_c)");
  for (const auto& j : cases) {
    std::string targets;
    if (j["streamed_s"].is_null()) {
      targets = "b, c not run (no oci restore)";
    } else {
      targets = std::string("b ") + (j["streamed_target_met"].get<bool>() ? "met" : "MISSED") + ", c " +
                (j["cached_target_met"].get<bool>() ? "met" : "MISSED");
    }
    if (j.contains("errors")) targets += "; " + std::to_string(j["errors"].size()) + " run(s) failed";
    std::fprintf(out, "%-6s %5s %10s %8s %8s %8s %10s %8s %6s %8s %8s %8s %6s %7s %6s %s\n",
                j["preset"].get<std::string>().c_str(), Fixed(j["rate_gbit"].get<double>(), 1).c_str(),
                HumanBytes(j["bytes_fetched"].get<uint64_t>()).c_str(), Cell(j, "transfer_s").c_str(),
                Cell(j, "local_restore_s").c_str(), Cell(j, "lower_bound_s").c_str(),
                Cell(j, "download_then_restore_s").c_str(), Cell(j, "streamed_s").c_str(),
                Cell(j, "overlap_efficiency").c_str(), Cell(j, "streamed_https_s").c_str(), Cell(j, "cached_s").c_str(),
                Cell(j, "local_cached_s").c_str(),
                Cell(j, "cached_vs_local").c_str(), Cell(j, "cold_s").c_str(), Cell(j, "link_gbit_measured").c_str(),
                targets.c_str());
  }
  std::fprintf(out, "\nfetched: bytes the streamed restore fetched (fetch.bytes_fetched); transfer = fetched * 8 / rate;\n"
              "local: restore from a local file, empty weights directory; bound = max(transfer, local);\n"
              "curl+rest: (a) curl of the whole file + restore from it; streamed: (b) restore oci://, empty node\n"
              "cache and weights directory; eff = bound / streamed; https: (b) from nginx, restore https://...;\n"
              "cached: (c) restore oci:// again, cache and weights kept; local_c: restore from a local file\n"
              "with the weights in place; c/l = cached / local_c;\n"
              "cold: the server's cold boot to GET /readyz 200 (model file local; add model_download_s in --json\n"
              "for a fresh host); link: Gbit/s curl achieved through the shaped loopback (below the rate: the\n"
              "machine, not the link, set the pace; --json has the bound and efficiency at that rate too).\n");
}

// ---- the run ------------------------------------------------------------------

Status PrepareDirs(Ctx& c, const FetchBenchArgs& a) {
  c.home = fs::absolute(a.workdir.empty() ? HomeDir() + "/bench-fetch" : a.workdir).lexically_normal().string();
  HB_RETURN_IF_ERROR(MakeDirs(c.home));
  c.weights = c.home + "/weights";
  HB_RETURN_IF_ERROR(MakeDirs(c.weights));
  // Every build, server and restore maps the weights from here (the snapshot
  // records it); the bench empties it to make a host look fresh.
  if (::setenv("HOTBOOT_WEIGHTS_DIR", c.weights.c_str(), 1) != 0) return ErrnoError("setenv", errno);
  c.scratch = c.home + "/run-" + std::to_string(::getpid());
  c.logs = c.scratch + "/logs";
  c.cache = c.scratch + "/cache";
  c.downloads = c.scratch + "/downloads";
  c.www = c.scratch + "/www";
  for (const auto* d : {&c.scratch, &c.logs, &c.cache, &c.downloads, &c.www}) HB_RETURN_IF_ERROR(MakeDirs(*d));
  return Status::Ok();
}

// nginx's docroot: the snapshot and the model, linked (same file system) or copied.
Status Publish(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::create_hard_link(from, to, ec);
  if (!ec) return Status::Ok();
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  return ec ? IoError("copy " + from + " to " + to + ": " + ec.message()) : Status::Ok();
}

Status PushSnapshot(Ctx& c, const Preset& p) {
  std::vector<std::string> argv = {c.self, "push", p.snapshot, c.Ref(p.name), "--json"};
  for (const auto& o : c.ep.hotboot_remote()) argv.push_back(o);
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(std::string out, RunCommand(c.ns->Exec(argv), c.Log("push-" + p.name)));
  const json j = json::parse(out.substr(0, out.find('\n')), nullptr, false);
  Note(p.name + ": pushed to " + c.Ref(p.name) + " in " + Fixed(SecondsSince(t0)) + " s" +
       (j.is_object() ? " (" + HumanBytes(j.value("bytes_uploaded", uint64_t{0})) + " uploaded)" : ""));
  return Status::Ok();
}

void NoteError(const std::string& message) {
  while (Pending().stopping.load()) ::sleep(1);
  Note("error: " + message);
}

// The snapshots and models, made or found before anything is timed, and
// published in nginx's docroot.
Result<std::vector<Preset>> PreparePresets(Ctx& c) {
  std::vector<Preset> presets;
  for (const auto& name : c.args->presets) {
    Preset p;
    p.name = name;
    HB_ASSIGN_OR_RETURN(p.model, EnsureModel("", name));
    auto snap = EnsureSnapshot(c, name);
    if (!snap.ok()) return snap.status().Prefixed("snapshot of preset " + name);
    p.snapshot = *snap;
    HB_ASSIGN_OR_RETURN(p.snapshot_bytes, FileSize(p.snapshot));
    HB_ASSIGN_OR_RETURN(p.model_bytes, FileSize(p.model));
    HB_RETURN_IF_ERROR(Publish(p.snapshot, c.www + "/" + name + ".hbsnap"));
    HB_RETURN_IF_ERROR(Publish(p.model, c.www + "/" + name + ".safetensors"));
    presets.push_back(p);
  }
  return presets;
}

// The namespace and the servers in it; destroyed servers first, then the
// namespace (with anything still inside).
struct Servers {
  std::unique_ptr<Netns> ns;
  std::unique_ptr<Child> registry, nginx;
};

Result<Servers> StartServers(Ctx& c, const std::string& ns_name) {
  Servers s;
  auto ns = Netns::Create(ns_name, c.Log("netns"));
  if (!ns.ok()) return ns.status().Prefixed("network namespace " + ns_name);
  s.ns = std::move(*ns);
  c.ns = s.ns.get();
  c.ep.tls = !c.args->plain_http;
  Tls tls;
  if (c.ep.tls) {
    auto t = MakeTls(c.scratch + "/tls", c.Log("openssl"));
    if (!t.ok()) return t.status().Prefixed("TLS certificates");
    tls = *t;
    c.ep.ca = tls.ca;
  }
  auto registry = StartRegistry(*c.ns, c.ep, tls, c.scratch + "/registry");
  if (!registry.ok()) return registry.status().Prefixed("docker-registry");
  s.registry = std::move(*registry);
  auto nginx = StartFileServer(*c.ns, c.ep, tls, c.scratch + "/nginx", c.www);
  if (!nginx.ok()) return nginx.status().Prefixed("nginx");
  s.nginx = std::move(*nginx);
  c.servers = {s.registry->pid(), s.nginx->pid()};
  Note("namespace " + ns_name + ": docker-registry on " + c.ep.registry() + ", nginx on " + c.ep.file_url("") +
       (c.ep.tls ? " (TLS, CA " + c.ep.ca + ")" : " (plain HTTP)"));
  return s;
}

// One preset at the rate the loopback has now, once.
Status MeasureCase(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  s->snapshot_bytes = p.snapshot_bytes;
  HB_RETURN_IF_ERROR(MeasureLocal(c, p, tag, s));
  HB_RETURN_IF_ERROR(MeasureDownloadThenRestore(c, p, tag, s));
  if (c.oci) {
    HB_RETURN_IF_ERROR(MeasureStreamed(c, p, tag, s));
    HB_RETURN_IF_ERROR(MeasureStreamedHttps(c, p, tag, s));
  }
  return MeasureModelDownload(c, p, tag, s);
}

// One repeat: the cold boots (they do not cross the link: once per preset,
// unshaped), then every rate and preset. A failed case is recorded when
// --keep-going, else returned.
Status RunRepeat(Ctx& c, const std::vector<Preset>& presets, int rep, std::vector<Case>* cases, bool* failed) {
  const FetchBenchArgs& a = *c.args;
  auto find = [&](const std::string& preset, double rate) -> Case& {
    return *std::find_if(cases->begin(), cases->end(),
                         [&](const Case& x) { return x.preset == preset && x.rate == rate; });
  };
  std::map<std::string, double> cold;
  for (const auto& p : presets) {
    Note(p.name + ": cold boot of the server (repeat " + std::to_string(rep + 1) + ")");
    auto t = ColdBoot(c, p.model, p.name + "-cold-r" + std::to_string(rep + 1));
    if (!t.ok()) {
      if (!a.keep_going) return t.status();
      NoteError(t.status().message());
      *failed = true;
      for (double r : a.rates) find(p.name, r).errors.push_back(t.status().message());
      continue;
    }
    cold[p.name] = *t;
    Note("  ready in " + Fixed(*t) + " s");
  }
  for (double rate : a.rates) {
    HB_RETURN_IF_ERROR(c.ns->Shape(rate).Prefixed("tc"));
    for (const auto& p : presets) {
      const std::string tag = p.name + "-" + Fixed(rate, 1) + "g-r" + std::to_string(rep + 1);
      Note(p.name + " at " + Fixed(rate, 1) + " Gbit/s, repeat " + std::to_string(rep + 1) + " of " +
           std::to_string(a.repeat));
      Sample s;
      s.cold_s = cold.count(p.name) ? cold[p.name] : 0;
      Case& k = find(p.name, rate);
      if (Status st = MeasureCase(c, p, tag, &s); !st.ok()) {
        if (!a.keep_going) return st.Prefixed(tag);
        NoteError(st.message());
        *failed = true;
        k.errors.push_back(st.message());
        continue;
      }
      k.samples.push_back(s);
    }
  }
  return Status::Ok();
}

int RunBenchFetch(const FetchBenchArgs& a) {
  if (::geteuid() != 0) return Failed(FailedPrecondition("bench fetch needs root (network namespaces, tc, CRIU)"));
  for (const char* tool : {"ip", "tc", "curl", "nginx", "docker-registry", "openssl"}) {
    if (auto p = OnPath(tool); !p.ok()) return Failed(p.status());
  }
  StartSignalWatcher();
  Ctx c;
  c.args = &a;
  if (Status s = PrepareDirs(c, a); !s.ok()) return Failed(s);
  if (Status s = PinBinaries(c); !s.ok()) return Failed(s.Prefixed("copying the executables"));
  struct RemoveScratch {
    const Ctx& c;
    bool keep;
    ~RemoveScratch() {
      std::error_code ec;
      if (keep) {
        Note("kept " + c.scratch + " (logs, registry storage, certificates)");
      } else {
        fs::remove_all(c.scratch, ec);
      }
    }
  } remove_scratch{c, a.keep};
  if (!a.keep) {
    std::lock_guard<std::mutex> lock(Pending().mu);
    Pending().scratch = c.scratch;
  }
  Note("bench directory " + c.home + "; this run's files in " + c.scratch);
  // Without a push subcommand, `hotboot push --help` prints the top-level help and exits 0.
  auto push_help = RunCommand({c.self, "push", "--help"}, c.Log("push-help"), std::chrono::seconds(30));
  c.oci = push_help.ok() && push_help->find(" push [OPTIONS]") != std::string::npos;
  if (!c.oci) Note("warning: this hotboot has no `push`: cases (b) and (c) are not run");

  auto presets = PreparePresets(c);
  if (!presets.ok()) return Failed(presets.status());
  const std::string ns_name = "hotboot-bench-" + std::to_string(::getpid());
  auto servers = StartServers(c, ns_name);
  if (!servers.ok()) return Failed(servers.status());
  if (c.oci) {
    for (const auto& p : *presets) {
      if (Status s = PushSnapshot(c, p); !s.ok()) return Failed(s.Prefixed("push " + p.name));
    }
  }
  std::vector<Case> cases;
  for (const auto& p : *presets) {
    for (double r : a.rates) cases.push_back({p.name, r, {}, {}});
  }
  bool failed = false;
  for (int rep = 0; rep < a.repeat; ++rep) {
    if (Status s = RunRepeat(c, *presets, rep, &cases, &failed); !s.ok()) return Failed(s);
  }

  std::vector<ojson> results;
  for (const auto& k : cases) results.push_back(CaseJson(k, a));
  if (a.json_out) {
    ojson arr = ojson::array();
    for (auto& j : results) arr.push_back(j);
    std::printf("%s\n", arr.dump(2).c_str());
    PrintTable(stderr, results, a, ns_name);  // for the person watching; stdout stays JSON
  } else {
    PrintTable(stdout, results, a, ns_name);
  }
  return failed ? kExitFailure : kExitOk;
}

}  // namespace

void AddBenchFetch(CLI::App& bench, Runner* run) {
  auto a = std::make_shared<FetchBenchArgs>();
  CLI::App* f = bench.add_subcommand(
      "fetch", "Restore from a registry, streamed, vs download-then-restore, the node cache and a cold boot, "
               "over a loopback shaped to each rate");
  f->footer(
      "Needs root. Builds (or reuses) the reference server's snapshot of each preset under the bench\n"
      "directory (--workdir, default $HOTBOOT_HOME/bench-fetch; every server maps its weights from its\n"
      "weights/ directory, HOTBOOT_WEIGHTS_DIR; every command runs the copies of hotboot and\n"
      "hotboot-server it keeps in its bin/, and a changed server means new snapshots), creates a\n"
      "network namespace hotboot-bench-PID with its\n"
      "loopback up, and runs Debian's docker-registry (127.0.0.1:5000) and nginx (127.0.0.1:8443,\n"
      "static files with Range) inside it, over TLS with a CA the bench makes with openssl (or plain\n"
      "HTTP with --plain-http), and pushes each snapshot (`hotboot push`). Then, for each rate, its\n"
      "loopback is shaped with `tc qdisc replace dev lo root tbf rate R burst max(1 MB, 1 ms of R)\n"
      "latency 50ms`, and every command below runs inside it (`ip netns exec`):\n"
      "  local     hotboot restore FILE, empty weights directory, then again with the weights in place\n"
      "  (a)       curl -o FILE of the whole snapshot from nginx, then hotboot restore FILE\n"
      "  (b)       hotboot restore oci://... with an empty --cache-dir and an emptied weights directory\n"
      "  (c)       the same again, node cache and weights kept\n"
      "  (d)       the server's cold boot (once per preset and repeat: it does not cross the link), and a\n"
      "            curl of its model file at the rate: what a fresh host would download first\n"
      "Times are wall clock from just before the bench starts the process to its ready line (restore)\n"
      "or the first 200 from GET /readyz (cold boot, polled every 10 ms); restores run with\n"
      "--no-latency-check (the canary still runs) and are stopped with SIGTERM once ready. The page\n"
      "cache is not dropped: the registry's disk and a downloaded file are warm, as on a host that\n"
      "just wrote them. transfer = bytes_fetched * 8 / rate; lower bound = max(transfer, local\n"
      "restore); overlap efficiency = lower bound / streamed. Targets: streamed within 15% of the\n"
      "lower bound, cached within 20% of the local restore with weights in place.\n"
      "Progress goes to stderr, commands' output to the run's logs/ (kept with --keep). The namespace\n"
      "and everything in it are removed at the end, on failure and on SIGINT/SIGTERM.");
  f->add_option("--presets", a->presets, "Presets to measure (comma-separated)")
      ->delimiter(',')
      ->check(CLI::IsMember({"tiny", "small", "1b"}))
      ->capture_default_str();
  f->add_option("--rates", a->rates, "Link rates in Gbit/s (comma-separated)")
      ->delimiter(',')
      ->check(CLI::Range(0.01, 100.0))
      ->capture_default_str();
  f->add_option("--repeat", a->repeat, "Runs of each case; medians are reported")
      ->check(CLI::Range(1, 50))
      ->capture_default_str();
  f->add_option("--workdir", a->workdir, "The bench directory (default $HOTBOOT_HOME/bench-fetch)");
  f->add_flag("--plain-http", a->plain_http, "Registry and file server over plain HTTP instead of TLS");
  f->add_flag("--rebuild", a->rebuild, "Build the snapshots again even when the bench directory has them");
  f->add_flag("--keep", a->keep, "Keep this run's directory (logs, registry storage, certificates)");
  f->add_flag("--keep-going", a->keep_going, "Record a failed case and go on with the next (exit 1 at the end)");
  f->add_flag("--json", a->json_out, "Print a JSON array, one object per preset and rate");
  *run = [a, f]() { return f->parsed() ? RunBenchFetch(*a) : -1; };
}

}  // namespace hotboot::cli
