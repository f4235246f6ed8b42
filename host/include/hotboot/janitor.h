// The janitor: a small process forked when a build or restore starts, which
// ends what that job started if the job dies in any way (SIGKILL included).
//
// Why a process: nothing runs in a process killed by SIGKILL, and neither
// PDEATHSIG nor a process group reaches a server that forked and setsid()ed.
// A process that outlives us can: it holds the read end of a pipe whose only
// writer is us (close-on-exec, and closed in every child we fork before it
// execs), so its read returns EOF exactly when we are gone, whatever the
// signal. We tell it, line by line, what to end:
//   "cgroup PATH"   kill every process in this cgroup and rmdir it
//   "path PATH"     remove this file or directory tree
//   "release PATH"  forget PATH (we removed it, or handed it over)
//   "done"          we finished normally: exit without touching anything
// On EOF without "done" it kills and removes each cgroup still registered,
// waits until each is empty (cgroup.events, bounded), removes each path,
// and exits. Lines written before we die are in the pipe and read first.
//
// Why a plain fork and no exec: the janitor needs nothing but a few
// syscalls, so it needs no binary of its own to be found (hotboot, a test,
// a library user all get one); after fork() in a threaded process a child
// may only call async-signal-safe functions, so it reads into fixed
// buffers, and removes trees with getdents64/unlinkat (cgroup.h internal).
// It leaves the caller's session and process group (setsid) and ignores
// SIGINT/SIGTERM/SIGHUP, so a Ctrl-C or a kill of our process group does
// not take it down before it has cleaned; it stays in our cgroup, so a kill
// of that cgroup (a service stop, tools/pristine's final kill) ends it with
// everything else, our job cgroups included (they are its children).
#pragma once

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>

#include "hotboot/status.h"

namespace hotboot::host {

class Janitor {
 public:
  static Result<std::unique_ptr<Janitor>> Start();
  ~Janitor();  // Done()
  Janitor(const Janitor&) = delete;
  Janitor& operator=(const Janitor&) = delete;

  pid_t pid() const { return pid_; }
  Status WatchCgroup(const std::string& path) { return Send("cgroup " + path); }
  Status WatchPath(const std::string& path) { return Send("path " + path); }
  Status Release(const std::string& path) { return Send("release " + path); }
  // Tells it to exit untouched and reaps it.
  void Done();

 private:
  Janitor(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  Status Send(const std::string& line);
  pid_t pid_;
  int fd_;
  std::mutex mu_;
};

}  // namespace hotboot::host
