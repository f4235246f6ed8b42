#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "hotboot/restore.h"

namespace hotboot {

using json = nlohmann::json;

namespace {

std::vector<int> VersionParts(const std::string& v) {
  std::vector<int> out;
  int cur = 0;
  bool any = false;
  for (char c : v) {
    if (c >= '0' && c <= '9') {
      cur = cur * 10 + (c - '0');
      any = true;
    } else if (c == '.') {
      out.push_back(cur);
      cur = 0;
    } else {
      break;
    }
  }
  if (any) out.push_back(cur);
  while (out.size() < 3) out.push_back(0);
  return out;
}

}  // namespace

std::vector<CompatProblem> CheckCompatibility(const json& m, const HostInfo& host,
                                              const std::string& criu_version) {
  std::vector<CompatProblem> p;
  HostInfo built = HostInfoFromJson(m.value("host", json::object()));
  if (!built.arch.empty() && built.arch != host.arch) {
    p.push_back({"arch", "snapshot was built on " + built.arch + ", this host is " + host.arch});
  }
  std::vector<std::string> missing;
  for (const auto& f : built.cpu_flags) {
    if (!host.cpu_flags.count(f)) missing.push_back(f);
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& f : missing) list += (list.empty() ? "" : " ") + f;
    p.push_back({"cpu", "this CPU lacks instruction set extensions the build host had: " + list +
                            " (build host: " + built.cpu_model + ")"});
  }
  // CRIU restores across kernel versions as long as the kernel is not older
  // than the one that made the images (features may be missing otherwise).
  auto bk = KernelMajorMinor(built.kernel), hk = KernelMajorMinor(host.kernel);
  if (bk.first != 0 && hk < bk) {
    p.push_back({"kernel", "snapshot was built on kernel " + built.kernel + ", this host runs older " +
                               host.kernel});
  }
  std::string built_criu = m.value("criu", json::object()).value("version", "");
  if (criu_version.empty()) {
    p.push_back({"criu", "CRIU is not installed or cannot run here; run tools/install-deps"});
  } else if (!built_criu.empty()) {
    auto b = VersionParts(built_criu), h = VersionParts(criu_version);
    if (h[0] != b[0] || h < b) {
      p.push_back({"criu", "snapshot images come from CRIU " + built_criu + ", this host has CRIU " +
                               criu_version + " (needs the same major version, not older)"});
    }
  }
  const json proc = m.value("process", json::object());
  if (proc.contains("mapped_files") && proc["mapped_files"].is_array()) {
    for (const auto& f : proc["mapped_files"]) {
      std::string path = f.value("path", "");
      uint64_t size = f.value("size", uint64_t{0});
      struct stat st{};
      if (::stat(path.c_str(), &st) != 0) {
        p.push_back({"file", "the replica maps " + path + ", which does not exist here"});
      } else if (static_cast<uint64_t>(st.st_size) != size) {
        p.push_back({"file", "the replica maps " + path + " (" + std::to_string(size) +
                                 " bytes at build), which has " + std::to_string(st.st_size) +
                                 " bytes here: a different build of that file"});
      }
    }
  }
  if (proc.contains("cwd") && proc["cwd"].is_string()) {
    const std::string cwd = proc["cwd"].get<std::string>();
    struct stat st{};
    if (::stat(cwd.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      p.push_back({"file", "the replica's working directory " + cwd + " does not exist here"});
    }
  }
  return p;
}

std::string DescribeProblems(const std::vector<CompatProblem>& problems) {
  std::string out;
  for (const auto& p : problems) out += "\n  - " + p.what + ": " + p.detail;
  return out;
}

bool PortAvailable(const std::string& host, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    ::close(fd);
    return false;
  }
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

std::vector<std::string> WithPort(std::vector<std::string> cmd, int port) {
  for (size_t i = 0; i + 1 < cmd.size(); ++i) {
    if (cmd[i] == "--port") {
      cmd[i + 1] = std::to_string(port);
      return cmd;
    }
  }
  cmd.push_back("--port");
  cmd.push_back(std::to_string(port));
  return cmd;
}

}  // namespace hotboot
