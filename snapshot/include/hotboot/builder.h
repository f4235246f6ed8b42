// The builder: launch a server, wait until it is warm, record the canary,
// quiesce it, dump it with CRIU and pack everything into one snapshot file.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/criu.h"
#include "hotboot/gpu.h"
#include "hotboot/http_client.h"
#include "hotboot/manifest.h"
#include "hotboot/replica.h"
#include "hotboot/status.h"

namespace hotboot {

struct PromptSpec {
  std::string prompt;
  int max_tokens = 16;
  int iterations = 1;
};

// A server hotboot knows only by its HTTP API (transparent mode).
struct TransparentSpec {
  int port = 0;  // where it listens; a restored replica listens there again
  std::string ready_path = "/health";  // GET answers 200 once it is warm
  HttpCall canary;                     // a deterministic request
  // JSON pointer to the part of the canary's answer that must repeat
  // ("/tokens"); empty: the whole body.
  std::string canary_compare;
  std::vector<HttpCall> warmup;  // sent once each after it is ready
  // Optional hooks. after_restore is how a restored replica gets its new
  // instance id and fresh entropy (restore adds them to the request: README
  // "Transparent mode"); without it every replica replays the build's random
  // state, and build warns.
  std::optional<HttpCall> before_capture, after_restore;
};

// zstd levels a build accepts (its spec's "zstd_level", `hotboot build
// --zstd-level`): zstd's ordinary ones, without the memory-hungry "ultra" ones.
inline constexpr int kDefaultZstdLevel = 3;
inline constexpr int kMinZstdLevel = 1;
inline constexpr int kMaxZstdLevel = 19;

struct BuildSpec {
  // The server command. In "cooperative" mode it speaks the control protocol
  // on stdio (server/CONTROL.md), e.g. hotboot-server ... --control-stdio;
  // in "transparent" mode it is any HTTP server, described by `http`.
  std::vector<std::string> command;
  std::string mode = "cooperative";
  TransparentSpec http;
  // Working directory of the server (restore needs it to exist). Empty: "/"
  // for a cooperative server, the caller's for a transparent one.
  std::string cwd;
  bool transparent() const { return mode == "transparent"; }
  std::string host = "127.0.0.1";
  std::chrono::milliseconds ready_timeout{std::chrono::minutes(10)};
  std::chrono::milliseconds request_timeout{std::chrono::minutes(2)};
  // Extra warmup run by the builder once the server is warm (the server runs
  // its own warmup before it reports warm).
  std::vector<PromptSpec> warmup;
  PromptSpec canary{"The quick brown fox", 8, 3};
  int zstd_level = kDefaultZstdLevel;  // kMinZstdLevel..kMaxZstdLevel
  // A snapshot whose sections (e.g. the same model's weights) the new one
  // refers to instead of storing them again (formats/SPEC.md "Base snapshots").
  std::string base_snapshot;
  std::string criu_binary;
  // How long the CUDA driver may wait for in-flight CUDA calls to finish
  // before the processes' GPU state is locked for the checkpoint.
  std::chrono::milliseconds gpu_lock_timeout{std::chrono::seconds(30)};
  // Launch the server in a PID namespace of its own ("on"), so a restore can
  // never collide with a PID in use, or in the host's ("off"). "auto": off on
  // a host with NVIDIA devices, where the CUDA driver does not initialise in a
  // PID namespace that sees the host's /proc (cuInit fails with
  // CUDA_ERROR_OPERATING_SYSTEM), on elsewhere.
  std::string pid_namespace = "auto";
  // Free-form provenance copied into the manifest (model path, preset...).
  nlohmann::json labels = nlohmann::json::object();

  static Result<BuildSpec> FromJson(const nlohmann::json& j);
  // What is legal but probably wrong about this spec, one paragraph each
  // (a transparent server without an after_restore hook).
  std::vector<std::string> Warnings() const;
};

struct BuildEvents {
  std::function<void(const std::string& phase)> on_phase;  // "launch", "ready", ...
  LogSink on_server_log;
  std::function<void(uint64_t done, uint64_t total)> on_pack_progress;
};

struct BuildResult {
  std::string path;
  Manifest manifest;  // as written (plus the pack time)
  uint64_t file_size = 0;
  uint64_t images_bytes = 0;   // raw CRIU image size
  uint64_t weights_bytes = 0;  // raw size of the registered weight files
  std::vector<std::string> warnings;  // BuildSpec::Warnings(), for the caller to show
};

// Writes out_path atomically: a failed or killed build leaves no file there.
// `cuda` is this host's driver (null: none); the GPU state of every CUDA
// process in the server's tree is checkpointed through it before the CRIU
// dump, and given back to the processes if any later step fails.
Result<BuildResult> BuildSnapshot(const BuildSpec& spec, const std::string& out_path, Criu& criu,
                                  const BuildEvents& events, CudaDriver* cuda = nullptr);

// Removes work directories and temporary snapshot files that builds killed
// earlier left next to out_path (their owner PID no longer runs).
void RemoveStaleBuildFiles(const std::string& out_path);

// The manifest's format marker and schema version: hotboot/manifest.h.

}  // namespace hotboot
