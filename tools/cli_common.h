// Shared helpers of the hotboot CLI: exit codes, messages, progress, paths.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

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
// Prints "hotboot: error: <message>" (and a hint) to stderr, returns the exit code.
int Fail(const Status& s);
// Fail, and with --json also one JSON line on stdout for the machine reading
// it: {"ok": false, "error": message, "outcome": code name, "exit": code}
// plus `extra`'s keys.
int FailJson(const Status& s, bool json_out, const nlohmann::json& extra = nlohmann::json::object());
void Note(const std::string& msg);  // "hotboot: msg" on stderr unless quiet
void SetQuiet(bool q);
bool Quiet();

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
