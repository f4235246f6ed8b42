#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <future>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>

#include "hotboot/http_client.h"
#include "hotboot/keep_warm.h"
#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"

namespace hotboot {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

double MsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// Where a restore's clock starts: opts.started, when the caller waited
// before calling (never later than the call), else the call itself.
Clock::time_point TimeOrigin(const RestoreOptions& opts, Clock::time_point call) {
  return opts.started ? std::min(*opts.started, call) : call;
}

// The bytes of a new replica identity (NewReplicaIdentity): the kernel's
// CSPRNG, never anything a snapshot holds, so no two restores share them.
Status NewInstanceBytes(uint8_t* out, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return ErrnoError("getrandom (a replica's entropy)", r < 0 ? errno : EIO);
    got += static_cast<size_t>(r);
  }
  return Status::Ok();
}

// The same from RestoreOptions::seed, reproducibly (splitmix64; `stream`
// keeps the entropy and the instance id apart): for tests only.
void SeededInstanceBytes(uint64_t seed, uint64_t stream, uint8_t* out, size_t n) {
  uint64_t x = seed ^ (stream * 0xd1b54a32d192ed03ULL);
  for (size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) {
      x += 0x9e3779b97f4a7c15ULL;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      x = z ^ (z >> 31);
    }
    out[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
  }
}

std::string HexBytes(const uint8_t* p, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += kHex[p[i] >> 4];
    s += kHex[p[i] & 15];
  }
  return s;
}

// An instance id goes into a JSON line and an HTTP header as is.
bool ValidInstanceId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

class TempDir {
 public:
  // Unpacked images are read once by CRIU and deleted: memory-backed /dev/shm
  // spares the disk a write of the whole image when it has room.
  // Registered with the job before it exists: removed if this restore dies.
  static Result<TempDir> Make(const std::string& root, uint64_t need_bytes, host::Job& job) {
    std::string base = root;
    if (base.empty()) {
      struct statvfs vfs{};
      if (::statvfs("/dev/shm", &vfs) == 0 &&
          static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize > 2 * need_bytes + (256u << 20)) {
        base = "/dev/shm";
      } else {
        const char* t = std::getenv("TMPDIR");
        base = t && *t ? t : "/tmp";
      }
    }
    host::SweepNamedTemporaries(base);
    // mkdir, never an existing directory (one planted there is skipped).
    for (int i = 0; i < 64; ++i) {
      const std::string path = base + "/hotboot-restore." + std::to_string(::getpid()) + "." + std::to_string(i);
      HB_RETURN_IF_ERROR(job.AddTemporary(path));
      if (::mkdir(path.c_str(), 0700) == 0) return TempDir(path);
      const int e = errno;
      job.DropTemporary(path);
      if (e != EEXIST) return ErrnoError("mkdir " + path, e);
    }
    return FailedPrecondition("no free work directory name in " + base);
  }
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

// The readiness verification: the digest of the warm state must match the
// build's, and the canary must give the same tokens within the bound.
Status VerifyReplica(const Manifest& manifest, const RestoreOptions& opts, const std::string& digest,
                     double* canary_ms) {
  const std::string& want = manifest.warm.digest;
  if (want.empty()) return Corrupt("manifest records no warm-state digest");
  if (digest != want) {
    return FailedPrecondition("warm-state digest after restore is " + digest + ", the build recorded " +
                              want + ": the restored weights/config/plan differ");
  }
  const ManifestCanary& canary = manifest.warm.canary;
  const json want_tokens = canary.tokens;
  json req = {{"prompt", canary.prompt}, {"max_tokens", canary.max_tokens}};
  HB_ASSIGN_OR_RETURN(HttpResponse r, HttpRequest(opts.host, opts.port, "POST", "/v1/generate",
                                                  req.dump(), opts.verify_timeout));
  if (r.status != 200) {
    return FailedPrecondition("canary request answered HTTP " + std::to_string(r.status) + ": " +
                              r.body.substr(0, 200));
  }
  json got = json::parse(r.body, nullptr, false);
  const json got_tokens = got.is_object() && got.contains("tokens") ? got["tokens"] : json();
  if (got_tokens != want_tokens) {
    return FailedPrecondition("canary answer differs from the build's: expected tokens " + want_tokens.dump() +
                              ", got " + (got.is_object() ? got_tokens.dump() : r.body.substr(0, 200)));
  }
  *canary_ms = r.elapsed_ms;
  const double bound = canary.latency_bound_ms;
  if (!opts.skip_latency_check && bound > 0 && r.elapsed_ms > bound) {
    return FailedPrecondition("canary answered correctly but in " + std::to_string(r.elapsed_ms) +
                              " ms, over the warm bound of " + std::to_string(bound) +
                              " ms recorded at build: this replica is not warm");
  }
  return Status::Ok();
}

bool IsTransparent(const Manifest& manifest) { return manifest.transparent(); }

HttpCall ToHttpCall(const ManifestHttpCall& c) { return HttpCall{c.method, c.path, c.body}; }

// The port the replica will serve on: any for a cooperative server (it
// re-listens in after_restore), the build's for a transparent one (CRIU
// restores its listening socket as it was).
Result<int> ReplicaPort(const Manifest& manifest, int asked) {
  if (!IsTransparent(manifest)) {
    if (asked == 0) return InvalidArgument("--port is required: the restored server listens where you say");
    if (asked < 0 || asked > 65535) return InvalidArgument("--port must be 1..65535");
    return asked;
  }
  const int built = manifest.http ? manifest.http->port : 0;
  if (built <= 0 || built > 65535) return Corrupt("manifest: a transparent snapshot without http.port");
  if (asked != 0 && asked != built) {
    return InvalidArgument("this snapshot's server was built listening on port " + std::to_string(built) +
                           " and is restored with that socket; use --port " + std::to_string(built) +
                           " or leave --port out");
  }
  return built;
}

// Cooperative: after_restore over the control channel (new port, a new
// instance id and fresh entropy, "seed" derived from it for servers that
// predate "entropy"), then the digest and the canary, then mark_ready.
// With a finished weights handoff (`handoff`, else null) the command carries
// "device_weights"; the server takes the fd with pidfd_getfd, and once it
// replied this process lets go of the memory and the device.
Status VerifyCooperative(const Manifest& manifest, const RestoreOptions& opts, Replica& replica,
                         const std::function<void(const std::string&)>& phase, WeightsHandoff* handoff,
                         RestoreResult* res) {
  phase("after-restore");
  const auto ta = Clock::now();
  HB_ASSIGN_OR_RETURN(const ReplicaIdentity id, NewReplicaIdentity(opts));
  res->instance = id.instance;
  json device_weights;
  if (handoff) {
    device_weights = handoff->DeviceWeightsJson();
    // pidfd_getfd needs ptrace access to this process: under Yama
    // (ptrace_scope 1) only an ancestor has it unless we name the server.
    // Without Yama this fails with EINVAL and is not needed.
    ::prctl(PR_SET_PTRACER, static_cast<unsigned long>(replica.pid()), 0, 0, 0);
  }
  auto reply = replica.Call(AfterRestoreCommand(opts.host, opts.port, id, handoff ? &device_weights : nullptr),
                            opts.verify_timeout);
  if (handoff) {
    // The server's mapping keeps the memory alive; ours goes, as does the
    // context (a supervising restore holds no GPU memory).
    const auto tf = Clock::now();
    ::prctl(PR_SET_PTRACER, 0, 0, 0, 0);
    handoff->Finish();
    res->timings_ms["weights_handoff_release"] = MsSince(tf);
  }
  // A replica that could not take its new identity is not ready (exit 5).
  if (!reply.ok()) return reply.status().Prefixed("readiness verification failed: after_restore");
  res->digest = reply->value("digest", "");
  CopyServerTimings(*reply, &res->timings_ms);
  // The server could not take the memory and uploaded from the file
  // instead (server/CONTROL.md "Weights handoff"): say so.
  auto refused = reply->find("device_weights_error");
  if (handoff && res->gpu_weights && refused != reply->end() && refused->is_string()) {
    res->gpu_weights->mode = "server";
    res->gpu_weights->reason = "the server did not adopt the handed-off memory and uploaded the file itself: " +
                               refused->get<std::string>().substr(0, 300);
  }
  res->timings_ms["after_restore"] = MsSince(ta);

  phase("verify");
  const auto tv = Clock::now();
  HB_RETURN_IF_ERROR(VerifyReplica(manifest, opts, res->digest, &res->canary_latency_ms)
                         .Prefixed("readiness verification failed"));
  res->timings_ms["verify_canary"] = res->canary_latency_ms;
  auto ready = replica.Call({{"cmd", "mark_ready"}}, opts.verify_timeout);
  if (!ready.ok()) return ready.status().Prefixed("mark_ready");
  HB_ASSIGN_OR_RETURN(HttpResponse rz, HttpRequest(opts.host, opts.port, "GET", "/readyz", "", opts.verify_timeout));
  if (rz.status != 200) {
    return FailedPrecondition("replica passed verification but /readyz answers " + std::to_string(rz.status));
  }
  res->timings_ms["verify"] = MsSince(tv);
  return Status();
}

// A transparent server's after_restore hook request, as its build spec gave
// it, carrying the replica's identity: always the headers Hotboot-Instance and
// Hotboot-Entropy; and "instance" and "entropy" merged into the body when the
// spec's body is a JSON object, or empty on a method that has a body (README
// "Transparent mode"). Any other body is sent unchanged.
HttpCall HookWithIdentity(HttpCall hook, const ReplicaIdentity& id, HttpHeaders* headers) {
  *headers = {{"Hotboot-Instance", id.instance}, {"Hotboot-Entropy", id.entropy}};
  const bool bodyless = hook.method == "GET" || hook.method == "HEAD" || hook.method == "DELETE";
  json body = hook.body.empty() ? (bodyless ? json() : json::object()) : json::parse(hook.body, nullptr, false);
  if (body.is_object()) {
    body["instance"] = id.instance;
    body["entropy"] = id.entropy;
    hook.body = body.dump();
  }
  return hook;
}

// Transparent: the after_restore hook (a new instance id and fresh entropy;
// without one the replica replays the build's random state, which build
// warned about), the server's own readiness probe, then the canary answer and
// latency against the build's.
Status VerifyTransparent(const Manifest& manifest, const RestoreOptions& opts, int port, Replica& replica,
                         const std::function<void(const std::string&)>& phase, RestoreResult* res) {
  const ManifestHttp http = manifest.http.value_or(ManifestHttp{});
  phase("after-restore");
  const auto ta = Clock::now();
  res->instance = opts.instance;
  if (http.after_restore) {
    const HttpCall spec_hook = ToHttpCall(*http.after_restore);
    HB_ASSIGN_OR_RETURN(const ReplicaIdentity id, NewReplicaIdentity(opts));
    HttpHeaders headers;
    const HttpCall hook = HookWithIdentity(spec_hook, id, &headers);
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(opts.host, port, hook, opts.verify_timeout, headers));
    if (r.status / 100 != 2) {
      return FailedPrecondition("readiness verification failed: after_restore hook " + hook.method + " " +
                                hook.path + " answered " + std::to_string(r.status) + ": " + r.body.substr(0, 200));
    }
    res->instance = id.instance;
  }
  res->timings_ms["after_restore"] = MsSince(ta);

  phase("verify");
  const auto tv = Clock::now();
  auto gone = [&]() -> std::string { return replica.Exited() ? "it exited: " + replica.FinalLogTail() : ""; };
  HB_RETURN_IF_ERROR(WaitHttpReady(opts.host, port, http.ready_path, opts.verify_timeout, gone)
                         .Prefixed("readiness verification failed"));
  const ManifestCanary& canary = manifest.warm.canary;
  if (!canary.request) return Corrupt("manifest: warm.canary.request: missing");
  const HttpCall call = ToHttpCall(*canary.request);
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(opts.host, port, call, opts.verify_timeout));
  if (r.status / 100 != 2) {
    return FailedPrecondition("readiness verification failed: canary answered HTTP " + std::to_string(r.status));
  }
  auto got = CanaryValue(r.body, canary.compare);
  if (!got.ok()) return got.status().Prefixed("readiness verification failed");
  if (*got != canary.expected) {
    return FailedPrecondition("readiness verification failed: canary answer differs from the build's: expected " +
                              canary.expected.dump().substr(0, 200) + ", got " + got->dump().substr(0, 200));
  }
  res->canary_latency_ms = r.elapsed_ms;
  res->timings_ms["verify_canary"] = r.elapsed_ms;
  const double bound = canary.latency_bound_ms;
  if (!opts.skip_latency_check && bound > 0 && r.elapsed_ms > bound) {
    return FailedPrecondition("readiness verification failed: canary answered correctly but in " +
                              std::to_string(r.elapsed_ms) + " ms, over the warm bound of " + std::to_string(bound) +
                              " ms recorded at build: this replica is not warm");
  }
  res->control_channel = false;
  res->timings_ms["verify"] = MsSince(tv);
  return Status();
}

}  // namespace

Result<ReplicaIdentity> NewReplicaIdentity(const RestoreOptions& opts) {
  uint8_t entropy[32], id[6];
  if (opts.seed != 0) {
    SeededInstanceBytes(opts.seed, 1, entropy, sizeof entropy);
    SeededInstanceBytes(opts.seed, 2, id, sizeof id);
  } else {
    // Two draws: the instance id is public (every answer carries it) and
    // must say nothing about the entropy.
    HB_RETURN_IF_ERROR(NewInstanceBytes(entropy, sizeof entropy));
    HB_RETURN_IF_ERROR(NewInstanceBytes(id, sizeof id));
  }
  ReplicaIdentity r;
  r.entropy = HexBytes(entropy, sizeof entropy);
  for (int i = 7; i >= 0; --i) r.seed = r.seed << 8 | entropy[i];
  if (opts.instance.empty()) {
    r.instance = "r-" + HexBytes(id, sizeof id);
  } else if (!ValidInstanceId(opts.instance)) {
    return InvalidArgument("instance id '" + opts.instance.substr(0, 80) + "' must be 1..64 of [A-Za-z0-9._-]");
  } else {
    r.instance = opts.instance;
  }
  return r;
}

GpuCaptureInfo GpuCaptureInfoFromManifest(const ManifestGpu& m) {
  GpuCaptureInfo g;
  g.driver_version = m.driver_version;
  g.cuda_version = m.cuda_version;
  g.processes = m.processes;
  for (const auto& d : m.devices) {
    g.devices.push_back(GpuDevice{d.ordinal, d.uuid, d.name, d.cc_major, d.cc_minor, d.total_bytes, d.total_bytes});
    g.used_bytes.push_back(d.used_bytes);
  }
  g.lock_ms = m.lock_ms;
  g.checkpoint_ms = m.checkpoint_ms;
  return g;
}

Result<std::vector<GpuPair>> CheckGpuCompatibility(const Manifest& manifest, CudaDriver* cuda, bool free_memory) {
  if (!manifest.gpu) return std::vector<GpuPair>{};
  const GpuCaptureInfo captured = GpuCaptureInfoFromManifest(*manifest.gpu);
  if (captured.processes == 0) return std::vector<GpuPair>{};
  const auto want = captured.Captured();
  std::string what = std::to_string(captured.processes) + " CUDA process(es) on " + std::to_string(want.size()) +
                     " GPU(s) (" + want.front().name + ")";
  if (!cuda) return Incompatible("the snapshot holds the GPU state of " + what + "; this host has no usable NVIDIA driver");
  // The driver's checkpoint format is its own: a different driver branch may
  // not read it. Refuse rather than find out half-way through a restore.
  const std::string here = cuda->DriverVersion(), there = captured.driver_version;
  auto branch = [](const std::string& v) { return v.substr(0, v.find('.')); };
  if (!here.empty() && !there.empty() && branch(here) != branch(there)) {
    return Incompatible("the snapshot's GPU state was captured with NVIDIA driver " + there + "; this host runs " +
                        here + " (restore on the same driver branch)");
  }
  HB_ASSIGN_OR_RETURN(auto devices, cuda->Devices(free_memory));
  return PlanGpuPairs(captured, devices);
}

namespace {

// The PIDs a snapshot's tree must get back: empty when it had a PID
// namespace of its own (any PIDs will do).
// (ParseManifest bounded them to 1 .. 2^22.)
std::vector<long> RecordedPids(const Manifest& manifest) {
  if (manifest.process.pid_namespace) return {};
  return std::vector<long>(manifest.process.pids.begin(), manifest.process.pids.end());
}

}  // namespace

// A tree built without a PID namespace of its own comes back with its PIDs
// (CRIU restores every thread's ID); one in use here would fail CRIU midway.
Status CheckPidsFree(const Manifest& manifest) {
  const std::vector<long> pids = RecordedPids(manifest);
  std::vector<std::string> busy;
  for (long p : pids) {
    std::error_code ec;
    if (fs::exists("/proc/" + std::to_string(p), ec)) busy.push_back(std::to_string(p));
  }
  if (busy.empty()) return Status::Ok();
  std::string list;
  for (size_t i = 0; i < busy.size() && i < 8; ++i) list += (i ? ", " : "") + busy[i];
  if (busy.size() > 8) list += ", ...";
  return Incompatible(std::to_string(busy.size()) + " of the PIDs its process tree had are in use on this " +
                      "host (" + list + "); it was built without a PID namespace of its own (--pid-namespace " +
                      "off, or auto on a GPU host), so restore it where they are free (a fresh container " +
                      "or host), or stop the process holding them");
}

void ReservePids(const Manifest& manifest) {
  const std::vector<long> pids = RecordedPids(manifest);
  if (pids.empty()) return;
  const long top = *std::max_element(pids.begin(), pids.end());
  long last = 0;
  std::ifstream("/proc/sys/kernel/ns_last_pid") >> last;
  // Needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE, which CRIU needs anyway;
  // without it CheckPidsFree and CRIU still say what collided.
  if (top > last) std::ofstream("/proc/sys/kernel/ns_last_pid") << top;
}


// The files a snapshot provides (its server's weights) go only into this
// host's weights directory (HOTBOOT_WEIGHTS_DIR or the default, never a
// directory the snapshot names), under their content-hash names. CRIU's
// images map them at the build's path, so the build's directory must be this
// host's. Checked before anything is written: the directory is safe (not a
// symlink, ours, not writable by others), every file's section is in the
// snapshot with the size and content hash the manifest claims, and what must
// be extracted fits under kMaxProvidedBytes and in the directory's free space.
Result<std::optional<SafeDir>> CheckProvidedFiles(const Manifest& m, const snapfile::SnapshotReader& reader) {
  const auto& files = m.process.provided_files;
  if (files.empty()) return std::optional<SafeDir>();
  uint64_t claimed = 0;
  for (const auto& f : files) claimed += f.size;  // ParseManifest bounded the sum to 2^50
  if (claimed > kMaxProvidedBytes) {
    return Incompatible("the snapshot's provided files (process.provided_files) claim " + std::to_string(claimed) +
                        " bytes, more than the " + std::to_string(kMaxProvidedBytes) + " a restore extracts");
  }
  const std::string local = ResolveWeightsDir();
  const std::string here = local == "none" ? local : fs::path(local).lexically_normal().string();
  if (here != m.process.weights_dir) {
    return Incompatible("the snapshot's server maps its weights from " + m.process.weights_dir +
                        " (process.weights_dir, the build host's weights directory) and this host's is " + here +
                        ": set HOTBOOT_WEIGHTS_DIR=" + m.process.weights_dir + " for the restore (or build with " +
                        "this host's directory)");
  }
  HB_ASSIGN_OR_RETURN(SafeDir dir, SafeDir::Open(here, /*create=*/true));
  uint64_t missing = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const ProvidedFile& f = files[i];
    const std::string at = "manifest: process.provided_files[" + std::to_string(i) + "]";
    const snapfile::SectionInfo* sec = reader.FindSection(f.section);
    if (!sec) return Corrupt(at + ": the snapshot has no section '" + f.section + "'");
    // Version 1 snapshots of the reference server named the file after the
    // XXH3-128 of the bytes its arena used, not of the whole file: their
    // name keeps its form but not the section's hash (which formats checks
    // on extraction either way).
    const bool hash_named = m.manifest_version >= 2;
    if (sec->raw_size != f.size || (hash_named && sec->content_hash.Hex() != f.content_hash)) {
      return Corrupt(at + ": " + f.name + " claims " + std::to_string(f.size) + " bytes with content hash " +
                     f.content_hash + ", its section holds " + std::to_string(sec->raw_size) + " bytes with " +
                     sec->content_hash.Hex());
    }
    struct stat st{};
    if (::fstatat(dir.fd(), f.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      missing += f.size;
    } else if (!S_ISREG(st.st_mode)) {
      // hotboot only ever renames regular files in: a symlink or anything
      // else there was planted, and is not followed or replaced.
      return Incompatible(dir.PathOf(f.name) + " is not a regular file (a symbolic link or other planted entry): " +
                          "remove it (rm " + dir.PathOf(f.name) + ") and restore again");
    } else if (static_cast<uint64_t>(st.st_size) != f.size) {
      missing += f.size;
    }
  }
  HB_ASSIGN_OR_RETURN(const uint64_t avail, dir.FreeBytes());
  if (missing > avail) {
    return Incompatible("the snapshot provides " + std::to_string(missing) + " bytes of files this host lacks, and " +
                        "its weights directory " + dir.path() + " has " + std::to_string(avail) + " bytes free: " +
                        "free space there, or restore where the files are");
  }
  return std::optional<SafeDir>(std::move(dir));
}

// Reuses a file already in the directory when it is a regular file of the
// right name and size, else extracts it through an O_EXCL temporary that
// formats checks before it is renamed into place. The size is enough there,
// and hashing the file again is not worth its cost (about 0.2 s per GB:
// 0.45 s of the 1b preset's 0.8 s restore): the directory is checked to be
// this euid's and not writable by others, so only this user puts files in
// it; each gets its name only by a rename after its content hash was checked
// (restore) or computed from its bytes (the server), never partially
// written; and the replica's warm-state digest after restore covers the
// weights' bytes and refuses a replica whose file was damaged anyway. What
// this does not cover is a file planted under a colliding XXH3-128 name by a
// snapshot this host restored earlier (XXH3 is not collision-resistant):
// Under a trust policy that case is closed by the signed mark (node_cache.h):
// an entry is reused only when a snapshot whose signature and chunk SHA-256s
// were checked put this very file there; otherwise it is extracted again
// from this (signed) snapshot, checked as it is decoded, and marked.
static Result<bool> Reusable(const ProvidedFile& f, const SafeDir& dir, bool signature_checked) {
  HB_ASSIGN_OR_RETURN(CacheEntry e, CheckCacheFile(dir, f.name, f.size, f.content_hash, /*verify_content=*/false));
  return e == CacheEntry::kPresent && (!signature_checked || HasSignedMark(dir, f.name));
}

// The sections of the files restore will reuse rather than extract.
Result<std::vector<std::string>> ReusedSections(const Manifest& m, const std::optional<SafeDir>& dir,
                                                bool signature_checked) {
  std::vector<std::string> out;
  if (!dir) return out;
  for (const ProvidedFile& f : m.process.provided_files) {
    HB_ASSIGN_OR_RETURN(const bool reuse, Reusable(f, *dir, signature_checked));
    if (reuse) out.push_back(f.section);
  }
  return out;
}

Status PlaceProvidedFiles(const Manifest& m, const snapfile::SnapshotReader& reader, const SafeDir& dir, int threads,
                          bool signature_checked, const std::set<std::string>& skip) {
  for (const ProvidedFile& f : m.process.provided_files) {
    if (skip.count(f.name)) continue;
    HB_ASSIGN_OR_RETURN(bool reuse, Reusable(f, dir, signature_checked));
    // Single flight (node_cache.h NameLock): restores started at once on a
    // fresh host extract a missing file one at a time, and those after the
    // first find it in place instead of decoding it again.
    NameLock single_flight;
    if (!reuse) {
      HB_ASSIGN_OR_RETURN(single_flight, NameLock::Acquire(dir, f.name));
      HB_ASSIGN_OR_RETURN(reuse, Reusable(f, dir, signature_checked));
    }
    if (reuse) {
      // Its last use, for `hotboot cache prune` (least recently used first).
      ::utimensat(dir.fd(), f.name.c_str(), nullptr, AT_SYMLINK_NOFOLLOW);
      continue;
    }
    HB_RETURN_IF_ERROR(ExtractToCache(reader, f.section, dir, f.name, threads).Prefixed("weights file " + f.name));
    if (signature_checked) HB_RETURN_IF_ERROR(WriteSignedMark(dir, f.name).Prefixed("weights file " + f.name));
  }
  return Status::Ok();
}

// The handoff needs a cooperative server (after_restore over the control
// channel), GPU state and one provided file named gpu-weights-*.bin.
Result<std::optional<WeightsHandoffPlan>> PlanWeightsHandoff(const Manifest& m, const std::optional<SafeDir>& dir,
                                                            bool signature_checked, GpuWeightsMode mode,
                                                            int ordinal, std::string* why) {
  std::optional<WeightsHandoffPlan> none;
  const ProvidedFile* gpu_file = nullptr;
  for (const ProvidedFile& f : m.process.provided_files) {
    if (f.name.rfind("gpu-weights-", 0) == 0) gpu_file = &f;
  }
  if (!gpu_file) {
    *why = "the snapshot has no GPU weights file (gpu-weights-*.bin)";
    return none;
  }
  if (!m.gpu || m.gpu->processes == 0) {
    *why = "the snapshot holds no GPU state";
    return none;
  }
  if (m.transparent()) {
    *why = "a transparent server takes no device memory in after_restore";
    return none;
  }
  if (mode == GpuWeightsMode::kServer) {
    *why = "--gpu-weights server";
    return none;
  }
  if (m.process.pid_namespace) {
    // The server finds this process by PID (pidfd_open): from inside a PID
    // namespace of its own it cannot see it.
    *why = "the server runs in a PID namespace of its own (built with --pid-namespace on), where the restore "
           "process has no PID to take the memory from";
    return none;
  }
  if (!dir) return Internal("a snapshot with provided files but no weights directory checked");
  WeightsHandoffPlan plan;
  plan.file = gpu_file->name;
  plan.section = gpu_file->section;
  plan.bytes = gpu_file->size;
  plan.ordinal = ordinal;
  HB_ASSIGN_OR_RETURN(const bool reuse, Reusable(*gpu_file, *dir, signature_checked));
  if (reuse) {
    // Opened now: the upload reads this inode whatever happens to the name.
    plan.cache_fd = ::openat(dir->fd(), gpu_file->name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (plan.cache_fd < 0) return ErrnoError("open " + dir->PathOf(gpu_file->name), errno);
    ::utimensat(dir->fd(), gpu_file->name.c_str(), nullptr, AT_SYMLINK_NOFOLLOW);  // its last use
  }
  return std::optional<WeightsHandoffPlan>(std::move(plan));
}

namespace {

// This process's CUDA ordinal of the GPU the build's first device is
// restored onto (the server's device); 0 when the pairing says nothing.
int HandoffOrdinal(const Manifest& m, const std::vector<GpuPair>& pairs, CudaDriver* cuda) {
  if (!m.gpu || m.gpu->devices.empty() || !cuda) return 0;
  const std::string built = GpuCaptureInfoFromManifest(*m.gpu).Captured().front().uuid;
  std::string here = built;
  for (const GpuPair& p : pairs) {
    if (p.old_uuid == built) here = p.new_uuid;
  }
  auto devices = cuda->Devices(/*free_memory=*/false);
  if (!devices.ok()) return 0;
  for (const GpuDevice& d : *devices) {
    if (d.uuid == here) return d.ordinal;
  }
  return 0;
}

const ProvidedFile* GpuWeightsFile(const Manifest& m) {
  for (const ProvidedFile& f : m.process.provided_files) {
    if (f.name.rfind("gpu-weights-", 0) == 0) return &f;
  }
  return nullptr;
}

// Phase (end of "check"): plans the weights handoff and starts its thread.
// Without a handoff, a snapshot that has a GPU weights file says why in
// res->gpu_weights (the server uploads it, as before issue 15).
Status StartWeightsHandoff(const Manifest& m, const snapfile::SnapshotReader& reader,
                           const std::optional<SafeDir>& dir, bool signature_checked, const RestoreOptions& opts,
                           int ordinal, std::unique_ptr<WeightsHandoff>* handoff, RestoreResult* res) {
  const ProvidedFile* f = GpuWeightsFile(m);
  if (!f) return Status::Ok();  // nothing to hand off, whatever --gpu-weights says
  std::string why;
  HB_ASSIGN_OR_RETURN(auto plan, PlanWeightsHandoff(m, dir, signature_checked, opts.gpu_weights, ordinal, &why));
  if (!plan) {
    if (opts.gpu_weights == GpuWeightsMode::kHandoff) {
      return Incompatible("--gpu-weights handoff: " + why + " (--gpu-weights auto restores it anyway)");
    }
    GpuWeightsReport r;
    r.mode = "server";
    r.file = f->name;
    r.bytes = f->size;
    r.reason = why;
    res->gpu_weights = r;
    return Status::Ok();
  }
  plan->upload = opts.handoff_upload;
  *handoff = WeightsHandoff::Start(std::move(*plan), &reader, opts.open_device);
  return Status::Ok();
}

// Phase (in "weights", once CRIU's images are unpacked): the GPU weights
// file a handoff from the snapshot left out goes into the weights directory
// after all when the handoff cannot be done here (auto: the server uploads
// it from there; --gpu-weights handoff: refused) or when CRIU's images name
// it (the server keeps it mapped, so CRIU opens it).
Status SettleWeightsHandoff(const Manifest& m, const snapfile::SnapshotReader& reader,
                            const std::optional<SafeDir>& dir, const std::string& images, bool signature_checked,
                            const RestoreOptions& opts, WeightsHandoff& h, RestoreResult* res) {
  const bool from_snapshot = h.plan().cache_fd < 0;
  const bool required = opts.gpu_weights == GpuWeightsMode::kHandoff;
  if (!from_snapshot && !required) return Status::Ok();  // the file is there either way
  bool needed = false;
  if (from_snapshot) {
    const auto ts = Clock::now();
    HB_ASSIGN_OR_RETURN(needed, ImagesNameFile(images, h.plan().file));
    res->timings_ms["weights_images_scan"] = MsSince(ts);
  }
  // Whether the device is there matters only when it decides something.
  if (required || (from_snapshot && !needed)) {
    const auto tv = Clock::now();
    const Status viable = h.WaitViable();
    res->timings_ms["weights_handoff_open_wait"] = MsSince(tv);
    if (!viable.ok() && required) {
      return Incompatible("--gpu-weights handoff: " + viable.message() +
                          " (--gpu-weights auto lets the server upload the weights instead)");
    }
    needed = needed || !viable.ok();
  }
  if (!from_snapshot || !needed) return Status::Ok();
  if (!dir) return Internal("a GPU weights file but no weights directory checked");
  std::set<std::string> others;
  for (const ProvidedFile& f : m.process.provided_files) {
    if (f.name != h.plan().file) others.insert(f.name);
  }
  h.set_file_extracted();
  return PlaceProvidedFiles(m, reader, *dir, opts.threads, signature_checked, others);
}

// Phase (after the driver's restore, before after_restore): waits for the
// handoff thread, whose upload ran beside CRIU's and the driver's restore.
// A failed upload fails the restore (the replica is ended unready); a
// handoff that could not be done here leaves the server's upload.
Status AwaitWeightsHandoff(const RestoreOptions& opts, const std::function<void(const std::string&)>& phase,
                           std::unique_ptr<WeightsHandoff>& handoff, RestoreResult* res) {
  phase("weights-handoff");
  const auto th = Clock::now();
  const Status st = handoff->Wait();
  res->timings_ms["weights_handoff_wait"] = MsSince(th);
  res->timings_ms["weights_handoff"] = handoff->wall_ms();
  res->gpu_weights = handoff->Report();
  if (st.ok()) return Status::Ok();
  if (handoff->viable()) return st.Prefixed("the GPU weights were not uploaded; the replica is not ready");
  if (opts.gpu_weights == GpuWeightsMode::kHandoff) {
    return Incompatible("--gpu-weights handoff: " + st.message() +
                        " (--gpu-weights auto lets the server upload the weights instead)");
  }
  handoff.reset();  // the server uploads the file from the weights directory
  return Status::Ok();
}

// Bounds a CRIU restore: past `limit` it ends the cgroup CRIU runs in
// (CriuRestoreOptions::cgroup: CRIU and whatever it restored so far), or,
// without one, this process's children named "criu" (libcriu's swrk), so
// that criu_restore returns. Stop() says whether it had to.
class CriuWatchdog {
 public:
  CriuWatchdog(std::string cgroup, std::chrono::milliseconds limit)
      : cgroup_(std::move(cgroup)), thread_([this, limit] { Watch(limit); }) {}
  ~CriuWatchdog() { Stop(); }
  bool Stop() {
    {
      std::lock_guard lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    return fired_;
  }

 private:
  void Watch(std::chrono::milliseconds limit) {
    std::unique_lock lk(mu_);
    if (cv_.wait_for(lk, limit, [&] { return done_; })) return;
    fired_ = true;
    if (!cgroup_.empty()) {
      std::ofstream(cgroup_ + "/cgroup.kill") << "1";
      return;
    }
    std::error_code ec;
    for (const auto& task : fs::directory_iterator("/proc/self/task", ec)) {
      std::ifstream children(task.path() / "children");
      for (pid_t child; children >> child;) {
        std::string comm;
        std::getline(std::ifstream("/proc/" + std::to_string(child) + "/comm"), comm);
        if (comm == "criu") ::kill(child, SIGKILL);
      }
    }
  }

  std::string cgroup_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false, fired_ = false;
  std::thread thread_;
};

}  // namespace

Result<RestoreResult> RestoreReplica(const RestoreOptions& opts, Criu& criu, const RestoreEvents& ev,
                                     CudaDriver* cuda) {
  auto phase = [&](const std::string& p) {
    if (ev.on_phase) ev.on_phase(p);
  };
  const auto t0 = Clock::now();
  const auto origin = TimeOrigin(opts, t0);
  RestoreResult res;
  if (opts.started) res.timings_ms["startup"] = MsBetween(origin, t0);

  // This restore's job (host/job.h): the restored tree's cgroup and the work
  // dir are ended/removed by a janitor if this process dies, whatever kills
  // it (a supervised replica dies with its supervisor); starting it sweeps
  // what dead builds and restores left.
  HB_ASSIGN_OR_RETURN(std::shared_ptr<host::Job> job, host::Job::Start({.kind = "restore"}));

  phase("open");
  const snapfile::OpenOptions open_opts{.base_path = opts.base_path, .check_chunk_hashes = opts.check_chunk_hashes};
  HB_ASSIGN_OR_RETURN(auto reader, opts.source ? snapfile::SnapshotReader::Open(opts.source, open_opts)
                                               : snapfile::SnapshotReader::Open(opts.snapshot_path, open_opts));
  // Who signed it decides, before a byte is written or a process started.
  res.trust = reader->trust();
  HB_RETURN_IF_ERROR(snapfile::CheckTrust(*reader, opts.trust));
  // Parsed once, every field checked and bounded: nothing below reads JSON.
  auto parsed = ParseManifest(reader->manifest_json());
  if (!parsed.ok()) return parsed.status().Prefixed(opts.snapshot_path);
  const Manifest manifest = std::move(parsed).value();

  // Before this process starts a thread or CRIU: new PIDs are handed out
  // above the ones the snapshot's tree must get back.
  ReservePids(manifest);

  phase("check");
  auto criu_version = criu.Version();
  auto problems = CheckCompatibility(manifest, ReadHostInfo(), criu_version.ok() ? *criu_version : "");
  if (!problems.empty()) {
    return Incompatible("snapshot " + opts.snapshot_path + " cannot be restored on this host:" +
                        DescribeProblems(problems));
  }
  HB_ASSIGN_OR_RETURN(const int port, ReplicaPort(manifest, opts.port));
  if (!PortAvailable(opts.host, port)) {
    return FailedPrecondition("port " + std::to_string(port) + " on " + opts.host + " is already in use; " +
                              (IsTransparent(manifest) ? "this snapshot's server can only listen there; free it"
                                                       : "pick a free --port"));
  }
  HB_RETURN_IF_ERROR(CheckPidsFree(manifest).Prefixed("snapshot " + opts.snapshot_path + " cannot be restored here"));
  // The GPUs' model, compute capability and count (and the driver branch)
  // are checked now, before anything is touched. Their free memory takes a
  // CUDA context (about 0.2 s on an H100): that check runs beside the unpack
  // and the CRIU restore and is joined before the GPU state is restored; if
  // the memory is not there after all, the restored tree is ended unready.
  Manifest gpu_manifest;
  gpu_manifest.gpu = manifest.gpu;
  const std::string refused = "snapshot " + opts.snapshot_path + " cannot be restored on this host";
  auto fits = CheckGpuCompatibility(gpu_manifest, cuda, /*free_memory=*/false);
  if (!fits.ok()) return fits.status().Prefixed(refused);
  std::vector<GpuPair> gpu_pairs = std::move(fits).value();
  std::future<std::pair<Result<std::vector<GpuPair>>, double>> gpu_check;
  if (cuda && !gpu_pairs.empty()) {
    gpu_check = std::async(std::launch::async, [gpu_manifest, cuda] {
      const auto tg = Clock::now();
      auto pairs = CheckGpuCompatibility(gpu_manifest, cuda, /*free_memory=*/true);
      return std::make_pair(std::move(pairs), MsSince(tg));
    });
  }
  const int gpu_processes = manifest.gpu ? manifest.gpu->processes : 0;
  // The weights directory and what the snapshot would put there, checked
  // before anything is written.
  HB_ASSIGN_OR_RETURN(std::optional<SafeDir> weights_dir, CheckProvidedFiles(manifest, *reader));
  const bool signature_checked = opts.trust.in_force() && opts.check_chunk_hashes;
  if (opts.on_plan) {
    HB_ASSIGN_OR_RETURN(const auto reused, ReusedSections(manifest, weights_dir, signature_checked));
    opts.on_plan(*reader, reused);
  }
  // The weights handoff (issue 15) starts here, beside everything below.
  std::unique_ptr<WeightsHandoff> handoff;
  HB_RETURN_IF_ERROR(StartWeightsHandoff(manifest, *reader, weights_dir, signature_checked, opts,
                                         HandoffOrdinal(manifest, gpu_pairs, cuda), &handoff, &res));
  res.timings_ms["check"] = MsSince(t0);

  phase("unpack");
  const auto tu = Clock::now();
  uint64_t raw_bytes = 0;
  for (const auto& sec : reader->sections()) {
    if (sec.name.rfind("criu/", 0) == 0) raw_bytes += sec.raw_size;
  }
  HB_ASSIGN_OR_RETURN(TempDir work, TempDir::Make(opts.work_root, raw_bytes, *job));
  const std::string images = work.path() + "/images";
  fs::create_directories(images);
  // A handoff straight from the snapshot leaves the GPU weights file out
  // (SettleWeightsHandoff puts it there after all when it must).
  std::set<std::string> skip;
  if (handoff && handoff->plan().cache_fd < 0) skip.insert(handoff->plan().file);
  auto place_weights = [&]() -> std::pair<Status, double> {
    const auto tw = Clock::now();
    Status st = weights_dir ? PlaceProvidedFiles(manifest, *reader, *weights_dir, opts.threads, signature_checked, skip)
                            : Status::Ok();
    return {st, MsSince(tw)};
  };
  // A snapshot still arriving: the weights are placed beside the images,
  // each waiting only for its own bytes.
  std::future<std::pair<Status, double>> weights_beside;
  if (opts.source) weights_beside = std::async(std::launch::async, place_weights);
  Status images_st = reader->ExtractTo(images, "criu/", opts.threads, ev.on_unpack_progress);
  if (!images_st.ok() && !weights_beside.valid()) return images_st;
  res.timings_ms["unpack"] = MsSince(tu);

  phase("weights");
  const auto tw = Clock::now();
  auto [weights_st, weights_ms] = weights_beside.valid() ? weights_beside.get() : place_weights();
  HB_RETURN_IF_ERROR(images_st);
  HB_RETURN_IF_ERROR(weights_st);
  if (handoff) {
    HB_RETURN_IF_ERROR(SettleWeightsHandoff(manifest, *reader, weights_dir, images, signature_checked, opts,
                                            *handoff, &res));
    // A damaged chunk found already: no CRIU restore for a replica that
    // cannot become ready.
    HB_RETURN_IF_ERROR(handoff->UploadFailure().Prefixed("the GPU weights were not uploaded"));
  }
  res.timings_ms["weights"] = MsSince(tw);
  if (opts.source) res.timings_ms["weights_overlapped"] = weights_ms;

  phase("criu-restore");
  const auto tr = Clock::now();
  const std::vector<std::string>& keys = manifest.process.fd_keys;
  HB_ASSIGN_OR_RETURN(ReplicaPipes pipes, MakeReplicaPipes(opts.log_file));
  CriuRestoreOptions ro;
  ro.images_dir = images;
  ro.work_dir = work.path();
  // The restored tree starts in a cgroup of its own (CRIU runs in it).
  HB_ASSIGN_OR_RETURN(std::shared_ptr<host::Cgroup> cgroup, job->NewCgroup());
  if (cgroup) ro.cgroup = cgroup->path();
  // One pipe behind two fds (a transparent server's stdout and stderr both
  // go to the log) is inherited once, by the higher fd: the log.
  std::set<std::string> inherited;
  for (int fd = std::min<int>(3, static_cast<int>(keys.size())) - 1; fd >= 0; --fd) {
    if (keys[fd].rfind("pipe:", 0) == 0 && inherited.insert(keys[fd]).second) {
      ro.inherit_fds.emplace_back(pipes.child_fds[fd], keys[fd]);
    }
  }
  CriuWatchdog watchdog(ro.cgroup, opts.criu_timeout);
  auto pid = criu.Restore(ro);
  const bool timed_out = watchdog.Stop();
  pipes.CloseChildEnds();
  if (timed_out) {
    pipes.CloseAll();
    return Timeout("CRIU restore did not finish within " + std::to_string(opts.criu_timeout.count()) +
                   " ms and was ended with everything it had restored (a container with fewer capabilities than "
                   "the build's makes CRIU 4.2.1 hang: deploy/README.md \"Privileges\"; --criu-timeout sets the "
                   "limit)" + (pid.ok() ? std::string() : ": " + pid.status().message()));
  }
  if (!pid.ok()) {
    pipes.CloseAll();
    return pid.status().Prefixed("CRIU restore");
  }
  auto replica = std::make_unique<Replica>(*pid, pipes.control_write, pipes.control_read,
                                           pipes.log_read, ev.on_server_log);
  replica->Contain(job, std::move(cgroup));  // from here a failure ends the whole tree
  res.timings_ms["criu_restore"] = MsSince(tr);

  if (gpu_check.valid()) {
    const auto tj = Clock::now();
    auto [pairs, ms] = gpu_check.get();
    res.timings_ms["gpu_check_wait"] = MsSince(tj);  // what the restore waited for it
    res.timings_ms["gpu_check_overlapped"] = ms;     // all of it, beside unpack and CRIU
    if (!pairs.ok()) return pairs.status().Prefixed(refused + "; the restored processes were ended");
    gpu_pairs = std::move(pairs).value();
  }
  if (gpu_processes > 0) {
    // Nothing runs CUDA until this is done: the restored processes are
    // checkpointed on the GPU side, their CUDA calls blocked by the driver.
    phase("gpu-restore");
    auto g = RestoreGpuProcesses(*cuda, ProcessTree(*pid), gpu_pairs, gpu_processes);
    if (!g.ok()) return g.status().Prefixed("the replica's GPU state was not restored; it is not ready");
    res.timings_ms["gpu_restore"] = g->restore_ms;
    res.timings_ms["gpu_unlock"] = g->unlock_ms;
  }
  if (handoff) HB_RETURN_IF_ERROR(AwaitWeightsHandoff(opts, phase, handoff, &res));

  if (IsTransparent(manifest)) {
    HB_RETURN_IF_ERROR(VerifyTransparent(manifest, opts, port, *replica, phase, &res));
  } else {
    RestoreOptions o = opts;
    o.port = port;
    HB_RETURN_IF_ERROR(VerifyCooperative(manifest, o, *replica, phase, handoff.get(), &res));
  }
  res.time_to_ready_ms = MsSince(origin);
  res.timings_ms["total"] = res.time_to_ready_ms;
  res.port = port;
  res.replica = std::move(replica);
  if (IsTransparent(manifest)) res.keep_warm = KeepWarmRequests(manifest);
  phase("ready");
  return res;
}

Result<RestoreResult> ColdBootFromManifest(const Manifest& manifest, const RestoreOptions& opts,
                                           const RestoreEvents& ev) {
  const auto t0 = Clock::now();
  const auto origin = TimeOrigin(opts, t0);
  const std::vector<std::string>& cmd = manifest.process.command;
  if (cmd.empty()) return FailedPrecondition("the manifest records no server command to boot cold");
  HB_ASSIGN_OR_RETURN(const int port, ReplicaPort(manifest, opts.port));
  if (!PortAvailable(opts.host, port)) {
    return FailedPrecondition("port " + std::to_string(port) + " is already in use; pick a free --port");
  }
  if (ev.on_phase) ev.on_phase("cold-boot");
  const bool transparent = IsTransparent(manifest);
  LaunchOptions lo;
  lo.argv = transparent ? cmd : WithPort(cmd, port);
  lo.log_file = opts.log_file;
  lo.new_pid_namespace = false;
  lo.stdout_to_log = transparent;
  // In a cgroup of its own, ended with its driver like a restored one.
  HB_ASSIGN_OR_RETURN(lo.job, host::Job::Start({.kind = "restore"}));
  HB_ASSIGN_OR_RETURN(auto replica, LaunchReplica(lo, ev.on_server_log));
  RestoreResult res;
  if (transparent) {
    const std::string ready_path = manifest.http ? manifest.http->ready_path : "/health";
    auto gone = [&]() -> std::string { return replica->Exited() ? "it exited: " + replica->FinalLogTail() : ""; };
    HB_RETURN_IF_ERROR(WaitHttpReady(opts.host, port, ready_path, std::chrono::minutes(10), gone)
                           .Prefixed("cold boot"));
  } else {
    auto warm = replica->WaitForState("warm", std::chrono::minutes(10));
    if (!warm.ok()) return warm.status().Prefixed("cold boot");
    res.instance = warm->value("instance", "");
  }
  res.cold = true;
  res.control_channel = !transparent;
  if (transparent) res.keep_warm = KeepWarmRequests(manifest);
  res.port = port;
  // From opts.started, the time before the cold boot (for `hotboot restore
  // --fallback-cold`: its startup and the restore attempt that failed) is
  // part of what the caller waited for.
  if (opts.started) res.timings_ms["before_cold_boot"] = MsBetween(origin, t0);
  res.timings_ms["cold_boot"] = MsSince(t0);
  res.time_to_ready_ms = MsSince(origin);
  res.timings_ms["total"] = res.time_to_ready_ms;
  res.replica = std::move(replica);
  return res;
}

}  // namespace hotboot
