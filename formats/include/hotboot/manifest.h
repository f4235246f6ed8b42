// The snapshot manifest (formats/SPEC.md "Manifest (JSON)"), decoded once into
// a typed record with every field checked and bounded: the rest of hotboot
// never reads the manifest's JSON. ParseManifest never throws; a missing
// field, a wrong type or a value out of bounds is kCorrupt naming the field's
// JSON path ("manifest: process.provided_files[2].size: expected an unsigned
// integer, got a string"). Unknown keys are ignored (the spec's rule).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/status.h"

namespace hotboot {

// Manifest format marker and the version of the manifest schema this build
// writes. Version 1 (provided files named by path) is still read.
inline constexpr const char* kManifestFormat = "hotboot-snapshot-manifest";
inline constexpr int kManifestVersion = 2;
inline constexpr int kOldestManifestVersion = 1;

// Bounds on what a manifest may claim (SPEC.md "Manifest (JSON)", limits).
inline constexpr size_t kManifestMaxString = 64u << 10;     // any string
inline constexpr size_t kManifestMaxPath = 4096;            // a path, a file name's directory
inline constexpr size_t kManifestMaxFileName = 255;         // one path component
inline constexpr size_t kManifestMaxArgs = 4096;            // process.command
inline constexpr size_t kManifestMaxFdKeys = 3;             // CRIU names of fds 0..2
inline constexpr size_t kManifestMaxMappedFiles = 4096;
inline constexpr size_t kManifestMaxProvidedFiles = 64;
inline constexpr size_t kManifestMaxPids = 1u << 16;        // threads of the tree
inline constexpr int64_t kManifestMaxPid = int64_t{1} << 22;  // PID_MAX_LIMIT
inline constexpr uint64_t kManifestMaxSize = uint64_t{1} << 50;  // any byte count
inline constexpr size_t kManifestMaxIsaFlags = 1024;
inline constexpr size_t kManifestMaxGpuDevices = 64;
inline constexpr size_t kManifestMaxTokens = 1u << 16;      // canary tokens
inline constexpr size_t kManifestMaxTimings = 64;
inline constexpr size_t kManifestMaxJsonBytes = 64u << 10;  // labels, canary.expected (serialized)
inline constexpr int kManifestMaxJsonDepth = 16;
inline constexpr double kManifestMaxMs = 1e9;               // any duration (11.6 days)

struct ManifestHost {
  std::string hostname, kernel, arch, cpu_model;
  int cpus = 0;
  std::vector<std::string> isa_flags;
};

struct ManifestCriu {
  std::string version;
  uint64_t images_bytes = 0;
  int log_level = 0;
};

// A file the process maps that must exist on the restoring host (libraries,
// the server binary): same size and, from version 2, same content.
struct MappedFileEntry {
  std::string path;  // absolute
  uint64_t size = 0;
  std::string content_hash;  // XXH3-128, 32 lowercase hex; empty in version 1
};

// A file the snapshot carries (the server's weights). It lives only in the
// restoring host's weights directory under `name`, which is its content hash
// (`<kind>-<content_hash>.bin`); no path is recorded.
struct ProvidedFile {
  std::string name;          // "weights-<hex>.bin" or "gpu-weights-<hex>.bin"
  uint64_t size = 0;
  std::string section;       // "weights/" + name
  std::string content_hash;  // XXH3-128 of its bytes, 32 lowercase hex
};

struct ManifestProcess {
  std::vector<std::string> command;
  std::string cwd;
  bool pid_namespace = true;
  std::vector<int64_t> pids;  // when !pid_namespace: every thread's ID
  std::vector<std::string> fd_keys;
  std::vector<MappedFileEntry> mapped_files;
  std::vector<ProvidedFile> provided_files;
  // The weights directory of the build host (absolute), where CRIU's images
  // map the provided files: restore compares it with its own. Version 2;
  // in version 1 the directory of the provided files' paths.
  std::string weights_dir;
};

struct ManifestServer {
  std::string host;
  int build_port = 0;
  std::string instance;
};

struct ManifestHttpCall {
  std::string method = "GET";
  std::string path = "/";
  std::string body;
};

struct ManifestHttp {
  int port = 0;
  std::string ready_path = "/health";
  std::optional<ManifestHttpCall> after_restore;
};

// The canary the build recorded: a prompt and its tokens (cooperative), or
// an HTTP request and the part of its answer that must repeat (transparent).
struct ManifestCanary {
  std::string prompt;
  int max_tokens = 0;
  std::vector<int64_t> tokens;
  std::string text;
  std::optional<ManifestHttpCall> request;
  std::string compare;  // JSON pointer into the answer; empty: the whole body
  nlohmann::json expected;  // bounded in size and depth
  double first_latency_ms = 0, warm_latency_ms = 0, latency_bound_ms = 0;
};

struct ManifestWarm {
  std::string digest;  // the server's warm-state digest (cooperative)
  ManifestCanary canary;
};

struct ManifestGpuDevice {
  int ordinal = 0;
  std::string uuid, name;
  int cc_major = 0, cc_minor = 0;  // "compute_capability": "MAJOR.MINOR"
  uint64_t total_bytes = 0, used_bytes = 0;
};

struct ManifestGpu {
  std::string driver_version;
  int cuda_version = 0;
  int processes = 0;
  std::vector<ManifestGpuDevice> devices;
  double lock_ms = 0, checkpoint_ms = 0;
};

struct Manifest {
  int manifest_version = kManifestVersion;
  std::string tool_version, created_at;
  std::string mode = "cooperative";  // or "transparent"
  ManifestHost host;
  ManifestCriu criu;
  ManifestProcess process;
  ManifestServer server;
  ManifestWarm warm;
  std::vector<std::pair<std::string, double>> timings_ms;  // in the order written
  std::optional<ManifestHttp> http;  // transparent mode
  std::optional<ManifestGpu> gpu;    // when the build captured GPU state
  nlohmann::json labels = nlohmann::json::object();  // free-form, bounded

  bool transparent() const { return mode == "transparent"; }
  // The recorded timing `key`, or `otherwise`.
  double Timing(std::string_view key, double otherwise = 0) const;
  void SetTiming(const std::string& key, double ms);
};

// Decodes and validates a manifest. Never throws.
Result<Manifest> ParseManifest(std::string_view json_text);
// The manifest as the builder writes it (format and version included).
std::string ToJson(const Manifest& m);
nlohmann::json ToJsonValue(const Manifest& m);

// "weights-<32 hex>.bin" / "gpu-weights-<32 hex>.bin": the names a provided
// file may have; `content_hash` gets the hex. False for anything else.
bool ParseContentName(std::string_view name, std::string* content_hash);
// True for 32 lowercase hex digits (an XXH3-128 as SPEC.md writes it).
bool IsContentHash(std::string_view s);

}  // namespace hotboot
