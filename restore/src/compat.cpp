#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "hotboot/node_cache.h"
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

std::vector<CompatProblem> CheckCompatibility(const Manifest& m, const HostInfo& host,
                                              const std::string& criu_version, double* hash_ms) {
  std::vector<CompatProblem> p;
  HostInfo built;
  built.kernel = m.host.kernel;
  built.arch = m.host.arch;
  built.cpu_model = m.host.cpu_model;
  built.cpu_flags.insert(m.host.isa_flags.begin(), m.host.isa_flags.end());
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
  const std::string& built_criu = m.criu.version;
  if (criu_version.empty()) {
    p.push_back({"criu", "CRIU is not installed or cannot run here; run tools/install-deps"});
  } else if (!built_criu.empty()) {
    auto b = VersionParts(built_criu), h = VersionParts(criu_version);
    if (h[0] != b[0] || h < b) {
      p.push_back({"criu", "snapshot images come from CRIU " + built_criu + ", this host has CRIU " +
                               criu_version + " (needs the same major version, not older)"});
    }
  }
  // The files CRIU maps back by path must be these very files: the same
  // size, and the same bytes (a library of another version, patched in place
  // or rebuilt to the same size, would run the restored process's code
  // against data laid out for the other one). The host's own files are
  // trusted, so XXH3-128 suffices: the threat is a different version, not a
  // forged collision.
  const auto th = std::chrono::steady_clock::now();
  // Files of the same size are hashed on a few threads at once, each thread
  // taking the next file: about 4 GB/s per thread from the page cache (the
  // reference server's 9 files, 14.6 MB: 4 ms), so a server that maps
  // gigabytes of libraries (libtorch, cuDNN) pays its largest file, not all.
  std::vector<const MappedFileEntry*> to_hash;
  for (const auto& f : m.process.mapped_files) {
    struct stat st{};
    if (::stat(f.path.c_str(), &st) != 0) {
      p.push_back({"file", "the replica maps " + f.path + ", which does not exist here"});
    } else if (static_cast<uint64_t>(st.st_size) != f.size) {
      p.push_back({"file", "the replica maps " + f.path + " (" + std::to_string(f.size) +
                               " bytes at build), which has " + std::to_string(st.st_size) +
                               " bytes here: a different build of that file"});
    } else if (!f.content_hash.empty()) {
      to_hash.push_back(&f);
    }
  }
  std::vector<std::string> found(to_hash.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next++) < to_hash.size();) {
      auto h = HashPathXxh128(to_hash[i]->path);
      found[i] = h.ok() ? *h : "unreadable: " + h.status().message();
    }
  };
  const size_t threads = std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), 8);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < std::min(threads, to_hash.size()); ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  for (size_t i = 0; i < to_hash.size(); ++i) {
    const MappedFileEntry& f = *to_hash[i];
    if (found[i] != f.content_hash) {
      p.push_back({"file", "the replica maps " + f.path + " (XXH3-128 " + f.content_hash + " at build), whose " +
                               "content here differs (" + found[i] + "): a different build of that file"});
    }
  }
  if (hash_ms) *hash_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - th).count();
  if (!m.process.cwd.empty()) {
    const std::string& cwd = m.process.cwd;
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
