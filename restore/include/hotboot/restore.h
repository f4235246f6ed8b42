// Restore: check that a snapshot can run here (before touching anything),
// unpack it with every chunk verified, CRIU-restore the replica, run its
// after-restore hook, and report it ready only after readiness verification:
// the warm-state digest matches the build's and the canary answers the same
// tokens within the warm latency bound recorded at build.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/criu.h"
#include "hotboot/gpu.h"
#include "hotboot/gpu_memory.h"
#include "hotboot/host_info.h"
#include "hotboot/http_client.h"
#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"
#include "hotboot/replica.h"
#include "hotboot/signing.h"
#include "hotboot/status.h"

namespace hotboot {

struct CompatProblem {
  std::string what;  // "cpu", "kernel", "criu", "file", "arch", "port"
  std::string detail;
};

// Everything that makes the snapshot unusable on `host` with `criu_version`
// (empty when it fits). Reads only the manifest and the local filesystem:
// every mapped file must exist with the size and (manifest version 2) the
// XXH3-128 content hash recorded at build; *hash_ms (when given) gets what
// hashing them took.
std::vector<CompatProblem> CheckCompatibility(const Manifest& manifest, const HostInfo& host,
                                              const std::string& criu_version, double* hash_ms = nullptr);
std::string DescribeProblems(const std::vector<CompatProblem>& problems);

// The most a snapshot's provided files (process.provided_files) may add up
// to: a restore refuses a larger claim before writing anything.
inline constexpr uint64_t kMaxProvidedBytes = uint64_t{1} << 40;  // 1 TiB

// The weights a snapshot provides (process.provided_files), as restore and
// `hotboot pull` place them. CheckProvidedFiles: this host's weights
// directory, checked with everything the snapshot would put there before
// anything is written (none: the snapshot provides no files).
// ReusedSections: the sections of files already there that are reused (under
// a trust policy only those a signed restore put there). PlaceProvidedFiles
// extracts the others, each checked before it gets its name.
Result<std::optional<SafeDir>> CheckProvidedFiles(const Manifest& m, const snapfile::SnapshotReader& reader);
Result<std::vector<std::string>> ReusedSections(const Manifest& m, const std::optional<SafeDir>& dir,
                                                bool signature_checked);
// Files named in `skip` are left out (the weights handoff uploads them
// straight from the snapshot instead).
Status PlaceProvidedFiles(const Manifest& m, const snapfile::SnapshotReader& reader, const SafeDir& dir, int threads,
                          bool signature_checked, const std::set<std::string>& skip = {});

// How a cooperative GPU snapshot's weights file (a provided file named
// gpu-weights-<hex>.bin) gets back onto the device (issue 15):
//   kHandoff: the restore process fills shareable device memory itself,
//             beside the CRIU restore and the driver's context restore, from
//             the node's weights directory or straight from the snapshot, and
//             hands it to the server in after_restore ("device_weights"); a
//             host where that cannot be done is refused (kIncompatible);
//   kServer:  the file goes into the weights directory and the server
//             streams it to the device in after_restore (before issue 15);
//   kAuto:    kHandoff where this process can open the device and make
//             shareable memory, else kServer, saying why.
enum class GpuWeightsMode { kAuto, kHandoff, kServer };
const char* GpuWeightsModeName(GpuWeightsMode m);  // "auto", "handoff", "server"
bool ParseGpuWeightsMode(std::string_view s, GpuWeightsMode* m);

// Opens this process's CUDA device `ordinal` (the seam for tests).
using OpenDeviceFn = std::function<Result<std::unique_ptr<gpu::Device>>(int ordinal)>;

// How the GPU weights came back, for RestoreResult and `restore --json`.
struct GpuWeightsReport {
  std::string mode;    // "handoff" or "server"
  std::string source;  // "node_cache" or "snapshot" (handoff); "" (server)
  std::string file;    // gpu-weights-<hex>.bin
  uint64_t bytes = 0;
  double upload_ms = 0, GBps = 0, device_open_ms = 0;
  // Making the shareable memory (reserve, create, map), and inside upload_ms
  // the pinned staging allocation and the wait for the last copies.
  double memory_ms = 0, staging_ms = 0, copy_wait_ms = 0;
  std::string upload_mode;  // the upload's read mode (gpu::UploadStats::mode)
  std::string reason;       // why not a handoff, when not
  // The file was put into the weights directory as well (a handoff from the
  // snapshot whose CRIU images map the file; a fallback).
  bool extracted = false;
  nlohmann::json ToJson() const;
};

// What the handoff thread does, decided before it starts.
struct WeightsHandoffPlan {
  std::string file;     // gpu-weights-<hex>.bin
  std::string section;  // weights/<file>
  uint64_t bytes = 0;
  int ordinal = 0;      // this process's CUDA device (the build's device 0 paired here)
  // The weights directory's file, open read-only (the handoff takes it
  // over), or -1: the bytes come straight from the snapshot's section.
  int cache_fd = -1;
  gpu::UploadOptions upload;
};

// The handoff thread (issue 15 items 2 and 3): opens the device, makes
// shareable device memory of the file's size (gpu::ShareableWeights), fills
// it (gpu::UploadFromFile from the node's file, or gpu::UploadSection
// decoding the snapshot's chunks, each checked as extraction checks it, into
// pinned staging) and exports it as a file descriptor the server takes with
// pidfd_getfd. A kill at any point leaves nothing: the fd dies with this
// process and the driver frees memory no process holds.
class WeightsHandoff {
 public:
  // `reader` must outlive the handoff (the snapshot source).
  static std::unique_ptr<WeightsHandoff> Start(WeightsHandoffPlan plan, const snapfile::SnapshotReader* reader,
                                               OpenDeviceFn open_device);
  ~WeightsHandoff();  // waits for the thread, then Finish()
  WeightsHandoff(const WeightsHandoff&) = delete;
  WeightsHandoff& operator=(const WeightsHandoff&) = delete;

  // Blocks until the device is open and the memory made: OK, or why the
  // handoff cannot be done on this host (nothing uploaded; the caller falls
  // back to the server path).
  Status WaitViable();
  // Blocks until the thread is done: OK when the memory is filled and
  // exported; else the viability error (see viable()) or the upload's.
  Status Wait();
  bool viable() const;  // after WaitViable/Wait: the device and memory were there
  // Without waiting: the upload's error when it already failed (a damaged
  // chunk, a device error), else OK.
  Status UploadFailure() const;

  // After Wait() returned OK: {"pid", "fd", "bytes", "file"} for after_restore.
  nlohmann::json DeviceWeightsJson() const;
  // Closes the exported fd, unmaps and releases the memory (what the server
  // imported lives on with it) and closes the device (its primary context:
  // the supervising restore must hold no GPU memory). Idempotent.
  void Finish();

  const WeightsHandoffPlan& plan() const { return plan_; }
  GpuWeightsReport Report() const;  // after Wait()
  double wall_ms() const;           // the thread's time, start to exported
  gpu::DevicePtr base() const;      // the memory's device address (tests)
  int exported_fd() const;          // -1 before the export and after Finish
  // The restore also put the file into the weights directory (CRIU's images
  // name it, or the handoff could not be done): GpuWeightsReport::extracted.
  void set_file_extracted() { extracted_ = true; }

 private:
  WeightsHandoff() = default;
  void Run(const snapfile::SnapshotReader* reader, OpenDeviceFn open_device);
  struct State;
  WeightsHandoffPlan plan_;
  bool extracted_ = false;
  std::unique_ptr<State> st_;
};

// The plan for `m` on this host, or nullopt with *why (no GPU state, no
// gpu-weights file, a transparent server, mode kServer). `dir` is the
// weights directory (CheckProvidedFiles); the file there is used when it is
// trusted the way ReusedSections trusts it.
Result<std::optional<WeightsHandoffPlan>> PlanWeightsHandoff(const Manifest& m, const std::optional<SafeDir>& dir,
                                                            bool signature_checked, GpuWeightsMode mode,
                                                            int ordinal, std::string* why);

// True when CRIU's images in `images_dir` name the file `name` (the
// restored process maps it, so it must be in place): every image but the
// memory pages is searched for it.
Result<bool> ImagesNameFile(const std::string& images_dir, const std::string& name);

// True when host:port can be bound now.
bool PortAvailable(const std::string& host, int port);

struct RestoreOptions {
  std::string snapshot_path;
  // Read the snapshot from here instead (a snapshot being fetched,
  // hotboot/fetch.h); snapshot_path then only names it in messages. Images
  // and weights are then unpacked side by side, each waiting only for its
  // own bytes.
  std::shared_ptr<snapfile::ByteSource> source;
  // Called once the snapshot passed every check, before any section is read:
  // `reused` names the sections restore will not read (weights this host
  // already has). A fetching source starts fetching the rest here.
  std::function<void(const snapfile::SnapshotReader& reader, const std::vector<std::string>& reused)> on_plan;
  std::string base_path;  // the base snapshot, for snapshots built with --base; empty: next to it
  std::string host = "127.0.0.1";
  int port = 0;
  // Where the replica's log (fd 2) goes. Empty: a pipe to us (the caller
  // pumps it through on_server_log); required for a detached replica.
  std::string log_file;
  std::string work_root;  // where images are unpacked; default $TMPDIR or /tmp
  std::chrono::milliseconds verify_timeout{std::chrono::minutes(2)};
  // The most CRIU's restore may take. CRIU can hang (4.2.1 stops at a BUG in
  // its restorer when the container lacks a capability the build's server
  // had): past this, the cgroup CRIU runs in is ended (CRIU and the
  // half-restored tree with it) and the restore fails with Code::kTimeout.
  std::chrono::milliseconds criu_timeout{std::chrono::minutes(5)};
  // Every replica gets a new identity and fresh entropy (server/CONTROL.md
  // "Uniqueness"), never anything taken from the snapshot. These two override
  // that for tests and reproducibility only: a nonzero seed makes the entropy
  // (and a generated instance id) a function of it, so replicas restored with
  // the same seed share their random state again.
  uint64_t seed = 0;          // 0: 32 fresh bytes from getrandom(2)
  std::string instance;       // empty: generated ("r-" + 12 hex digits); else [A-Za-z0-9._-]{1,64}
  int threads = 0;            // unpack threads; 0: all cores
  bool skip_latency_check = false;
  // The instant the restore is timed from: what the caller waited for before
  // RestoreReplica began (for `hotboot restore`, its process start: exec,
  // dynamic linking, option parsing, loading the CUDA driver) counts as the
  // phase "startup", and time_to_ready_ms includes it. Unset: from the call.
  std::optional<std::chrono::steady_clock::time_point> started;
  // Which signers this host trusts (hotboot/signing.h). When in force, a
  // snapshot that is unsigned, signed by no trusted key or badly signed is
  // refused with Code::kUntrusted right after it is opened, before anything
  // is written or started; without a policy the snapshot is restored
  // unverified (the CLI warns). Either way every chunk of a format 1.1
  // snapshot is checked against its SHA-256 as it is read.
  snapfile::TrustPolicy trust;
  // Off only for `hotboot bench trust`, which measures what the chunk
  // hashes cost a restore; nothing that uses a replica turns it off.
  bool check_chunk_hashes = true;
  // How a GPU snapshot's weights come back (GpuWeightsMode), and the device
  // the handoff opens (null: gpu::OpenCudaDevice(ordinal)).
  GpuWeightsMode gpu_weights = GpuWeightsMode::kAuto;
  OpenDeviceFn open_device;
  // How the handoff reads the weights directory's file (gpu::UploadFromFile;
  // from the snapshot, readers become at least the hardware threads).
  gpu::UploadOptions handoff_upload;
};

struct RestoreEvents {
  std::function<void(const std::string& phase)> on_phase;
  // Raw bytes of the CRIU images unpacked so far, of all (phase "unpack").
  std::function<void(uint64_t done, uint64_t total)> on_unpack_progress;
  LogSink on_server_log;
};

struct RestoreResult {
  std::unique_ptr<Replica> replica;
  int port = 0;
  std::string instance;
  std::string digest;
  double time_to_ready_ms = 0;  // from opts.started (or the call) to verified ready
  double canary_latency_ms = 0;
  // Phases in milliseconds, one after another: they add up to at most
  // "total" (= time_to_ready_ms; the rest is the gaps between them). A key
  // ending in "_overlapped" ran beside the others and is not part of that sum,
  // nor is "weights_handoff" (the handoff thread's time, beside unpack, CRIU
  // and the driver's restore; "weights_handoff_wait" is what the restore
  // waited for it after the driver's restore) or "verify_canary" (part of
  // "verify"). "server_<name>": the server's own after_restore steps (part
  // of "after_restore").
  nlohmann::json timings_ms = nlohmann::json::object();
  bool cold = false;  // true when this is a cold boot fallback
  // The snapshot's trust record as its reader checked it when it was opened
  // (signatures, root; format 1.0: none).
  snapfile::TrustInfo trust;
  // False for a transparent server: no control channel, so detaching is
  // just letting go of it.
  bool control_channel = true;
  // What a supervisor's keep-warm sends this replica (hotboot/keep_warm.h):
  // the snapshot's canary request (transparent; empty for cooperative ones,
  // which keep themselves warm).
  std::vector<HttpCall> keep_warm;
  // How a cooperative GPU snapshot's weights file came back; absent when the
  // snapshot has none.
  std::optional<GpuWeightsReport> gpu_weights;
};

// What restore hands a replica so that it is not a copy of the build
// (server/CONTROL.md "Uniqueness"): sent in the control protocol's
// after_restore, or to a transparent server's after_restore HTTP hook as the
// headers Hotboot-Instance and Hotboot-Entropy.
struct ReplicaIdentity {
  std::string instance;  // new for every restore
  std::string entropy;   // 64 lowercase hex digits: 32 bytes from getrandom(2)
  uint64_t seed = 0;     // the entropy's first 8 bytes, little-endian (the protocol's older "seed")
};
// Fresh for every call (getrandom(2); an error only if the kernel refuses),
// unless opts.seed / opts.instance override it (see RestoreOptions).
Result<ReplicaIdentity> NewReplicaIdentity(const RestoreOptions& opts);

// The after_restore command a cooperative replica gets; with `device_weights`
// (a handoff) it carries them.
nlohmann::json AfterRestoreCommand(const std::string& host, int port, const ReplicaIdentity& id,
                                   const nlohmann::json* device_weights);
// The server's after_restore timings (reply "timings_ms") into `timings_ms`
// as server_<name>: numbers, finite, >= 0, at most 16 keys of [a-z_]{1,32}.
void CopyServerTimings(const nlohmann::json& reply, nlohmann::json* timings_ms);

// Fails with Code::kIncompatible (and touches nothing) when the snapshot
// cannot run here; with kCorrupt/kTruncated when its bytes are bad.
// A snapshot with GPU state needs `cuda`, this host's driver (null: none):
// its GPUs are checked before anything is touched, and the processes' GPU
// state is restored (onto paired GPUs when the UUIDs differ) and unlocked
// right after CRIU restored them.
Result<RestoreResult> RestoreReplica(const RestoreOptions& opts, Criu& criu, const RestoreEvents& ev,
                                     CudaDriver* cuda = nullptr);

// The GPU part of the compatibility check: the pairs to restore with, or
// kIncompatible saying why the snapshot's GPU state cannot go on this host.
// Without `free_memory` no CUDA context is made (fast) and only the GPUs'
// model, compute capability and count are checked.
Result<std::vector<GpuPair>> CheckGpuCompatibility(const Manifest& manifest, CudaDriver* cuda,
                                                   bool free_memory = true);

// A snapshot built without a PID namespace of its own (process.pid_namespace
// false) comes back with the PIDs in process.pids: kIncompatible naming
// those in use on this host.
Status CheckPidsFree(const Manifest& manifest);
// For such a snapshot: moves the PID counter (ns_last_pid) past its PIDs so
// that the threads and processes a restore starts do not take them first.
// Best effort (needs the privilege CRIU needs).
void ReservePids(const Manifest& manifest);

// Boots the server recorded in the snapshot's manifest cold, on opts.port,
// and waits until it is warm: the fallback when the snapshot cannot be used.
Result<RestoreResult> ColdBootFromManifest(const Manifest& manifest, const RestoreOptions& opts,
                                           const RestoreEvents& ev);

// Replaces "--port N" (or appends it) in a server command line.
std::vector<std::string> WithPort(std::vector<std::string> command, int port);

}  // namespace hotboot
