// A replica process as the builder and the restorer see it: a PID, the pipes
// wired to its fds 0-2, and the JSON-lines control channel over fds 0 and 1
// (server/CONTROL.md). Logs (fd 2) are pumped to a sink by a thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/job.h"
#include "hotboot/status.h"

namespace hotboot {

using LogSink = std::function<void(const std::string& line)>;

struct LaunchOptions {
  std::vector<std::string> argv;  // argv[0] is a path to the executable
  bool new_pid_namespace = true;  // so restored PIDs never collide
  std::string cwd = "/";
  // When set, fd 2 goes to this file instead of a pipe to us.
  std::string log_file;
  // fd 1 goes where fd 2 goes: for servers that do not speak the control
  // protocol (transparent mode) and print to stdout.
  bool stdout_to_log = false;
  // When set, the process is moved into a new cgroup of this job before it
  // execs, so that everything it ever starts is ended with it (host/job.h).
  // Null, or a job whose containment is reduced: only its process group is.
  std::shared_ptr<host::Job> job;
};

// argv0 itself when it names a path, else its first executable match on PATH.
Result<std::string> ResolveExecutable(const std::string& argv0);

class Replica {
 public:
  // Adopts a running process (a child of ours) and our ends of its pipes.
  Replica(pid_t pid, int control_write_fd, int control_read_fd, int log_read_fd, LogSink sink);
  // Kills the process if it is still ours (see Release), and with it its
  // cgroup: every process the server started, whatever it setsid()ed.
  ~Replica();
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  pid_t pid() const { return pid_; }
  // The cgroup that holds the whole tree (from then on Kill ends it as a
  // whole), and the job that owns it (kept alive as long as the replica).
  void Contain(std::shared_ptr<host::Job> job, std::shared_ptr<host::Cgroup> cgroup);
  // Null when the tree is not in a cgroup of its own.
  const host::Cgroup* cgroup() const { return cgroup_.get(); }

  // Sends one command and waits for its reply ({"reply": cmd, ...}); events
  // seen meanwhile are recorded. An {"ok": false} reply becomes an error.
  Result<nlohmann::json> Call(const nlohmann::json& cmd, std::chrono::milliseconds timeout);
  // Waits for {"event":"state","state":state}; fails early when the process
  // exits or reports state "failed".
  Result<nlohmann::json> WaitForState(const std::string& state, std::chrono::milliseconds timeout);

  // The last log lines (for error messages).
  std::string LogTail(size_t lines = 12) const;
  // LogTail after the process exited: waits (bounded) until the pump has read
  // what the process wrote before exiting.
  std::string FinalLogTail();
  // True and the wait status when the process has exited (reaps it).
  std::optional<int> Exited();
  // SIGKILL its cgroup (or, without one, its process group) and reap it.
  void Kill();
  // Forget the process: the destructor will not kill it (detached replica).
  // Its cgroup is handed over (host::Job::HandOver); returns where it is
  // recorded ("" when it has none).
  std::string Release();
  // Closes our end of the control channel (the server then keeps serving or
  // exits, per CONTROL.md) and stops pumping logs.
  void CloseChannel();
  // Blocks until the process exits; returns its wait status.
  int Wait();

  // Keys of fds 0,1,2 as CRIU names them from inside ("pipe:[123]"), read
  // from /proc before the dump.
  Result<std::vector<std::string>> FdKeys() const;

 private:
  Result<nlohmann::json> ReadUntil(const std::function<bool(const nlohmann::json&)>& want,
                                   std::chrono::milliseconds timeout, const std::string& what);
  std::string DescribeExit(int wstatus) const;

  pid_t pid_;
  std::shared_ptr<host::Job> job_;
  std::shared_ptr<host::Cgroup> cgroup_;
  int ctl_w_;
  int ctl_r_;
  int log_r_;
  bool owned_ = true;
  std::optional<int> exit_status_;
  std::string read_buf_;
  LogSink sink_;
  mutable std::mutex log_mu_;
  std::deque<std::string> log_tail_;
  std::condition_variable log_cv_;
  bool log_eof_ = false;  // the pump saw every writer of the log pipe go
  std::thread log_thread_;
};

// Forks (into a new PID namespace when asked), moves the child into a new
// cgroup of opts.job, makes it a session leader with only fds 0-2 (control
// in, control out, log), and execs argv.
Result<std::unique_ptr<Replica>> LaunchReplica(const LaunchOptions& opts, LogSink sink);

// Creates pipes for a restored replica's fds 0-2. `fds_for_child` are the
// ends the restored process inherits (in fd order 0,1,2); close them after
// the restore. When log_file is set, fd 2 is that file instead of a pipe.
struct ReplicaPipes {
  int child_fds[3] = {-1, -1, -1};
  int control_write = -1;
  int control_read = -1;
  int log_read = -1;
  void CloseChildEnds();
  void CloseAll();
};
Result<ReplicaPipes> MakeReplicaPipes(const std::string& log_file);

}  // namespace hotboot
