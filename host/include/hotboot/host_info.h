// Facts about this host and a process that a snapshot records at build and
// that restore checks before touching anything.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/status.h"

namespace hotboot {

struct HostInfo {
  std::string hostname;
  std::string kernel;  // uname -r
  std::string arch;    // uname -m
  std::string cpu_model;
  std::set<std::string> cpu_flags;  // /proc/cpuinfo "flags" of the first CPU
  int cpus = 0;
};
HostInfo ReadHostInfo();

// ISA extensions that a restored process may have used: restoring on a host
// without one of them could fault on the first such instruction.
std::set<std::string> IsaFlags(const std::set<std::string>& all_flags);

// A file the process maps (its executable, shared libraries): CRIU restores
// the mapping by path, so it must exist with the same size on the new host.
struct MappedFile {
  std::string path;
  uint64_t size = 0;
};
Result<std::vector<MappedFile>> MappedFiles(pid_t pid);

nlohmann::json ToJson(const HostInfo& h);
HostInfo HostInfoFromJson(const nlohmann::json& j);

// `root` and all its descendants (host PIDs), parents before children.
std::vector<pid_t> ProcessTree(pid_t root);

// Parses "6.18.44-fc" into {6, 18}; {0,0} when unparsable.
std::pair<int, int> KernelMajorMinor(const std::string& release);

}  // namespace hotboot
