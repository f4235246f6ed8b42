// Shared helpers of the hotboot CLI: exit codes, messages, progress, paths.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "hotboot/gpu.h"
#include "hotboot/status.h"

namespace hotboot::cli {

// Exit codes (documented in `hotboot --help` and the README).
enum Exit : int {
  kExitOk = 0,
  kExitFailure = 1,       // the operation failed (message says why)
  kExitUsage = 2,         // bad command line
  kExitIncompatible = 3,  // the snapshot cannot run on this host (nothing touched)
  kExitCorrupt = 4,       // the snapshot file is corrupt, truncated or not a snapshot
  kExitNotReady = 5,      // the replica never became ready / verification failed
  kExitTimeout = 6,
  kExitUntrusted = 7,  // a trust policy is in force: unsigned, unknown key or bad signature (nothing written)
};

int ExitCodeFor(const Status& s);
// Prints "hotboot: error: <message>" (and a hint) to stderr, returns the exit
// code. When the command was given --json (SetJsonOutput) and no failure
// object was printed yet, also prints FailureJson on stdout: every --json
// command answers in JSON on failure too.
int Fail(const Status& s);
// Set by main once argv is parsed: the chosen command has --json.
void SetJsonOutput(bool on);
bool JsonOutput();
// True once a failure object went to stdout (Fail, FailJson, PrintFailureJson
// or a command's own, marked with MarkFailurePrinted).
bool FailurePrinted();
void MarkFailurePrinted();
// Fail, and with --json also one JSON line on stdout for the machine reading
// it: {"ok": false, "error": message, "outcome": code name, "exit_code": code,
// "exit": code (the older name)} plus `extra`'s keys.
int FailJson(const Status& s, bool json_out, const nlohmann::json& extra = nlohmann::json::object());
// The object FailJson prints (for commands that add to it before printing).
nlohmann::json FailureJson(const Status& s, int exit_code);
// Prints a failure object built by hand: `error` and `exit_code` (and `exit`,
// `ok`: false, `outcome` "failed" unless given) filled in; returns exit_code.
int PrintFailureJson(const std::string& error, int exit_code, nlohmann::json extra = nlohmann::json::object());
void Note(const std::string& msg);  // "hotboot: msg" on stderr unless quiet ("warning: ..." at level warn)
void SetQuiet(bool q);
bool Quiet();

// hotboot's own stderr lines: "hotboot: msg" (text, the default) or, with
// --log-format json, one JSON object per line: {"ts": RFC 3339 UTC,
// "level", "component": "hotboot", "msg", ...fields}.
enum class LogFormat { kText, kJson };
void SetLogFormat(LogFormat f);
LogFormat GetLogFormat();
// --log-format text|json on a subcommand (takes effect while parsing).
void AddLogFormatOption(CLI::App& app);
// One line at `level` ("debug", "info", "warn", "error"); info and debug
// are dropped under --quiet, warn and error never.
void Log(const std::string& level, const std::string& msg, const nlohmann::json& fields = nlohmann::json::object());
// A line of the server's/replica's own log, forwarded: "  <source> | line",
// or {"ts", "level": "info", "source": source, "msg": line}.
void ForwardLine(const std::string& source, const std::string& line);
// An event object (e.g. {"event": "progress", ...}) as a JSON log line: ts,
// level and component added. Only for --log-format json or --json events.
void LogEvent(nlohmann::json event);
// RFC 3339 UTC with milliseconds, e.g. 2026-12-02T09:05:00.123Z.
std::string NowRfc3339();

// One status line at the bottom of a terminal, redrawn in place: its slots
// ("phase", "fetch") joined. Log lines printed meanwhile clear it and draw it
// again below them. Nothing unless stderr is a terminal, the log format is
// text and not --quiet. EndStatusLine ends it with a newline.
bool StatusLineEnabled();
void StatusLine(const std::string& slot, const std::string& text);
void EndStatusLine();

std::string HumanBytes(uint64_t n);
std::string Ms(double ms);  // "1.23 s" / "45.6 ms"

// This host's CUDA driver (library: --cuda-lib, empty for libcuda.so.1).
// Null with a note when there is none, unless `library` was named: then
// *failed is set to the reason and the caller stops.
std::unique_ptr<CudaDriver> CudaDriverIfPresent(const std::string& library, Status* failed);

// hotboot-server beside this executable, or on PATH.
Result<std::string> FindSibling(const std::string& name);
// The default model: $HOTBOOT_HOME/models/<preset>.safetensors, HOTBOOT_HOME
// defaulting to ~/.cache/hotboot; generated when missing.
Result<std::string> EnsureModel(const std::string& path_or_empty, const std::string& preset);

// A progress line for byte counts: redraws in place on a terminal, prints
// every 10% otherwise.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)) {}
  void Update(uint64_t done, uint64_t total);
  void Finish();

 private:
  std::string label_;
  int last_pct_ = -1;
  bool drawn_ = false;
  bool started_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace hotboot::cli
