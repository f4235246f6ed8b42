// The seam around CRIU: one real implementation over libcriu's RPC (criu swrk)
// and test fakes. Nothing else in hotboot talks to CRIU.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hotboot/status.h"

namespace hotboot {

struct CriuDumpOptions {
  pid_t pid = 0;                // root of the tree (here: a PID namespace's init)
  std::string images_dir;       // must exist and be empty
  std::string log_file = "dump.log";  // relative to images_dir
  int log_level = 2;
  bool leave_running = false;
  // Resources whose other end lives outside the tree, e.g. "pipe:[1234]".
  std::vector<std::string> externals;
  unsigned timeout_s = 0;  // 0: CRIU's default
  // The dumped tree's cgroup: CRIU runs in it too (as for a restore, below),
  // so that ending the cgroup when the build dies ends a dump in progress,
  // which would otherwise go on writing images after their directory was
  // removed. A wrapper is written beside images_dir. Empty: CRIU runs in ours.
  std::string cgroup;
};

struct CriuRestoreOptions {
  std::string images_dir;
  std::string work_dir;  // where restore.log goes; defaults to images_dir
  std::string log_file = "restore.log";
  int log_level = 2;
  // fd in this process → the external resource key recorded at dump.
  std::vector<std::pair<int, std::string>> inherit_fds;
  // A cgroup (v2 directory) for the restored tree. CRIU's restore process
  // moves itself into it before it starts (a wrapper in work_dir that enters
  // it and execs criu), and CRIU leaves cgroups alone (CRIU_CG_MODE_IGNORE),
  // so the restored processes start in it, never in the cgroup they were
  // dumped from (the build's, gone by now). Empty: CRIU's restore runs in
  // ours, and so does the tree.
  std::string cgroup;
};

class Criu {
 public:
  virtual ~Criu() = default;
  // "4.2.1"; an error when CRIU cannot be run.
  virtual Result<std::string> Version() = 0;
  virtual Status Dump(const CriuDumpOptions& opts) = 0;
  // Restores the tree as a child of the calling process; returns its host PID.
  virtual Result<pid_t> Restore(const CriuRestoreOptions& opts) = 0;
};

// libcriu over `criu swrk`; `criu_binary` empty means "criu" from PATH.
std::unique_ptr<Criu> MakeLibCriu(std::string criu_binary = "");

// The last `max_lines` lines of a CRIU log that carry errors, for messages.
std::string CriuLogTail(const std::string& log_path, size_t max_lines = 8);

}  // namespace hotboot
