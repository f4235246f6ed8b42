#include "hotboot/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

namespace hotboot::host {

namespace {

constexpr long kCgroup2Magic = 0x63677270;  // CGROUP2_SUPER_MAGIC

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

namespace internal {
namespace {

long NowMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// dir + "/" + leaf into out[n]; false when it does not fit.
bool Join(char* out, size_t n, const char* dir, const char* leaf) {
  size_t a = ::strlen(dir), b = ::strlen(leaf);
  if (a + 1 + b + 1 > n) return false;
  ::memcpy(out, dir, a);
  out[a] = '/';
  ::memcpy(out + a + 1, leaf, b + 1);
  return true;
}

// True when cgroup.events (fd) says "populated 0". Reading it also re-arms
// its poll notification.
bool Unpopulated(int events_fd) {
  char buf[256];
  ssize_t n = ::pread(events_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return false;
  buf[n] = '\0';
  return ::strstr(buf, "populated 0") != nullptr;
}

// SIGKILL to every pid listed in cgroup.procs; how many were listed.
int KillListed(const char* dir) {
  char p[PATH_MAX + 32];
  if (!Join(p, sizeof p, dir, "cgroup.procs")) return 0;
  int fd = ::open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  int count = 0;
  long pid = 0;
  bool in_number = false;
  char buf[1024];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] >= '0' && buf[i] <= '9') {
        pid = pid * 10 + (buf[i] - '0');
        in_number = true;
      } else if (in_number) {
        if (pid > 0) ::kill(static_cast<pid_t>(pid), SIGKILL), ++count;
        pid = 0;
        in_number = false;
      }
    }
  }
  if (in_number && pid > 0) ::kill(static_cast<pid_t>(pid), SIGKILL), ++count;
  ::close(fd);
  return count;
}

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Calls visit(entry) for every entry of directory `fd` but "." and "..",
// pass after pass: entries removed while a directory is read may make the
// read skip others, so it reads again until a pass in which visit returned
// true for none (or `stop` is set). No allocation (the janitor uses it).
template <class Visit>
void EachEntryUntilNoneLeft(int fd, const bool& stop, Visit&& visit) {
  for (int pass = 0; pass < 64 && !stop; ++pass) {
    bool seen = false;
    alignas(8) char buf[2048];
    ::lseek(fd, 0, SEEK_SET);
    for (;;) {
      long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        auto* d = reinterpret_cast<LinuxDirent64*>(buf + off);
        off += d->d_reclen;
        if (::strcmp(d->d_name, ".") == 0 || ::strcmp(d->d_name, "..") == 0) continue;
        if (visit(*d)) seen = true;
      }
    }
    if (!seen) break;
  }
}

int RemoveAt(int dirfd, const char* name, int depth) {
  if (::unlinkat(dirfd, name, 0) == 0 || errno == ENOENT) return 0;
  if (errno != EISDIR && errno != EPERM) return errno;
  if (depth > 48) return ELOOP;
  int fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : errno;
  const bool never = false;
  EachEntryUntilNoneLeft(fd, never, [&](const LinuxDirent64& d) {
    RemoveAt(fd, d.d_name, depth + 1);
    return true;
  });
  ::close(fd);
  if (::unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT) return 0;
  return errno;
}

// Removes the cgroups below the cgroup directory `fd`, deepest first (a
// cgroup's own files cannot be unlinked: they go with their directory).
// A restore run inside a job's cgroup (a bench's) gives its replica a
// cgroup there, which would otherwise keep that one from being removed.
int RemoveChildCgroups(int fd, int depth) {
  if (depth > 32) return ELOOP;
  int rc = 0;
  bool stop = false;  // after a pass with a failure
  EachEntryUntilNoneLeft(fd, stop, [&](const LinuxDirent64& d) {
    if (d.d_type != DT_DIR) return false;
    int child = ::openat(fd, d.d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (child < 0) return false;
    int r = RemoveChildCgroups(child, depth + 1);
    ::close(child);
    if (r == 0 && ::unlinkat(fd, d.d_name, AT_REMOVEDIR) != 0 && errno != ENOENT) r = errno;
    if (r != 0) rc = r, stop = true;
    return true;
  });
  return rc;
}

}  // namespace

int KillAndRemoveCgroup(const char* path, int timeout_ms) {
  char p[PATH_MAX + 32];
  bool killed = false;
  if (Join(p, sizeof p, path, "cgroup.kill")) {
    int fd = ::open(p, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      killed = ::write(fd, "1", 1) == 1;
      ::close(fd);
    } else if (errno == ENOENT && ::access(path, F_OK) != 0) {
      return 0;  // already gone
    }
  }
  int events = Join(p, sizeof p, path, "cgroup.events") ? ::open(p, O_RDONLY | O_CLOEXEC) : -1;
  const long deadline = NowMs() + timeout_ms;
  int rc = 0;
  for (;;) {
    if (events >= 0 && Unpopulated(events)) break;
    // Without cgroup.kill (kernel < 5.14): kill what is listed until
    // nothing is (a process may fork while we read the list).
    int listed = killed ? 1 : KillListed(path);
    if (listed == 0 && events < 0) break;
    const long left = deadline - NowMs();
    if (left <= 0) {
      rc = ETIMEDOUT;
      break;
    }
    // cgroup.events notifies (POLLPRI) when "populated" changes; the cap
    // re-reads it in case a notification came between the read and the poll.
    pollfd pf{events, POLLPRI, 0};
    ::poll(events >= 0 ? &pf : nullptr, events >= 0 ? 1 : 0, static_cast<int>(left < 50 ? left : 50));
  }
  if (events >= 0) ::close(events);
  // rmdir can briefly answer EBUSY while the last task's exit is accounted.
  for (;;) {
    if (::rmdir(path) == 0 || errno == ENOENT) return rc;
    int err = errno;
    if (err == EBUSY || err == ENOTEMPTY) {
      // Cgroups made inside it: gone with their processes, their directories not.
      int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd >= 0) {
        const int r = RemoveChildCgroups(fd, 0);
        ::close(fd);
        if (r == 0 && (::rmdir(path) == 0 || errno == ENOENT)) return rc;
        err = r ? r : errno;
      }
    }
    if (err != EBUSY || NowMs() >= deadline) return rc ? rc : err;
    ::poll(nullptr, 0, 5);
  }
}

int RemoveTree(const char* path) { return RemoveAt(AT_FDCWD, path, 0); }

}  // namespace internal

Result<std::string> OwnCgroupDir() {
  std::string own;
  {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("0::", 0) == 0) own = line.substr(3);
    }
  }
  if (own.empty()) return NotFound("this process is in no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)");
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    const size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream tail(line.substr(sep + 3));
    std::string fstype;
    tail >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream head(line.substr(0, sep));
    std::string id, parent, devno, root, mountpoint;
    head >> id >> parent >> devno >> root >> mountpoint;
    // The mount shows the hierarchy from `root` down; our path must be under it.
    std::string rel;
    if (root == "/") {
      rel = own;
    } else if (own == root || own.rfind(root + "/", 0) == 0) {
      rel = own.substr(root.size());
    } else {
      continue;
    }
    if (rel == "/") rel.clear();
    return mountpoint + rel;
  }
  return NotFound("no cgroup2 filesystem is mounted");
}

Status CheckCgroupParent(const std::string& parent) {
  struct statfs sf{};
  if (::statfs(parent.c_str(), &sf) != 0) return ErrnoError("statfs " + parent, errno);
  if (static_cast<long>(sf.f_type) != kCgroup2Magic) return FailedPrecondition(parent + " is not a cgroup2 directory");
  if (::access((parent + "/cgroup.procs").c_str(), F_OK) != 0) {
    return FailedPrecondition(parent + " has no cgroup.procs");
  }
  if (::access(parent.c_str(), W_OK) != 0) return ErrnoError("cannot create cgroups in " + parent, errno);
  return Status::Ok();
}

Result<std::unique_ptr<Cgroup>> Cgroup::Create(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return InvalidArgument("bad cgroup path " + path);
  HB_RETURN_IF_ERROR(CheckCgroupParent(path.substr(0, slash)));
  if (::mkdir(path.c_str(), 0755) != 0) return ErrnoError("mkdir cgroup " + path, errno);
  int fd = ::open((path + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    Status s = ErrnoError("open " + path + "/cgroup.procs", errno);
    ::rmdir(path.c_str());
    return s;
  }
  return std::unique_ptr<Cgroup>(new Cgroup(path, fd));
}

Cgroup::~Cgroup() {
  if (procs_fd_ >= 0) ::close(procs_fd_);
}

Status Cgroup::Enter(pid_t pid) const {
  const std::string s = std::to_string(pid);
  if (::pwrite(procs_fd_, s.data(), s.size(), 0) != static_cast<ssize_t>(s.size())) {
    return ErrnoError("move pid " + s + " into cgroup " + path_, errno);
  }
  return Status::Ok();
}

std::vector<pid_t> Cgroup::Pids() const {
  std::vector<pid_t> out;
  std::istringstream in(ReadSmallFile(path_ + "/cgroup.procs"));
  long p;
  while (in >> p) out.push_back(static_cast<pid_t>(p));
  return out;
}

bool Cgroup::Populated() const {
  return ReadSmallFile(path_ + "/cgroup.events").find("populated 1") != std::string::npos;
}

Status Cgroup::Destroy(std::chrono::milliseconds timeout) {
  if (destroyed_) return Status::Ok();
  int rc = internal::KillAndRemoveCgroup(path_.c_str(), static_cast<int>(timeout.count()));
  if (rc != 0) {
    return ErrnoError("end cgroup " + path_ + (rc == ETIMEDOUT ? " (processes still in it)" : ""), rc);
  }
  destroyed_ = true;
  return Status::Ok();
}

}  // namespace hotboot::host
