#include "cli_common.h"

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "hotboot/presets.h"

namespace hotboot::cli {

namespace fs = std::filesystem;

namespace {
bool g_quiet = false;
}

void SetQuiet(bool q) { g_quiet = q; }
bool Quiet() { return g_quiet; }

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return kExitOk;
    case Code::kInvalidArgument: return kExitUsage;
    case Code::kIncompatible: return kExitIncompatible;
    case Code::kCorrupt:
    case Code::kTruncated:
    case Code::kUnsupported: return kExitCorrupt;
    case Code::kTimeout: return kExitTimeout;
    case Code::kUntrusted: return kExitUntrusted;
    default: return kExitFailure;
  }
}

int Fail(const Status& s) {
  std::fprintf(stderr, "hotboot: error: %s\n", s.message().c_str());
  return ExitCodeFor(s);
}

int FailJson(const Status& s, bool json_out, const nlohmann::json& extra) {
  const int rc = Fail(s);
  if (json_out) {
    nlohmann::json out = {{"ok", false}, {"error", s.message()}, {"outcome", CodeName(s.code())}, {"exit", rc}};
    for (const auto& [k, v] : extra.items()) out[k] = v;
    std::printf("%s\n", out.dump().c_str());
    std::fflush(stdout);
  }
  return rc;
}

void Note(const std::string& msg) {
  if (!g_quiet) std::fprintf(stderr, "hotboot: %s\n", msg.c_str());
}

std::string HumanBytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string Ms(double ms) {
  char buf[32];
  if (ms >= 1000) {
    std::snprintf(buf, sizeof buf, "%.2f s", ms / 1000);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
  }
  return buf;
}

Result<std::string> FindSibling(const std::string& name) {
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    fs::path p = fs::path(self).parent_path() / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  if (const char* path = std::getenv("PATH")) {
    std::string all = path;
    size_t start = 0;
    while (start <= all.size()) {
      size_t end = all.find(':', start);
      if (end == std::string::npos) end = all.size();
      fs::path p = fs::path(all.substr(start, end - start)) / name;
      if (::access(p.c_str(), X_OK) == 0) return p.string();
      start = end + 1;
    }
  }
  return NotFound("cannot find " + name + " beside hotboot or on PATH; build it (cmake --build build)");
}

std::unique_ptr<CudaDriver> CudaDriverIfPresent(const std::string& library, Status* failed) {
  auto d = LoadCudaDriver(library);
  if (d.ok()) return std::move(d).value();
  if (!library.empty()) {
    *failed = d.status().Prefixed("--cuda-lib");
  } else if (std::getenv("HOTBOOT_DEBUG")) {
    Note("no GPU capture/restore: " + d.status().message());
  }
  return nullptr;
}

Result<std::string> EnsureModel(const std::string& path_or_empty, const std::string& preset) {
  std::string path = path_or_empty;
  if (path.empty()) {
    std::string home;
    if (const char* h = std::getenv("HOTBOOT_HOME"); h && *h) {
      home = h;
    } else {
      const char* user_home = std::getenv("HOME");
      home = std::string(user_home && *user_home ? user_home : "/root") + "/.cache/hotboot";
    }
    path = home + "/models/" + preset + ".safetensors";
  }
  if (fs::exists(path)) return fs::absolute(path).string();
  if (!path_or_empty.empty()) return NotFound("model file " + path + " does not exist");
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  Note("generating the default model (preset '" + preset + "') at " + path);
  HB_RETURN_IF_ERROR(WriteModelPreset(path, preset, /*seed=*/1234, nullptr));
  return fs::absolute(path).string();
}

void Progress::Update(uint64_t done, uint64_t total) {
  if (g_quiet) return;
  if (!started_) {
    started_ = true;
    start_ = std::chrono::steady_clock::now();
  }
  if (total == 0) {  // a stream of unknown length: a line per 64 MiB
    const int step = static_cast<int>(done >> 26);
    if (step == last_pct_ || step == 0) return;
    last_pct_ = step;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const bool tty = ::isatty(STDERR_FILENO);
    std::fprintf(stderr, "%shotboot: %s %s so far (%.0f MiB/s)%s", tty ? "\r" : "", label_.c_str(),
                 HumanBytes(done).c_str(), s > 0 ? static_cast<double>(done) / (1 << 20) / s : 0.0, tty ? "" : "\n");
    drawn_ = tty;
    return;
  }
  int pct = static_cast<int>(done * 100 / total);
  bool tty = ::isatty(STDERR_FILENO);
  if (pct == last_pct_ || (!tty && pct / 10 == last_pct_ / 10 && pct != 100)) return;
  last_pct_ = pct;
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double mbps = s > 0 ? static_cast<double>(done) / (1 << 20) / s : 0;
  std::fprintf(stderr, "%shotboot: %s %3d%% (%s of %s, %.0f MiB/s)%s", tty ? "\r" : "", label_.c_str(), pct,
               HumanBytes(done).c_str(), HumanBytes(total).c_str(), mbps, tty ? "" : "\n");
  drawn_ = tty;
}

void Progress::Finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace hotboot::cli
