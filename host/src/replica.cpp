#include "hotboot/replica.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

namespace hotboot {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void PumpLogs(int fd, LogSink sink, std::mutex* mu, std::deque<std::string>* tail,
              std::condition_variable* cv, bool* eof) {
  std::string buf;
  char chunk[4096];
  auto emit = [&](std::string line) {
    {
      std::lock_guard lock(*mu);
      tail->push_back(line);
      if (tail->size() > 64) tail->pop_front();
    }
    if (sink) sink(line);
  };
  for (;;) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t pos;
    while ((pos = buf.find('\n')) != std::string::npos) {
      emit(buf.substr(0, pos));
      buf.erase(0, pos + 1);
    }
  }
  if (!buf.empty()) emit(buf);
  {
    std::lock_guard lock(*mu);
    *eof = true;
  }
  cv->notify_all();
}

}  // namespace

Replica::Replica(pid_t pid, int control_write_fd, int control_read_fd, int log_read_fd,
                 LogSink sink)
    : pid_(pid), ctl_w_(control_write_fd), ctl_r_(control_read_fd), log_r_(log_read_fd),
      sink_(std::move(sink)) {
  if (log_r_ >= 0) {
    log_thread_ = std::thread(PumpLogs, log_r_, sink_, &log_mu_, &log_tail_, &log_cv_, &log_eof_);
  }
}

Replica::~Replica() {
  if (owned_) Kill();
  CloseChannel();
}

void Replica::CloseChannel() {
  CloseFd(ctl_w_);
  CloseFd(ctl_r_);
  if (log_thread_.joinable()) {
    // The pump ends when every writer of the log pipe is gone; a detached
    // replica keeps writing, so do not wait for it.
    if (owned_) {
      log_thread_.join();
    } else {
      log_thread_.detach();
    }
  }
  if (owned_) CloseFd(log_r_);
}

std::string Replica::LogTail(size_t lines) const {
  std::lock_guard lock(log_mu_);
  std::string out;
  size_t start = log_tail_.size() > lines ? log_tail_.size() - lines : 0;
  for (size_t i = start; i < log_tail_.size(); ++i) out += "  | " + log_tail_[i] + "\n";
  return out;
}

std::string Replica::FinalLogTail() {
  {
    // A child of the server may still hold the pipe; do not wait for it long.
    std::unique_lock lock(log_mu_);
    if (log_thread_.joinable()) {
      log_cv_.wait_for(lock, std::chrono::seconds(1), [&] { return log_eof_; });
    }
  }
  return LogTail();
}

std::optional<int> Replica::Exited() {
  if (exit_status_) return exit_status_;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) exit_status_ = st;
  if (r < 0 && errno == ECHILD) exit_status_ = 0;  // not ours any more
  return exit_status_;
}

void Replica::Contain(std::shared_ptr<host::Job> job, std::shared_ptr<host::Cgroup> cgroup) {
  job_ = std::move(job);
  cgroup_ = std::move(cgroup);
}

std::string Replica::Release() {
  owned_ = false;
  if (!job_ || !cgroup_) return "";
  auto where = job_->HandOver(*cgroup_, pid_, "replica pid " + std::to_string(pid_));
  return where.ok() ? *where : cgroup_->path();
}

void Replica::Kill() {
  // The cgroup first: it holds every process the server started, including
  // those that left its process group and session, and those of a root that
  // already exited. A cgroup that will not end is still the janitor's, and
  // the Job's when it ends.
  if (job_ && cgroup_ && !cgroup_->destroyed()) (void)job_->EndCgroup(*cgroup_);
  if (Exited()) return;
  // The whole process group (the server is a session leader, and so is its
  // CRIU-restored self): without a PID namespace of its own, killing the
  // root alone would leave its workers running on the GPU and the port.
  if (::kill(-pid_, SIGKILL) != 0) ::kill(pid_, SIGKILL);
  Wait();
}

int Replica::Wait() {
  while (!exit_status_) {
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, 0);
    if (r == pid_) exit_status_ = st;
    else if (r < 0 && errno != EINTR) exit_status_ = 0;
  }
  return *exit_status_;
}

std::string Replica::DescribeExit(int st) const {
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return std::string("was killed by signal ") + strsignal(WTERMSIG(st));
  return "stopped";
}

Result<std::vector<std::string>> Replica::FdKeys() const {
  std::vector<std::string> keys;
  for (int fd = 0; fd < 3; ++fd) {
    std::string link = "/proc/" + std::to_string(pid_) + "/fd/" + std::to_string(fd);
    char buf[PATH_MAX];
    ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
    if (n < 0) return ErrnoError("readlink " + link, errno);
    keys.emplace_back(buf, static_cast<size_t>(n));
  }
  return keys;
}

Result<json> Replica::ReadUntil(const std::function<bool(const json&)>& want,
                                std::chrono::milliseconds timeout, const std::string& what) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    size_t pos;
    while ((pos = read_buf_.find('\n')) != std::string::npos) {
      std::string line = read_buf_.substr(0, pos);
      read_buf_.erase(0, pos + 1);
      json msg = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (msg.is_discarded() || !msg.is_object()) continue;  // not a control message
      if (msg.value("event", "") == "state" && msg.value("state", "") == "failed") {
        return FailedPrecondition("server reported state failed while waiting for " + what +
                                  ": " + msg.value("error", "(no reason given)") + "\n" +
                                  LogTail());
      }
      if (want(msg)) return msg;
    }
    if (ctl_r_ < 0) return FailedPrecondition("control channel is closed");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return Timeout("no " + what + " from the server (pid " + std::to_string(pid_) +
                     ") within " + std::to_string(timeout.count() / 1000.0) + " s; last log:\n" +
                     LogTail());
    }
    pollfd p{ctl_r_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 200)));
    if (r < 0 && errno != EINTR) return ErrnoError("poll control channel", errno);
    if (r > 0) {
      char chunk[4096];
      ssize_t n = ::read(ctl_r_, chunk, sizeof chunk);
      if (n > 0) {
        read_buf_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        CloseFd(ctl_r_);
        // The server closed its end: it is exiting, or it does not speak the protocol.
        for (int i = 0; i < 20 && !Exited(); ++i) ::poll(nullptr, 0, 50);
        std::string how = Exited() ? DescribeExit(*Exited()) : "closed its control channel";
        return FailedPrecondition("server (pid " + std::to_string(pid_) + ") " + how +
                                  " while waiting for " + what + "; last log:\n" +
                                  (Exited() ? FinalLogTail() : LogTail()));
      }
    }
    if (auto st = Exited()) {
      return FailedPrecondition("server (pid " + std::to_string(pid_) + ") " + DescribeExit(*st) +
                                " while waiting for " + what + "; last log:\n" + FinalLogTail());
    }
  }
}

Result<json> Replica::Call(const json& cmd, std::chrono::milliseconds timeout) {
  if (ctl_w_ < 0) return FailedPrecondition("control channel is closed");
  std::string line = cmd.dump() + "\n";
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(ctl_w_, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write control command to pid " + std::to_string(pid_), errno);
    off += static_cast<size_t>(n);
  }
  const std::string name = cmd.value("cmd", "");
  HB_ASSIGN_OR_RETURN(json reply, ReadUntil([&](const json& m) { return m.value("reply", "") == name; },
                                            timeout, "reply to '" + name + "'"));
  if (!reply.value("ok", false)) {
    return FailedPrecondition("server refused '" + name + "': " + reply.value("error", "(no reason)"));
  }
  return reply;
}

Result<json> Replica::WaitForState(const std::string& state, std::chrono::milliseconds timeout) {
  return ReadUntil(
      [&](const json& m) { return m.value("event", "") == "state" && m.value("state", "") == state; },
      timeout, "state '" + state + "'");
}

void ReplicaPipes::CloseChildEnds() {
  for (int& fd : child_fds) CloseFd(fd);
}

void ReplicaPipes::CloseAll() {
  CloseChildEnds();
  CloseFd(control_write);
  CloseFd(control_read);
  CloseFd(log_read);
}

Result<ReplicaPipes> MakeReplicaPipes(const std::string& log_file) {
  ReplicaPipes p;
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) < 0) return ErrnoError("pipe", errno);
  if (::pipe2(out, O_CLOEXEC) < 0) {
    ::close(in[0]); ::close(in[1]);
    return ErrnoError("pipe", errno);
  }
  p.child_fds[0] = in[0];
  p.control_write = in[1];
  p.control_read = out[0];
  p.child_fds[1] = out[1];
  if (!log_file.empty()) {
    int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      Status s = ErrnoError("open log file " + log_file, errno);
      p.CloseAll();
      return s;
    }
    p.child_fds[2] = fd;
  } else {
    int err[2];
    if (::pipe2(err, O_CLOEXEC) < 0) {
      p.CloseAll();
      return ErrnoError("pipe", errno);
    }
    p.log_read = err[0];
    p.child_fds[2] = err[1];
  }
  // The child's ends travel to CRIU (forked and exec'd by libcriu) to be
  // inherited by the restored process: they must survive exec.
  for (int fd : p.child_fds) ::fcntl(fd, F_SETFD, 0);
  return p;
}

Result<std::string> ResolveExecutable(const std::string& argv0) {
  if (argv0.empty()) return InvalidArgument("empty command");
  if (argv0.find('/') != std::string::npos) {
    if (::access(argv0.c_str(), X_OK) != 0) return ErrnoError("cannot execute " + argv0, errno);
    return argv0;
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path && *path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    std::string cand = (dir.empty() ? "." : dir) + "/" + argv0;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return NotFound("cannot execute " + argv0 + ": not found on PATH");
}

Result<std::unique_ptr<Replica>> LaunchReplica(const LaunchOptions& opts, LogSink sink) {
  if (opts.argv.empty()) return InvalidArgument("no command to launch");
  HB_ASSIGN_OR_RETURN(const std::string exe, ResolveExecutable(opts.argv[0]));
  HB_ASSIGN_OR_RETURN(ReplicaPipes pipes, MakeReplicaPipes(opts.log_file));
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(exe.c_str()));
  for (size_t i = 1; i < opts.argv.size(); ++i) argv.push_back(const_cast<char*>(opts.argv[i].c_str()));
  argv.push_back(nullptr);
  // An exec failure is reported through this pipe (closed on a successful exec).
  int errp[2];
  if (::pipe2(errp, O_CLOEXEC) < 0) {
    pipes.CloseAll();
    return ErrnoError("pipe", errno);
  }
  std::shared_ptr<host::Cgroup> cgroup;
  if (opts.job) {
    auto cg = opts.job->NewCgroup();
    if (!cg.ok()) {
      pipes.CloseAll();
      ::close(errp[0]); ::close(errp[1]);
      return cg.status().Prefixed("a cgroup for " + opts.argv[0]);
    }
    cgroup = *cg;  // null when containment is reduced here
  }
  const int cg_fd = cgroup ? cgroup->procs_fd() : -1;
  unsigned long flags = SIGCHLD | (opts.new_pid_namespace ? CLONE_NEWPID : 0);
  pid_t pid = static_cast<pid_t>(::syscall(SYS_clone, flags, nullptr, nullptr, nullptr, nullptr));
  if (pid < 0) {
    int e = errno;
    pipes.CloseAll();
    ::close(errp[0]); ::close(errp[1]);
    if (cgroup) (void)opts.job->EndCgroup(*cgroup);
    return ErrnoError(opts.new_pid_namespace ? "clone(CLONE_NEWPID) (needs root)" : "fork", e);
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls from here to exec.
    ::setsid();
    // Into the job's cgroup before anything else runs here: nothing the
    // server forks can start outside it.
    if (cg_fd >= 0 && ::write(cg_fd, "0", 1) != 1) {
      int e = errno;
      (void)!::write(errp[1], &e, sizeof e);
      ::_exit(126);
    }
    for (int fd = 0; fd < 3; ++fd) ::dup2(pipes.child_fds[fd == 1 && opts.stdout_to_log ? 2 : fd], fd);
    int keep = errp[1];
    // Every other fd: our pipes to other servers, the janitor's pipe (whose
    // EOF must mean that hotboot is gone).
    if (keep > 3) ::syscall(SYS_close_range, 3U, static_cast<unsigned>(keep - 1), 0U);
    ::syscall(SYS_close_range, static_cast<unsigned>(keep + 1), ~0U, 0U);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::chdir(opts.cwd.c_str()) != 0) {
      int e = errno;
      (void)!::write(keep, &e, sizeof e);
      ::_exit(127);
    }
    ::execv(argv[0], argv.data());
    int e = errno;
    (void)!::write(keep, &e, sizeof e);
    ::_exit(127);
  }
  ::close(errp[1]);
  pipes.CloseChildEnds();
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(errp[0], &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  ::close(errp[0]);
  if (n == sizeof child_errno) {
    int st = 0;
    ::waitpid(pid, &st, 0);
    pipes.CloseAll();
    if (cgroup) (void)opts.job->EndCgroup(*cgroup);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 126) {
      return ErrnoError("move " + opts.argv[0] + " into cgroup " + cgroup->path(), child_errno);
    }
    return ErrnoError("exec " + opts.argv[0], child_errno);
  }
  auto replica = std::make_unique<Replica>(pid, pipes.control_write, pipes.control_read, pipes.log_read,
                                           std::move(sink));
  if (cgroup) replica->Contain(opts.job, std::move(cgroup));
  return replica;
}

}  // namespace hotboot
