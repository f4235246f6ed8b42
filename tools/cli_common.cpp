#include "cli_common.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <vector>
#include <cstdlib>
#include <filesystem>

#include "hotboot/model.h"
#include "hotboot/presets.h"

namespace hotboot::cli {

namespace fs = std::filesystem;

namespace {
bool g_quiet = false;
std::atomic<LogFormat> g_log_format{LogFormat::kText};
std::mutex g_log_mu;  // one line at a time from every thread
}  // namespace

void SetQuiet(bool q) { g_quiet = q; }
bool Quiet() { return g_quiet; }
void SetLogFormat(LogFormat f) { g_log_format.store(f); }
LogFormat GetLogFormat() { return g_log_format.load(); }

void AddLogFormatOption(CLI::App& app) {
  app.add_option_function<std::string>(
         "--log-format",
         [](const std::string& v) { SetLogFormat(v == "json" ? LogFormat::kJson : LogFormat::kText); },
         "hotboot's stderr lines (notes, warnings, errors, progress, the server's forwarded log): text (default) "
         "or json, one object per line with ts (RFC 3339 UTC), level, component or source, msg")
      ->check(CLI::IsMember({"text", "json"}));
}

std::string NowRfc3339() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

namespace {
// The status line's slots, in the order they were first set; guarded by g_log_mu.
std::vector<std::pair<std::string, std::string>> g_status;
bool g_status_drawn = false;

std::string StatusText() {
  std::string out;
  for (const auto& [slot, text] : g_status) {
    if (text.empty()) continue;
    if (!out.empty()) out += "  |  ";
    out += text;
  }
  return out;
}
void ClearStatusLocked() {
  if (g_status_drawn) std::fputs("\r\033[K", stderr);
}
void DrawStatusLocked() {
  const std::string t = StatusText();
  if (t.empty()) return;
  std::fprintf(stderr, "\r\033[Khotboot: %s", t.c_str());
  std::fflush(stderr);
  g_status_drawn = true;
}

void JsonLine(nlohmann::json j) {
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::lock_guard lk(g_log_mu);
  std::fprintf(stderr, "%s\n", line.c_str());
}
}  // namespace

void Log(const std::string& level, const std::string& msg, const nlohmann::json& fields) {
  if (g_quiet && (level == "info" || level == "debug")) return;
  if (g_log_format.load() == LogFormat::kJson) {
    nlohmann::json j = {{"ts", NowRfc3339()}, {"level", level}, {"component", "hotboot"}, {"msg", msg}};
    if (fields.is_object()) {
      for (const auto& [k, v] : fields.items()) j[k] = v;
    }
    JsonLine(std::move(j));
    return;
  }
  std::lock_guard lk(g_log_mu);
  ClearStatusLocked();
  if (level == "error") {
    std::fprintf(stderr, "hotboot: error: %s\n", msg.c_str());
  } else if (level == "warn") {
    std::fprintf(stderr, "hotboot: warning: %s\n", msg.c_str());
  } else {
    std::fprintf(stderr, "hotboot: %s\n", msg.c_str());
  }
  if (g_status_drawn) DrawStatusLocked();
}

bool StatusLineEnabled() {
  static const bool tty = ::isatty(STDERR_FILENO) == 1;
  return tty && !g_quiet && g_log_format.load() == LogFormat::kText;
}

void StatusLine(const std::string& slot, const std::string& text) {
  if (!StatusLineEnabled()) return;
  std::lock_guard lk(g_log_mu);
  auto it = std::find_if(g_status.begin(), g_status.end(), [&](const auto& s) { return s.first == slot; });
  if (it == g_status.end()) {
    g_status.emplace_back(slot, text);
  } else {
    it->second = text;
  }
  DrawStatusLocked();
}

void EndStatusLine() {
  std::lock_guard lk(g_log_mu);
  if (g_status_drawn) std::fputs("\n", stderr);
  g_status_drawn = false;
  g_status.clear();
}

void ForwardLine(const std::string& source, const std::string& line) {
  if (g_log_format.load() == LogFormat::kJson) {
    JsonLine({{"ts", NowRfc3339()}, {"level", "info"}, {"source", source}, {"msg", line}});
    return;
  }
  std::lock_guard lk(g_log_mu);
  ClearStatusLocked();
  std::fprintf(stderr, "  %s | %s\n", source.c_str(), line.c_str());
  if (g_status_drawn) DrawStatusLocked();
}

void LogEvent(nlohmann::json event) {
  nlohmann::json j = {{"ts", NowRfc3339()}, {"level", "info"}, {"component", "hotboot"}};
  for (auto& [k, v] : event.items()) j[k] = v;
  if (!j.contains("msg")) {  // every line has one: "progress unpack", ...
    std::string msg = j.value("event", "event");
    if (j.contains("what") && j["what"].is_string()) msg += " " + j["what"].get<std::string>();
    j["msg"] = msg;
  }
  JsonLine(std::move(j));
}

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

namespace {
std::atomic<bool> g_json_output{false};
std::atomic<bool> g_failure_printed{false};

void PrintJsonLine(const nlohmann::json& j) {
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::fflush(stdout);
}
}  // namespace

void SetJsonOutput(bool on) { g_json_output.store(on); }
bool JsonOutput() { return g_json_output.load(); }
bool FailurePrinted() { return g_failure_printed.load(); }
void MarkFailurePrinted() { g_failure_printed.store(true); }

int Fail(const Status& s) {
  const int rc = ExitCodeFor(s);
  Log("error", s.message(), {{"outcome", CodeName(s.code())}, {"exit_code", rc}});
  if (g_json_output.load() && !g_failure_printed.exchange(true)) PrintJsonLine(FailureJson(s, rc));
  return rc;
}

nlohmann::json FailureJson(const Status& s, int exit_code) {
  return {{"ok", false}, {"error", s.message()}, {"outcome", CodeName(s.code())}, {"exit_code", exit_code},
          {"exit", exit_code}};
}

int PrintFailureJson(const std::string& error, int exit_code, nlohmann::json extra) {
  nlohmann::json out = {{"ok", false}, {"error", error}, {"outcome", "failed"}, {"exit_code", exit_code},
                        {"exit", exit_code}};
  for (auto& [k, v] : extra.items()) out[k] = v;
  out["exit_code"] = exit_code;
  out["exit"] = exit_code;
  g_failure_printed.store(true);
  PrintJsonLine(out);
  return exit_code;
}

int FailJson(const Status& s, bool json_out, const nlohmann::json& extra) {
  const int rc = ExitCodeFor(s);
  if (json_out && !g_failure_printed.exchange(true)) {
    nlohmann::json out = FailureJson(s, rc);
    for (const auto& [k, v] : extra.items()) out[k] = v;
    PrintJsonLine(out);
  }
  return Fail(s);
}

void Note(const std::string& msg) {
  static const std::string kWarning = "warning: ";
  if (msg.rfind(kWarning, 0) == 0) {
    Log("warn", msg.substr(kWarning.size()));
  } else {
    Log("info", msg);
  }
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
  // A GPU-only preset (8b: ~16 GB) is refused before it is written where
  // no CUDA GPU could serve it (the server would refuse it only afterwards).
  if (auto cfg = PresetConfig(preset); cfg.ok() && GpuOnly(*cfg) && !GpuUsable()) {
    return FailedPrecondition("preset " + preset + " is GPU only and no CUDA GPU is usable here: use a GPU host, or " +
                              "pick one of the CPU presets (tiny, small, 1b)");
  }
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
  if (g_log_format.load() == LogFormat::kJson) {  // a JSON line per 10% (or 64 MiB of an unknown length)
    const int step = total ? static_cast<int>(done * 10 / total) : static_cast<int>(done >> 26);
    if (step == last_pct_) return;
    last_pct_ = step;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    LogEvent({{"event", "progress"}, {"what", label_}, {"bytes", done}, {"total", total}, {"elapsed_s", s}});
    return;
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
