#include "hotboot/job.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace hotboot::host {

namespace fs = std::filesystem;

namespace {

// A directory only we may write: made 0700 when missing, and checked after
// (a directory, not a symlink, ours, not writable by group or others), so
// nobody else can plant a journal that makes us remove their choice of path.
Status EnsurePrivateDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoError("mkdir " + dir, errno);
  struct stat st{};
  if (::lstat(dir.c_str(), &st) != 0) return ErrnoError("stat " + dir, errno);
  if (!S_ISDIR(st.st_mode)) return FailedPrecondition(dir + " is not a directory");
  if (st.st_uid != ::geteuid()) return FailedPrecondition(dir + " is not owned by us (uid " + std::to_string(st.st_uid) + ")");
  if (st.st_mode & 022) return FailedPrecondition(dir + " is writable by others");
  return Status::Ok();
}

// Lines of a file we own (O_NOFOLLOW, owner checked).
std::vector<std::string> ReadOwnedLines(const std::string& path) {
  std::vector<std::string> lines;
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return lines;
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || st.st_size > (1 << 20)) {
    ::close(fd);
    return lines;
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  ssize_t n = ::read(fd, data.data(), data.size());
  ::close(fd);
  if (n <= 0) return lines;
  data.resize(static_cast<size_t>(n));
  std::istringstream in(data);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// "<pid>.<start>[.rest]" → pid, start; false when it is not that.
bool ParseOwner(const std::string& s, pid_t* pid, uint64_t* start) {
  char* end = nullptr;
  long p = std::strtol(s.c_str(), &end, 10);
  if (end == s.c_str() || *end != '.' || p <= 0) return false;
  const char* st = end + 1;
  unsigned long long t = std::strtoull(st, &end, 10);
  if (end == st || (*end != '\0' && *end != '.')) return false;
  *pid = static_cast<pid_t>(p);
  *start = t;
  return true;
}

bool IsCgroupName(const std::string& path) {
  return fs::path(path).filename().string().rfind(kCgroupPrefix, 0) == 0;
}

}  // namespace

namespace {

// State (field 3) and start time (field 22) of /proc/PID/stat; false when
// there is no such process.
bool ReadStat(pid_t pid, char* state, uint64_t* start) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = s.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(s.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i) {
    if (!(rest >> field)) return false;
    if (i == 3) *state = field.empty() ? '?' : field[0];
  }
  *start = std::strtoull(field.c_str(), nullptr, 10);
  return true;
}

}  // namespace

uint64_t ProcessStartTime(pid_t pid) {
  char state;
  uint64_t start = 0;
  return ReadStat(pid, &state, &start) ? start : 0;
}

bool OwnerAlive(pid_t pid, uint64_t start_time) {
  char state;
  uint64_t start = 0;
  // A zombie has ended: its janitor saw it go, and nothing of it runs.
  return ReadStat(pid, &state, &start) && start == start_time && state != 'Z' && state != 'X';
}

std::string ContainmentProblem(const std::string& cgroup_parent) {
  std::string parent = cgroup_parent;
  if (parent.empty()) {
    auto own = OwnCgroupDir();
    if (!own.ok()) return own.status().message();
    parent = *own;
  }
  Status s = CheckCgroupParent(parent);
  return s.ok() ? "" : s.message();
}

SweepReport SweepStale(const std::string& state_dir, const std::string& cgroup_parent) {
  SweepReport rep;
  std::error_code ec;
  // Dead jobs' journals: replay what they registered and did not release.
  const std::string jobs = state_dir + "/jobs";
  if (EnsurePrivateDir(state_dir).ok() && EnsurePrivateDir(jobs).ok()) {
    for (const auto& e : fs::directory_iterator(jobs, ec)) {
      pid_t pid;
      uint64_t start;
      const std::string name = e.path().filename().string();
      if (!ParseOwner(name, &pid, &start) || OwnerAlive(pid, start)) continue;
      std::vector<std::string> cgroups, paths;
      for (const std::string& line : ReadOwnedLines(e.path().string())) {
        auto drop = [&](std::vector<std::string>& v, const std::string& p) { std::erase(v, p); };
        if (line.rfind("cgroup ", 0) == 0) cgroups.push_back(line.substr(7));
        else if (line.rfind("path ", 0) == 0) paths.push_back(line.substr(5));
        else if (line.rfind("release ", 0) == 0) drop(cgroups, line.substr(8)), drop(paths, line.substr(8));
      }
      for (const auto& cg : cgroups) {
        if (!IsCgroupName(cg) || ::access(cg.c_str(), F_OK) != 0) continue;
        if (internal::KillAndRemoveCgroup(cg.c_str(), 3000) == 0) ++rep.cgroups;
      }
      for (const auto& p : paths) {
        struct stat st{};
        if (::lstat(p.c_str(), &st) != 0) continue;
        if (internal::RemoveTree(p.c_str()) == 0) ++rep.paths;
      }
      ::unlink(e.path().c_str());
      ++rep.journals;
    }
  }
  // hotboot-* cgroups beside ours whose owner is gone (a journal lost with
  // its state dir, or none could be kept).
  const std::string replicas = state_dir + "/replicas";
  if (!cgroup_parent.empty()) {
    for (const auto& e : fs::directory_iterator(cgroup_parent, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind(kCgroupPrefix, 0) != 0 || !e.is_directory(ec)) continue;
      const size_t dot = name.find('.');
      pid_t pid;
      uint64_t start;
      if (dot == std::string::npos || !ParseOwner(name.substr(dot + 1), &pid, &start) || OwnerAlive(pid, start)) continue;
      const std::string record = replicas + "/" + name;
      if (::access(record.c_str(), F_OK) == 0) {
        // Handed over (a detached replica): its own until it is empty.
        std::ifstream events(e.path() / "cgroup.events");
        std::string text((std::istreambuf_iterator<char>(events)), std::istreambuf_iterator<char>());
        if (text.find("populated 0") == std::string::npos) continue;
        if (::rmdir(e.path().c_str()) == 0) ++rep.cgroups, ::unlink(record.c_str());
        continue;
      }
      if (internal::KillAndRemoveCgroup(e.path().c_str(), 3000) == 0) ++rep.cgroups;
    }
  }
  // Hand-over records whose cgroup is gone (its replica ended and someone
  // removed it).
  for (const auto& e : fs::directory_iterator(replicas, ec)) {
    for (const std::string& line : ReadOwnedLines(e.path().string())) {
      if (line.rfind("cgroup ", 0) == 0 && ::access(line.substr(7).c_str(), F_OK) != 0) {
        ::unlink(e.path().c_str());
      }
    }
  }
  return rep;
}

int SweepNamedTemporaries(const std::string& dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    std::string pid_part;
    if (name.rfind("hotboot-restore.", 0) == 0) {
      pid_part = name.substr(16, name.find('.', 16) - 16);
    } else if (name.rfind(".hotboot-build.", 0) == 0) {
      pid_part = name.substr(name.rfind('.') + 1);
    } else {
      continue;
    }
    char* end = nullptr;
    const long pid = std::strtol(pid_part.c_str(), &end, 10);
    if (end == pid_part.c_str() || *end != '\0' || pid <= 0) continue;
    // Without a recorded start time a live pid may be a recycled one: leave
    // those (the journal covers what current versions make).
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    if (internal::RemoveTree(e.path().c_str()) == 0) ++removed;
  }
  return removed;
}

Result<std::shared_ptr<Job>> Job::Start(const JobOptions& opts) {
  std::shared_ptr<Job> job(new Job());
  job->opts_ = opts;
  const pid_t self = ::getpid();
  job->owner_ = std::to_string(self) + "." + std::to_string(ProcessStartTime(self));
  job->parent_ = opts.cgroup_parent;
  if (job->parent_.empty()) {
    auto own = OwnCgroupDir();
    if (own.ok()) job->parent_ = *own;
  }
  const std::string problem = ContainmentProblem(job->parent_.empty() ? "/nonexistent" : job->parent_);
  if (job->parent_.empty() || !problem.empty()) {
    job->warning_ = "containment reduced: servers get no cgroup of their own here (" +
                    (job->parent_.empty() ? std::string("no cgroup v2 hierarchy") : problem) +
                    "); only their process group is ended, so what they setsid() can outlive hotboot";
  }
  if (opts.sweep) job->swept_ = SweepStale(opts.state_dir, job->contained() ? job->parent_ : "");
  if (EnsurePrivateDir(opts.state_dir).ok() && EnsurePrivateDir(opts.state_dir + "/jobs").ok()) {
    const std::string path = opts.state_dir + "/jobs/" + job->owner_;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
      job->journal_ = path;
      job->journal_fd_ = fd;
    }
  }
  HB_ASSIGN_OR_RETURN(job->janitor_, Janitor::Start());
  if (!job->journal_.empty()) HB_RETURN_IF_ERROR(job->janitor_->WatchPath(job->journal_));
  return job;
}

Job::~Job() {
  for (const auto& cg : cgroups_) internal::KillAndRemoveCgroup(cg.c_str(), 5000);
  for (const auto& p : temporaries_) internal::RemoveTree(p.c_str());
  if (journal_fd_ >= 0) ::close(journal_fd_);
  if (!journal_.empty()) ::unlink(journal_.c_str());
  if (janitor_) janitor_->Done();
}

Status Job::Record(const std::string& line) {
  if (journal_fd_ < 0) return Status::Ok();
  const std::string msg = line + "\n";
  if (::write(journal_fd_, msg.data(), msg.size()) != static_cast<ssize_t>(msg.size())) {
    return ErrnoError("append to job journal " + journal_, errno);
  }
  return Status::Ok();
}

Result<std::shared_ptr<Cgroup>> Job::NewCgroup() {
  if (!contained()) return std::shared_ptr<Cgroup>();
  std::lock_guard lock(mu_);
  // Numbered across the process, not the job: jobs of one process share its
  // owner name, and an earlier one's replica may still hold its cgroup.
  static std::atomic<uint64_t> seq{0};
  const std::string path =
      parent_ + "/" + kCgroupPrefix + opts_.kind + "." + owner_ + "." + std::to_string(seq++);
  // Registered before it exists: a death between mkdir and the line would
  // otherwise leave it to the name-based sweep only.
  HB_RETURN_IF_ERROR(Record("cgroup " + path));
  HB_RETURN_IF_ERROR(janitor_->WatchCgroup(path));
  auto cg = Cgroup::Create(path);
  if (!cg.ok()) {
    (void)janitor_->Release(path);
    (void)Record("release " + path);
    return cg.status();
  }
  cgroups_.insert(path);
  return std::shared_ptr<Cgroup>(std::move(cg).value());
}

Status Job::EndCgroup(Cgroup& cg) {
  HB_RETURN_IF_ERROR(cg.Destroy());
  std::lock_guard lock(mu_);
  cgroups_.erase(cg.path());
  (void)janitor_->Release(cg.path());
  (void)Record("release " + cg.path());
  return Status::Ok();
}

Result<std::string> Job::HandOver(Cgroup& cg, pid_t pid, const std::string& what) {
  std::lock_guard lock(mu_);
  std::string where = cg.path();
  const std::string dir = opts_.state_dir + "/replicas";
  if (EnsurePrivateDir(opts_.state_dir).ok() && EnsurePrivateDir(dir).ok()) {
    const std::string record = dir + "/" + fs::path(cg.path()).filename().string();
    int fd = ::open(record.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) {
      const std::string text = "cgroup " + cg.path() + "\npid " + std::to_string(pid) + "\nwhat " + what + "\n";
      const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      ::close(fd);
      if (ok) where = record;
    }
  }
  HB_RETURN_IF_ERROR(janitor_->Release(cg.path()));
  (void)Record("release " + cg.path());
  cgroups_.erase(cg.path());
  return where;
}

Status Job::AddTemporary(const std::string& path) {
  std::lock_guard lock(mu_);
  HB_RETURN_IF_ERROR(Record("path " + path));
  HB_RETURN_IF_ERROR(janitor_->WatchPath(path));
  temporaries_.insert(path);
  return Status::Ok();
}

void Job::DropTemporary(const std::string& path) {
  std::lock_guard lock(mu_);
  if (!temporaries_.erase(path)) return;
  (void)janitor_->Release(path);
  (void)Record("release " + path);
}

}  // namespace hotboot::host
