// A cgroup v2 as the one container of a server tree: whatever the server
// forks, setsid()s or daemonizes stays in it, and it is ended as a whole
// (cgroup.kill, kernel >= 5.14; else SIGKILL of every pid in cgroup.procs
// until none is left). Plain membership: no controller is enabled, so the
// "no internal processes" rule never applies and any cgroup can hold these
// children, the root's or a service's.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::host {

// Where this process's cgroup v2 lives: the cgroup2 mount (from
// /proc/self/mountinfo) joined with our own path (the "0::" line of
// /proc/self/cgroup). Job cgroups are made under it, so whoever contains
// us (a service manager, tools/pristine) contains them too, and its kill of
// our cgroup reaches them (cgroup.kill is recursive).
Result<std::string> OwnCgroupDir();

// Why cgroups cannot be used under `parent` (not a cgroup2 directory, not
// writable, no cgroup.procs), or OK. Cheap: makes nothing.
Status CheckCgroupParent(const std::string& parent);

class Cgroup {
 public:
  // mkdir `path` (its parent must be a cgroup v2 directory).
  static Result<std::unique_ptr<Cgroup>> Create(const std::string& path);
  ~Cgroup();  // closes fds only: ending it is Destroy's (or the janitor's) job
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;

  const std::string& path() const { return path_; }
  // cgroup.procs open for writing: a forked child writes "0" to it before it
  // execs (async-signal-safe), so nothing it starts is ever outside.
  int procs_fd() const { return procs_fd_; }
  Status Enter(pid_t pid) const;
  std::vector<pid_t> Pids() const;
  bool Populated() const;
  // Kills every process in it, waits (bounded by `timeout`, on
  // cgroup.events' notifications) until none is left, and removes it.
  Status Destroy(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  bool destroyed() const { return destroyed_; }

 private:
  explicit Cgroup(std::string path, int procs_fd) : path_(std::move(path)), procs_fd_(procs_fd) {}
  std::string path_;
  int procs_fd_ = -1;
  bool destroyed_ = false;
};

namespace internal {
// Async-signal-safe pieces shared with the janitor (a forked child of a
// threaded process: raw syscalls only, no allocation).
// Kills everything in the cgroup at `path`, waits up to timeout_ms until
// it is empty, rmdirs it. 0 on success, else an errno.
int KillAndRemoveCgroup(const char* path, int timeout_ms);
// rm -rf without following symlinks (getdents64 + unlinkat). 0 or errno.
int RemoveTree(const char* path);
}  // namespace internal

}  // namespace hotboot::host
