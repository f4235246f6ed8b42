#include "hotboot/host_info.h"

#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace hotboot {

HostInfo ReadHostInfo() {
  HostInfo h;
  utsname u{};
  if (::uname(&u) == 0) {
    h.hostname = u.nodename;
    h.kernel = u.release;
    h.arch = u.machine;
  }
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  bool have_flags = false;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    std::string val = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key == "model name" && h.cpu_model.empty()) h.cpu_model = val;
    if (key == "flags" && !have_flags) {
      std::istringstream fs(val);
      std::string f;
      while (fs >> f) h.cpu_flags.insert(f);
      have_flags = true;
    }
  }
  h.cpus = static_cast<int>(std::thread::hardware_concurrency());
  return h;
}

std::set<std::string> IsaFlags(const std::set<std::string>& all) {
  static const char* kIsa[] = {"sse3",      "ssse3",       "sse4_1",     "sse4_2",   "popcnt",
                               "avx",       "avx2",        "fma",        "f16c",     "bmi1",
                               "bmi2",      "movbe",       "avx512f",    "avx512bw", "avx512vl",
                               "avx512dq",  "avx512cd",    "avx512_bf16", "avx512_fp16",
                               "avx512_vnni", "avx_vnni",  "amx_tile",   "amx_bf16", "sha_ni",
                               "aes",       "pclmulqdq",   "rdrand",     "rdseed",   "adx",
                               "xsave",     "xsaveopt",    "xsavec"};
  std::set<std::string> out;
  for (const char* f : kIsa) {
    if (all.count(f)) out.insert(f);
  }
  return out;
}

Result<std::vector<MappedFile>> MappedFiles(pid_t pid) {
  std::string maps_path = "/proc/" + std::to_string(pid) + "/maps";
  std::ifstream in(maps_path);
  if (!in) return ErrnoError("open " + maps_path, errno);
  std::set<std::string> seen;
  std::vector<MappedFile> out;
  std::string line;
  while (std::getline(in, line)) {
    // address perms offset dev inode path
    std::istringstream ls(line);
    std::string addr, perms, offset, dev, inode, path;
    ls >> addr >> perms >> offset >> dev >> inode;
    std::getline(ls >> std::ws, path);
    if (path.empty() || path[0] != '/' || inode == "0") continue;
    // Shared anonymous memory (a MAP_SHARED|MAP_ANONYMOUS mapping shows as
    // "/dev/zero (deleted)", "/anon_hugepage (deleted)" with huge pages; the
    // CUDA driver leaves such mappings after its checkpoint), System V shared
    // memory, memfd files and AIO rings are memory that CRIU dumps with the
    // process, not files the restoring host must have.
    if (path.rfind("/dev/zero", 0) == 0 || path.rfind("/SYSV", 0) == 0 || path.rfind("/memfd:", 0) == 0 ||
        path.rfind("/anon_hugepage", 0) == 0 || path.rfind("/[aio]", 0) == 0) {
      continue;
    }
    if (path.find(" (deleted)") != std::string::npos) {
      return FailedPrecondition("process " + std::to_string(pid) + " maps a deleted file: " + path);
    }
    if (!seen.insert(path).second) continue;
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return ErrnoError("stat " + path, errno);
    out.push_back({path, static_cast<uint64_t>(st.st_size)});
  }
  return out;
}

nlohmann::json ToJson(const HostInfo& h) {
  return {{"hostname", h.hostname}, {"kernel", h.kernel},   {"arch", h.arch},
          {"cpu_model", h.cpu_model}, {"cpus", h.cpus},
          {"isa_flags", IsaFlags(h.cpu_flags)}};
}

HostInfo HostInfoFromJson(const nlohmann::json& j) {
  HostInfo h;
  if (!j.is_object()) return h;
  h.hostname = j.value("hostname", "");
  h.kernel = j.value("kernel", "");
  h.arch = j.value("arch", "");
  h.cpu_model = j.value("cpu_model", "");
  h.cpus = j.value("cpus", 0);
  if (j.contains("isa_flags") && j["isa_flags"].is_array()) {
    for (const auto& f : j["isa_flags"]) {
      if (f.is_string()) h.cpu_flags.insert(f.get<std::string>());
    }
  }
  return h;
}

std::pair<int, int> KernelMajorMinor(const std::string& release) {
  int major = 0, minor = 0;
  if (std::sscanf(release.c_str(), "%d.%d", &major, &minor) != 2) return {0, 0};
  return {major, minor};
}

std::vector<pid_t> ProcessTree(pid_t root) {
  std::vector<pid_t> out{root};
  // /proc/P/task/T/children lists the children of thread T (Linux >= 3.5
  // with CONFIG_PROC_CHILDREN, which every distribution kernel has).
  for (size_t i = 0; i < out.size(); ++i) {
    std::error_code ec;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(out[i]) + "/task", ec)) {
      std::ifstream in(t.path() / "children");
      long child = 0;
      while (in >> child) {
        if (std::find(out.begin(), out.end(), static_cast<pid_t>(child)) == out.end()) {
          out.push_back(static_cast<pid_t>(child));
        }
      }
    }
  }
  return out;
}

}  // namespace hotboot
