// What the benches that start real processes share: see bench_env.h.
#include "bench_env.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "cli_common.h"
#include "hotboot/http_client.h"
#include "hotboot/manifest.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli::bench {

namespace fs = std::filesystem;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string Fixed(double v, int digits) {
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
std::string LogTail(const std::string& path, int lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0; i < all.size(); ++i) {
    out += "\n    " + all[i];
  }
  return out.empty() ? "" : "; the end of " + path + ":" + out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(std::clamp(q, 0.0, 1.0) * static_cast<double>(v.size()));
  const size_t i = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return v[std::min(i, v.size() - 1)];
}

void NoteError(const std::string& message) {
  while (Pending().stopping.load()) ::sleep(1);
  Note("error: " + message);
}

// ---- what a stop signal must undo ------------------------------------------

Undo& Pending() {
  static Undo u;
  return u;
}

int Failed(const Status& s) {
  while (Pending().stopping.load()) ::sleep(1);
  return Fail(s);
}

void StartSignalWatcher(const std::string& what) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set, what] {
    int sig = 0;
    while (::sigwait(&set, &sig) != 0) {
    }
    std::fprintf(stderr, "hotboot: %s interrupted by %s: stopping its processes, removing its namespace\n",
                 what.c_str(), strsignal(sig));
    Pending().stopping = true;
    std::set<pid_t> children;
    std::string netns, scratch, emptied;
    std::set<std::string> cgroups;
    {
      std::lock_guard<std::mutex> lock(Pending().mu);
      children = Pending().children;
      netns = Pending().netns;
      scratch = Pending().scratch;
      emptied = Pending().emptied;
      cgroups = Pending().cgroups;
    }
    for (pid_t p : children) ::kill(p, SIGTERM);
    if (!netns.empty()) RemoveNetns(netns);  // also ends whatever still runs inside it
    for (const auto& cg : cgroups) (void)KillCgroupTree(cg, /*remove_self=*/true);
    std::error_code ec;
    if (!scratch.empty()) fs::remove_all(scratch, ec);
    if (!emptied.empty()) (void)EmptyDir(emptied);
    std::_Exit(128 + sig);
  }).detach();
}

Status Preflight(const std::string& what, const std::string& why, const std::vector<std::string>& tools) {
  if (::geteuid() != 0) return FailedPrecondition(what + " needs root (" + why + ")");
  for (const auto& tool : tools) HB_RETURN_IF_ERROR(OnPath(tool).status());
  StartSignalWatcher(what);
  return Status::Ok();
}

Status KillCgroupTree(const std::string& path, bool remove_self, std::chrono::milliseconds timeout) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return Status::Ok();
  {
    std::ofstream kill(path + "/cgroup.kill");
    kill << "1";
  }
  auto populated = [&] {
    std::ifstream in(path + "/cgroup.events");
    std::string key, value;
    while (in >> key >> value) {
      if (key == "populated") return value != "0";
    }
    return false;
  };
  const auto deadline = Clock::now() + timeout;
  while (populated() && Clock::now() < deadline) ::usleep(10 * 1000);
  // Cgroups are directories whose files cannot be removed: rmdir each
  // directory below, deepest first.
  std::vector<fs::path> dirs;
  for (fs::recursive_directory_iterator it(path, fs::directory_options::none, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path());
  }
  std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
    return a.string().size() > b.string().size();
  });
  if (remove_self) dirs.push_back(path);
  for (const auto& d : dirs) {
    if (::rmdir(d.c_str()) != 0 && errno != ENOENT) return ErrnoError("remove the cgroup " + d.string(), errno);
  }
  return Status::Ok();
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

Result<std::unique_ptr<Child>> Child::Start(const std::vector<std::string>& argv, const std::string& log,
                                         bool capture, int cgroup_procs_fd) {
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
    if (cgroup_procs_fd >= 0 && ::write(cgroup_procs_fd, "0", 1) != 1) ::_exit(127);
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

std::optional<int> Child::Exited() {
  if (pid_ < 0) return status_;
  const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
  if (r != pid_) return std::nullopt;
  Reaped();
  return status_;
}

int Child::Wait(bool stop, std::chrono::seconds grace) {
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

std::string Child::Describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by ") + strsignal(WTERMSIG(status));
  return "ended";
}

void Child::Reaped() {
  std::lock_guard<std::mutex> lock(Pending().mu);
  Pending().children.erase(pid_);
  pid_ = -1;
}

Result<std::string> Child::Read(Clock::duration timeout, bool line_only) {
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

// Runs argv to the end; its stdout when it exits 0, else an error with its log's end.
Result<std::string> RunCommand(const std::vector<std::string>& argv, const std::string& log,
                               Clock::duration timeout) {
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

Result<std::unique_ptr<Netns>> Netns::Create(const std::string& name, const std::string& log) {
  {
    std::lock_guard<std::mutex> lock(Pending().mu);
    Pending().netns = name;
  }
  auto ns = std::unique_ptr<Netns>(new Netns(name, log));
  HB_RETURN_IF_ERROR(RunCommand({"ip", "netns", "add", name}, log).status());
  HB_RETURN_IF_ERROR(RunCommand({"ip", "-n", name, "link", "set", "lo", "up"}, log).status());
  return ns;
}

Netns::~Netns() {
  RemoveNetns(name_);
  std::lock_guard<std::mutex> lock(Pending().mu);
  Pending().netns.clear();
}

std::vector<std::string> Netns::Exec(const std::vector<std::string>& argv) const {
  // nsenter, not `ip netns exec`: that one also gives the command a mount
  // namespace with a /sys of its own, without the cgroup2 mount, and a
  // restore inside could then not give its replica a cgroup.
  std::vector<std::string> out = {"nsenter", "--net=/run/netns/" + name_, "--"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

Status Netns::Shape(double gbit) {
  const uint64_t burst = std::max<uint64_t>(1000000, static_cast<uint64_t>(gbit * 1e9 / 8 * 1e-3));
  const std::string rate = std::to_string(static_cast<uint64_t>(std::llround(gbit * 1000))) + "mbit";
  return RunCommand(Exec({"tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", rate, "burst",
                          std::to_string(burst), "latency", "50ms"}),
                    log_)
      .status();
}

Status Netns::RunInside(const std::function<Status()>& fn) const {
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

// ---- the servers inside ---------------------------------------------------

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  return out ? Status::Ok() : IoError("write " + path);
}

Status MakeDirs(const std::string& path, mode_t mode) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return IoError("create directory " + path + ": " + ec.message());
  if (::chmod(path.c_str(), mode) != 0) return ErrnoError("chmod " + path, errno);
  return Status::Ok();
}

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

std::string Endpoints::registry() const { return "127.0.0.1:" + std::to_string(kRegistryPort); }

std::string Endpoints::file_url(const std::string& name) const {
  return std::string(tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(kFilePort) + "/" + name;
}

std::vector<std::string> Endpoints::curl_tls() const {
  return tls ? std::vector<std::string>{"--cacert", ca} : std::vector<std::string>{};
}

std::vector<std::string> Endpoints::hotboot_remote() const {
  return tls ? std::vector<std::string>{"--ca-cert", ca} : std::vector<std::string>{"--plain-http"};
}

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

Result<Binaries> PinBinaries(const std::string& home) {
  const std::string dir = home + "/bin";
  HB_RETURN_IF_ERROR(MakeDirs(dir));
  HB_ASSIGN_OR_RETURN(std::string server, FindSibling("hotboot-server"));
  HB_RETURN_IF_ERROR(Pin("/proc/self/exe", dir, "hotboot").status());
  HB_ASSIGN_OR_RETURN(bool server_changed, Pin(server, dir, "hotboot-server"));
  if (server_changed) {
    std::error_code ec;
    for (fs::directory_iterator it(home + "/snapshots", ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() != ".hbsnap") continue;
      Note("removing " + it->path().string() + ": made with another hotboot-server than " + server);
      fs::remove(it->path(), ec);
    }
  }
  return Binaries{dir + "/hotboot", dir + "/hotboot-server"};
}

Result<std::string> EnsureSnapshot(const Binaries& bin, const std::string& home, const std::string& weights_dir,
                                   const std::string& preset, bool rebuild, const std::string& log) {
  const std::string snap = home + "/snapshots/" + preset + ".hbsnap";
  if (!rebuild && fs::exists(snap)) {
    auto reader = snapfile::SnapshotReader::Open(snap);
    auto m = reader.ok() ? ParseManifest((*reader)->manifest_json()) : Result<Manifest>(reader.status());
    if (m.ok() && fs::path(m->process.weights_dir).lexically_normal() == fs::path(weights_dir).lexically_normal()) {
      Note(preset + ": reusing " + snap + " (--rebuild builds it again)");
      return snap;
    }
    Note(preset + ": not reusing " + snap + ": " +
         (m.ok() ? "its weights directory is " + m->process.weights_dir : m.status().message()));
  }
  HB_RETURN_IF_ERROR(MakeDirs(home + "/snapshots"));
  Note(preset + ": building its snapshot: hotboot build --preset " + preset + " (log: " + log + ")");
  const auto t0 = Clock::now();
  HB_RETURN_IF_ERROR(
      RunCommand({bin.hotboot, "build", "--preset", preset, "-o", snap, "--server-log", log}, log).status());
  Note(preset + ": built " + snap + " in " + Fixed(SecondsSince(t0), 1) + " s");
  return snap;
}

// ---- one run of a bench ------------------------------------------------------------

std::string Run::Log(const std::string& what) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%03d-", ++log_seq);
  return logs + "/" + buf + what + ".log";
}

Status PrepareRunDirs(Run& run, const std::string& workdir, const std::string& default_name) {
  run.home = fs::absolute(workdir.empty() ? HomeDir() + "/" + default_name : workdir).lexically_normal().string();
  HB_RETURN_IF_ERROR(MakeDirs(run.home));
  run.weights = run.home + "/weights";
  run.scratch = run.home + "/run-" + std::to_string(::getpid());
  run.logs = run.scratch + "/logs";
  for (const auto* d : {&run.scratch, &run.logs}) HB_RETURN_IF_ERROR(MakeDirs(*d));
  return Status::Ok();
}

RunCleanup::RunCleanup(const Run& run, bool keep, bool empty_weights, std::string kept)
    : run_(run), keep_(keep), empty_weights_(empty_weights), kept_(std::move(kept)) {
  if (keep_) return;
  std::lock_guard<std::mutex> lock(Pending().mu);
  Pending().scratch = run_.scratch;
}

RunCleanup::~RunCleanup() {
  if (keep_) {
    Note("kept " + run_.scratch + " (" + kept_ + ")");
    return;
  }
  std::error_code ec;
  fs::remove_all(run_.scratch, ec);
  if (empty_weights_ && !run_.weights.empty()) (void)EmptyDir(run_.weights);
}

Result<Servers> StartServers(Run& run, const std::string& name, bool plain_http, const std::string& docroot) {
  Servers s;
  auto ns = Netns::Create(name, run.Log("netns"));
  if (!ns.ok()) return ns.status().Prefixed("network namespace " + name);
  s.ns = std::move(*ns);
  run.ns = s.ns.get();
  run.ep.tls = !plain_http;
  Tls tls;
  if (run.ep.tls) {
    auto t = MakeTls(run.scratch + "/tls", run.Log("openssl"));
    if (!t.ok()) return t.status().Prefixed("TLS certificates");
    tls = *t;
    run.ep.ca = tls.ca;
  }
  auto registry = StartRegistry(*run.ns, run.ep, tls, run.scratch + "/registry");
  if (!registry.ok()) return registry.status().Prefixed("docker-registry");
  s.registry = std::move(*registry);
  run.servers = {s.registry->pid()};
  std::string where = "docker-registry on " + run.ep.registry();
  if (!docroot.empty()) {
    auto nginx = StartFileServer(*run.ns, run.ep, tls, run.scratch + "/nginx", docroot);
    if (!nginx.ok()) return nginx.status().Prefixed("nginx");
    s.nginx = std::move(*nginx);
    run.servers.insert(s.nginx->pid());
    where += ", nginx on " + run.ep.file_url("");
  }
  Note("namespace " + name + ": " + where + (run.ep.tls ? " (TLS, CA " + run.ep.ca + ")" : " (plain HTTP)"));
  return s;
}

Result<Pushed> Push(Run& run, const std::string& hotboot, const std::string& snapshot, const std::string& ref,
                    const std::string& log) {
  std::vector<std::string> argv = {hotboot, "push", snapshot, ref, "--json"};
  for (const auto& o : run.ep.hotboot_remote()) argv.push_back(o);
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(std::string out, RunCommand(run.ns->Exec(argv), log));
  Pushed p;
  p.seconds = SecondsSince(t0);
  const auto j = nlohmann::json::parse(out.substr(0, out.find('\n')), nullptr, false);
  if (j.is_object()) p.bytes_uploaded = j.value("bytes_uploaded", uint64_t{0});
  return p;
}

void WaitForReplicasGone(const Run& run, const std::string& what) {
  auto others = [&] {
    std::vector<pid_t> left;
    for (pid_t p : PidsInNetns(run.ns->name())) {
      if (!run.servers.count(p)) left.push_back(p);
    }
    return left;
  };
  const auto t0 = Clock::now();
  while (!others().empty() && Clock::now() - t0 < std::chrono::seconds(20)) ::usleep(20 * 1000);
  if (auto left = others(); !left.empty()) {
    Note("warning: " + what + ": " + std::to_string(left.size()) + " process(es) still in the namespace 20 s after "
         "being stopped; killing them");
    for (pid_t p : left) ::kill(p, SIGKILL);
  }
}

// ---- replicas -----------------------------------------------------------------------

std::vector<std::string> RestoreArgv(const std::string& hotboot, const std::string& source, int port,
                                     const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {hotboot, "restore", source, "--port", std::to_string(port), "--json",
                                   "--no-latency-check"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

Result<RestoreReport> ParseRestoreLine(const std::string& line, const std::string& log) {
  const auto j = nlohmann::json::parse(line, nullptr, false);
  if (!j.is_object() || !j.value("ok", true)) {
    return FailedPrecondition("hotboot restore failed: " + line.substr(0, 400) + LogTail(log));
  }
  RestoreReport r;
  r.time_to_ready_s = j.value("time_to_ready_ms", 0.0) / 1000;
  r.timings_ms = j.value("timings_ms", nlohmann::json::object());
  if (j.contains("fetch") && j["fetch"].is_object()) {
    r.bytes_fetched = j["fetch"].value("bytes_fetched", uint64_t{0});
    r.bytes_from_cache = j["fetch"].value("bytes_from_cache", uint64_t{0});
  }
  return r;
}

Result<double> WaitReadyz(const Netns& ns, int port, Child& server, Clock::time_point t0) {
  double ready_s = 0;
  HB_RETURN_IF_ERROR(ns.RunInside([&]() -> Status {
    for (;;) {
      auto h = HttpRequest("127.0.0.1", port, "GET", "/readyz", "", std::chrono::seconds(2));
      if (h.ok() && h->status == 200) {
        ready_s = SecondsSince(t0);
        return Status::Ok();
      }
      if (auto st = server.Exited()) {
        return FailedPrecondition("the server " + Child::Describe(*st) + " before ready" + LogTail(server.log()));
      }
      if (Clock::now() - t0 > kRestoreTimeout) return Timeout("the server was not ready within 15 minutes");
      ::usleep(10 * 1000);
    }
  }));
  return ready_s;
}

}  // namespace hotboot::cli::bench
