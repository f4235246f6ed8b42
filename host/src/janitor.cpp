#include "hotboot/janitor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "hotboot/cgroup.h"

namespace hotboot::host {

namespace {

// The janitor's table, in the child only (it is a copy there; the parent
// never touches it). Fixed size: the child may not allocate.
constexpr int kMaxEntries = 128;
struct Entry {
  bool used;
  bool cgroup;
  char path[PATH_MAX];
};
Entry g_entries[kMaxEntries];

bool StartsWith(const char* s, const char* prefix) { return ::strncmp(s, prefix, ::strlen(prefix)) == 0; }

void Register(const char* path, bool cgroup) {
  const size_t n = ::strlen(path);
  if (n == 0 || n >= PATH_MAX) return;
  for (auto& e : g_entries) {
    if (e.used && e.cgroup == cgroup && ::strcmp(e.path, path) == 0) return;
  }
  for (auto& e : g_entries) {
    if (!e.used) {
      e.used = true;
      e.cgroup = cgroup;
      ::memcpy(e.path, path, n + 1);
      return;
    }
  }
}

void Forget(const char* path) {
  for (auto& e : g_entries) {
    if (e.used && ::strcmp(e.path, path) == 0) e.used = false;
  }
}

// Processes first (they may hold or write the temporaries), then files.
void EndEverything() {
  for (auto& e : g_entries) {
    if (e.used && e.cgroup) internal::KillAndRemoveCgroup(e.path, 3000);
  }
  for (auto& e : g_entries) {
    if (e.used && !e.cgroup) internal::RemoveTree(e.path);
  }
}

[[noreturn]] void JanitorMain(int fd) {
  struct sigaction ign{};
  ign.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGTSTP, SIGTTIN, SIGTTOU}) {
    ::sigaction(sig, &ign, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::setsid();
  ::prctl(PR_SET_NAME, "hotboot-janitor", 0, 0, 0);
  (void)!::chdir("/");
  // Only our pipe, at fd 3; nothing else of the parent's (its servers'
  // pipes, its stdout that a caller may read to EOF) stays open here.
  if (fd != 3) {
    ::dup2(fd, 3);
    fd = 3;
  }
  ::syscall(SYS_close_range, 4U, ~0U, 0U);
  int nul = ::open("/dev/null", O_RDWR);
  for (int i = 0; i < 3; ++i) ::dup2(nul, i);
  if (nul > 3) ::close(nul);

  static char line[PATH_MAX + 64];
  size_t len = 0;
  bool overflow = false;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the job is gone
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] != '\n') {
        if (len < sizeof line - 1) {
          line[len++] = buf[i];
        } else {
          overflow = true;
        }
        continue;
      }
      line[len] = '\0';
      if (!overflow) {
        if (::strcmp(line, "done") == 0) ::_exit(0);
        if (StartsWith(line, "cgroup ")) Register(line + 7, true);
        else if (StartsWith(line, "path ")) Register(line + 5, false);
        else if (StartsWith(line, "release ")) Forget(line + 8);
      }
      len = 0;
      overflow = false;
    }
  }
  EndEverything();
  ::_exit(0);
}

}  // namespace

Result<std::unique_ptr<Janitor>> Janitor::Start() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return ErrnoError("pipe for the janitor", errno);
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(p[0]);
    ::close(p[1]);
    return ErrnoError("fork the janitor", e);
  }
  if (pid == 0) {
    ::close(p[1]);
    JanitorMain(p[0]);
  }
  ::close(p[0]);
  return std::unique_ptr<Janitor>(new Janitor(pid, p[1]));
}

Status Janitor::Send(const std::string& line) {
  std::lock_guard lock(mu_);
  if (fd_ < 0) return FailedPrecondition("the janitor has been told we are done");
  if (line.find('\n') != std::string::npos) return InvalidArgument("a path with a newline cannot be registered");
  const std::string msg = line + "\n";
  size_t off = 0;
  while (off < msg.size()) {
    ssize_t n = ::write(fd_, msg.data() + off, msg.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write to the janitor (pid " + std::to_string(pid_) + ")", errno);
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

void Janitor::Done() {
  {
    std::lock_guard lock(mu_);
    if (fd_ < 0) return;
  }
  (void)Send("done");
  {
    std::lock_guard lock(mu_);
    ::close(fd_);
    fd_ = -1;
  }
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

Janitor::~Janitor() { Done(); }

}  // namespace hotboot::host
