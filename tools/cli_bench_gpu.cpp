// `hotboot bench gpu`: how fast the cooperative restore streams weights to
// the GPU (DeviceWeights: parallel reads, pinned staging, several streams)
// against the pinned host-to-device bandwidth measured in the same run: a
// ceiling for the upload (the most it could reach), not a floor. Then one
// row per source of the weights (--sources): the page cache, a huge-page
// tmpfs, O_DIRECT from disk, a snapshot section decoded straight into the
// staging buffers, and the restorer-to-server handoff of shareable memory.
// --host-only runs what needs no GPU (file generation, snapshot writing and
// host decode, the tmpfs mount, O_DIRECT reads): the tests use it.
//
// Nothing outlives a killed bench: the huge_tmpfs row mounts in a mount
// namespace of this process's own (gone with its last process), and every
// file or directory it makes is a temporary of its job (host/job.h), removed
// by the job's janitor if it dies, by the next job's sweep if both do.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/gpu_memory.h"
#include "hotboot/job.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

double Seconds(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Pinned host memory to device memory, `bytes` in `chunk` pieces spread over
// every stream: the ceiling an upload from host memory can reach.
Result<double> PinnedH2D(gpu::Device& dev, size_t bytes, size_t chunk, int repeat) {
  HB_ASSIGN_OR_RETURN(void* host, dev.AllocPinned(bytes));
  std::memset(host, 1, bytes);
  const size_t g = dev.Granularity();
  const size_t mapped = (bytes + g - 1) / g * g;
  auto va = dev.Reserve(mapped);
  Status st = va.ok() ? dev.Map(*va, mapped) : va.status();
  double best = 0;
  for (int r = 0; st.ok() && r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<int> events;
    int i = 0;
    for (size_t off = 0; st.ok() && off < bytes; off += chunk, ++i) {
      const int s = i % dev.Streams();
      st = dev.CopyToDeviceAsync(*va + off, static_cast<char*>(host) + off, std::min(chunk, bytes - off), s);
    }
    for (int s = 0; st.ok() && s < dev.Streams(); ++s) {
      auto ev = dev.Record(s);
      st = ev.ok() ? dev.Wait(*ev) : ev.status();
    }
    best = std::max(best, static_cast<double>(bytes) / Seconds(t0) / 1e9);
  }
  if (va.ok()) {
    dev.Unmap(*va, mapped);
    dev.FreeReservation(*va, mapped);
  }
  dev.FreePinned(host, bytes);
  if (!st.ok()) return st;
  return best;
}

// Pageable host memory to pinned host memory with `threads` memcpy threads:
// the ceiling of the staging copy that the pread, mmap and populate modes
// make from the page cache (the register mode has no such copy).
Result<double> HostCopy(gpu::Device& dev, size_t bytes, int threads, int repeat) {
  HB_ASSIGN_OR_RETURN(void* pinned, dev.AllocPinned(bytes));
  std::vector<char> pageable(bytes, 1);
  double best = 0;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    const size_t slice = (bytes + static_cast<size_t>(threads) - 1) / static_cast<size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t off = std::min(bytes, slice * static_cast<size_t>(t));
        std::memcpy(static_cast<char*>(pinned) + off, pageable.data() + off, std::min(slice, bytes - off));
      });
    }
    for (auto& t : ts) t.join();
    best = std::max(best, static_cast<double>(bytes) / Seconds(t0) / 1e9);
  }
  dev.FreePinned(pinned, bytes);
  return best;
}

struct GpuBenchArgs {
  std::string weights;
  int size_mib = 2048;
  int device = 0;
  int streams = 8;
  int repeat = 3;
  size_t chunk_mib = gpu::UploadOptions{}.chunk_bytes >> 20;
  int buffers = gpu::UploadOptions{}.buffers;
  int readers = gpu::UploadOptions{}.readers;
  std::string workdir = "/dev/shm";
  std::string disk_dir = "/var/tmp";
  bool sweep = false;
  std::string mode = gpu::ReadModeName(gpu::UploadOptions{}.mode);
  std::string sources = "page_cache,huge_tmpfs,direct,snapshot,handoff";
  bool host_only = false;
  bool json_out = false;
  // The handoff row's server side, in a process of its own (hidden options):
  // import this inherited fd, map `handoff_bytes` of it, check the bytes.
  int handoff_fd = -1;
  uint64_t handoff_bytes = 0;
  // Hidden, for the tests: SIGSTOP this process once the tmpfs is mounted
  // (a test kills it there and checks that nothing is left).
  bool stop_when_mounted = false;
};

constexpr const char* kSources[] = {"page_cache", "huge_tmpfs", "direct", "snapshot", "handoff"};

int HardwareThreads() { return std::max(1, static_cast<int>(std::thread::hardware_concurrency())); }

// Random bf16-looking words (sign, an exponent in the range of trained
// weights, random mantissa): zstd with byte planes shrinks them about as much
// as real weights, so the snapshot row decodes realistic chunks. Filled by
// every hardware thread, each writing its own slice: 16 GiB in seconds.
Status GenerateWeightsFile(const std::string& path, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("create " + path, errno);
  Status st;
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) st = ErrnoError("size " + path, errno);
  const int threads = HardwareThreads();
  const uint64_t block = 8u << 20;
  const uint64_t blocks = (bytes + block - 1) / block;
  std::atomic<uint64_t> next{0};
  std::mutex mu;
  std::vector<std::thread> ts;
  for (int t = 0; st.ok() && t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::vector<uint16_t> buf(block / 2);
      uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(t + 1);
      for (uint64_t b; (b = next.fetch_add(1)) < blocks;) {
        for (size_t i = 0; i < buf.size(); i += 4) {
          x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
          for (int k = 0; k < 4; ++k) {
            const auto r = static_cast<uint16_t>(x >> (16 * k));
            // sign | exponent 117..124 (2^-10 .. 2^-3) | 7 mantissa bits
            buf[i + static_cast<size_t>(k)] =
                static_cast<uint16_t>((r & 0x8000u) | ((117u + ((r >> 7) & 7u)) << 7) | (r & 0x7Fu));
          }
        }
        const uint64_t off = b * block, n = std::min(block, bytes - off);
        const char* p = reinterpret_cast<const char*>(buf.data());
        for (uint64_t done = 0; done < n;) {
          ssize_t w = ::pwrite(fd, p + done, n - done, static_cast<off_t>(off + done));
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) {
            std::lock_guard l(mu);
            if (st.ok()) st = ErrnoError("write " + path + " at byte " + std::to_string(off + done), errno);
            next = blocks;
            return;
          }
          done += static_cast<uint64_t>(w);
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  ::close(fd);
  if (!st.ok()) ::unlink(path.c_str());
  return st;
}

// A copy of `from` at `to` (parallel pread/pwrite), fsynced.
Status CopyFile(const std::string& from, const std::string& to, uint64_t bytes) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return ErrnoError("open " + from, errno);
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    const int e = errno;
    ::close(in);
    return ErrnoError("create " + to, e);
  }
  Status st;
  if (::ftruncate(out, static_cast<off_t>(bytes)) != 0) st = ErrnoError("size " + to, errno);
  const uint64_t block = 8u << 20, blocks = (bytes + block - 1) / block;
  std::atomic<uint64_t> next{0};
  std::mutex mu;
  std::vector<std::thread> ts;
  for (int t = 0; st.ok() && t < std::min(HardwareThreads(), 8); ++t) {
    ts.emplace_back([&] {
      std::vector<char> buf(block);
      for (uint64_t b; (b = next.fetch_add(1)) < blocks;) {
        const uint64_t off = b * block, n = std::min(block, bytes - off);
        ssize_t r = ::pread(in, buf.data(), n, static_cast<off_t>(off));
        ssize_t w = r == static_cast<ssize_t>(n) ? ::pwrite(out, buf.data(), n, static_cast<off_t>(off)) : -1;
        if (w != static_cast<ssize_t>(n)) {
          std::lock_guard l(mu);
          if (st.ok()) st = ErrnoError("copy " + from + " to " + to + " at byte " + std::to_string(off), errno ? errno : EIO);
          next = blocks;
          return;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  if (st.ok() && ::fsync(out) != 0) st = ErrnoError("fsync " + to, errno);
  ::close(in);
  ::close(out);
  if (!st.ok()) ::unlink(to.c_str());
  return st;
}

// Drops a file's pages from the page cache (written back first), so that
// the next read comes from the disk.
Status DropFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  Status st;
  if (::fdatasync(fd) != 0) st = ErrnoError("fdatasync " + path, errno);
  if (st.ok()) {
    if (int e = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); e != 0) st = ErrnoError("posix_fadvise " + path, e);
  }
  ::close(fd);
  return st;
}

// Moves this process into a mount namespace of its own whose mounts
// propagate nowhere (/ made private, recursively, in it): a tmpfs mounted
// there is seen by no other process and goes when the namespace does, with
// the last process in it, however that process ends. Called before any
// thread is started (unshare moves only the calling thread; the threads
// made later follow it). Needs CAP_SYS_ADMIN.
Status EnterPrivateMountNamespace() {
  if (::unshare(CLONE_NEWNS) != 0) {
    return ErrnoError(std::string("a mount namespace of its own: unshare(CLONE_NEWNS)") +
                          (::geteuid() != 0 ? " (needs root)" : ""),
                      errno);
  }
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return ErrnoError("make / private in the bench's mount namespace (mount MS_REC|MS_PRIVATE)", errno);
  }
  return Status();
}

// A tmpfs with transparent huge pages (huge=always) on a directory of its
// own (PARENT/hotboot-bench-huge.PID), in the bench's private mount
// namespace (`ns`: whether entering it worked, else why not): unmounted and
// removed when this goes out of scope; if the bench is killed instead, the
// mount dies with its namespace and the job's janitor removes the directory,
// registered before it is made. Mounting needs root (CAP_SYS_ADMIN).
class HugeTmpfs {
 public:
  explicit HugeTmpfs(host::Job& job) : job_(job) {}
  ~HugeTmpfs() { Cleanup(); }
  Status Mount(const Status& ns, const std::string& parent, uint64_t bytes) {
    // Room for the file and a little more, whole 2 MiB pages.
    const uint64_t size = ((bytes + (64u << 20)) >> 21) << 21;
    const std::string opts = "huge=always,mode=0700,size=" + std::to_string(size);
    const std::string where = "mount tmpfs (" + opts + ") under " + parent;
    if (!ns.ok()) return ns.Prefixed(where);
    const std::string dir = parent + "/hotboot-bench-huge." + std::to_string(::getpid());
    HB_RETURN_IF_ERROR(job_.AddTemporary(dir).Prefixed(where));
    if (::mkdir(dir.c_str(), 0700) != 0) {
      const int e = errno;
      job_.DropTemporary(dir);
      return ErrnoError(where + ": mkdir " + dir, e);
    }
    dir_ = dir;
    if (::mount("hotboot-bench", dir_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts.c_str()) != 0) {
      return ErrnoError("mount tmpfs (" + opts + ") on " + dir_ + (::geteuid() != 0 ? " (needs root)" : ""), errno);
    }
    mounted_ = true;
    return Status();
  }
  const std::string& dir() const { return dir_; }
  std::string file() const { return dir_ + "/weights.bin"; }
  void Cleanup() {
    if (dir_.empty()) return;
    if (mounted_) {
      ::unlink(file().c_str());
      if (::umount2(dir_.c_str(), 0) != 0) ::umount2(dir_.c_str(), MNT_DETACH);
      mounted_ = false;
    }
    if (::rmdir(dir_.c_str()) == 0) job_.DropTemporary(dir_);  // else the job removes it as it ends
    dir_.clear();
  }

 private:
  host::Job& job_;
  std::string dir_;
  bool mounted_ = false;
};

// A file of the bench's: a temporary of its job from before it is made
// (Claim), so that a killed bench's janitor removes it; removed when this
// goes out of scope.
class TempFile {
 public:
  explicit TempFile(host::Job* job) : job_(job) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() { Release(true); }
  Status Claim(const std::string& path) {
    Release(true);
    if (job_) HB_RETURN_IF_ERROR(job_->AddTemporary(path));
    path_ = path;
    return Status();
  }
  // It is gone already (or never made): forget it.
  void Forget() { Release(false); }
  const std::string& path() const { return path_; }

 private:
  void Release(bool unlink) {
    if (path_.empty()) return;
    if (unlink) ::unlink(path_.c_str());
    if (job_) job_->DropTemporary(path_);
    path_.clear();
  }
  host::Job* job_;
  std::string path_;
};

// The weights as one snapshot section, written as the builder writes
// weights sections (snapshot/src/builder.cpp: ElemType::kBf16, so that the
// byte-plane transform is tried per chunk; default chunk size and level).
Status WriteBenchSnapshot(const std::string& weights, const std::string& out) {
  snapfile::SectionSource s;
  s.name = "weights/bench.bin";
  s.file_path = weights;
  s.elem = snapfile::ElemType::kBf16;
  return snapfile::WriteSnapshot(out, R"({"bench":"gpu"})", {s}, snapfile::WriteOptions{});
}

// The section decoded and checked chunk by chunk on every hardware thread
// into `buffers` (one per thread, max_chunk_raw bytes each: pinned ones for
// the real measure), without any copy to a device: decode alone, GB/s.
Result<double> HostDecodeRate(const snapfile::SnapshotReader& r, const std::string& section,
                              const std::vector<char*>& buffers) {
  HB_ASSIGN_OR_RETURN(auto layout, r.SectionChunks(section));
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status st;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (char* buf : buffers) {
    ts.emplace_back([&, buf] {
      snapfile::SnapshotReader::ChunkScratch scratch;
      for (size_t k; (k = next.fetch_add(1)) < layout.chunks.size();) {
        Status s = r.DecodeChunkTo(section, k, buf, scratch);
        if (!s.ok()) {
          std::lock_guard l(mu);
          if (st.ok()) st = s;
          next = layout.chunks.size();
          return;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  if (!st.ok()) return st;
  return static_cast<double>(layout.raw_size) / Seconds(t0) / 1e9;
}

// O_DIRECT reads of the whole file on every hardware thread into aligned
// buffers, no device: what the disk gives the direct mode, GB/s.
Result<double> HostDirectReadRate(const std::string& path, uint64_t bytes, size_t chunk) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path + " with O_DIRECT", errno);
  const size_t chunks = static_cast<size_t>((bytes + chunk - 1) / chunk);
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status st;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < std::min(HardwareThreads(), 16); ++t) {
    ts.emplace_back([&] {
      void* buf = std::aligned_alloc(4096, chunk);
      if (!buf) return;
      for (size_t k; (k = next.fetch_add(1)) < chunks;) {
        ssize_t r = ::pread(fd, buf, chunk, static_cast<off_t>(k * chunk));
        if (r < 0) {
          std::lock_guard l(mu);
          if (st.ok()) st = ErrnoError("O_DIRECT read of " + path, errno);
          next = chunks;
        }
      }
      std::free(buf);
    });
  }
  for (auto& t : ts) t.join();
  ::close(fd);
  if (!st.ok()) return st;
  return static_cast<double>(bytes) / Seconds(t0) / 1e9;
}

// One row of "sources".
struct SourceRow {
  std::string source, mode, error;
  double gbps = 0, seconds = 0;
  uint64_t bytes = 0;
  bool measured = false;  // an upload ran (else: host only, or error)
  json extra = json::object();
};

json RowJson(const SourceRow& r, double ceiling) {
  json j = {{"source", r.source}, {"bytes", r.bytes}};
  if (!r.mode.empty()) j["mode"] = r.mode;
  if (r.measured) {
    j["upload_GBps"] = r.gbps;
    j["vs_pinned"] = ceiling > 0 ? r.gbps / ceiling : 0;
    j["seconds"] = r.seconds;
  }
  if (!r.error.empty()) j["error"] = r.error;
  for (const auto& [k, v] : r.extra.items()) j[k] = v;
  return j;
}

SourceRow FromStats(const std::string& source, const Result<gpu::UploadStats>& up) {
  SourceRow r;
  r.source = source;
  if (!up.ok()) {
    r.error = up.status().ToString();
    return r;
  }
  r.measured = true;
  r.mode = up->mode;
  r.gbps = up->GBps();
  r.seconds = up->seconds;
  r.bytes = up->bytes;
  // Where the time went, so that a GPU run tells reads/decode from PCIe:
  // per-reader fill rate (read, or decode and check), time the copier
  // waited on copies, pinned staging set-up (overlapped).
  if (up->read_seconds > 0) r.extra["fill_GBps_per_reader"] = static_cast<double>(up->bytes) / up->read_seconds / 1e9;
  r.extra["copy_wait_ms"] = up->copy_wait_seconds * 1e3;
  r.extra["staging_ms"] = up->staging_seconds * 1e3;
  r.extra["staging_buffers"] = up->staging_buffers;
  return r;
}

// Best of `repeat` re-uploads of resident weights with options `o`.
Result<gpu::UploadStats> BestUpload(gpu::DeviceWeights& w, const std::string& path, const gpu::UploadOptions& o,
                                    int repeat) {
  gpu::UploadStats best;
  for (int r = 0; r < repeat; ++r) {
    HB_RETURN_IF_ERROR(w.Release());
    HB_ASSIGN_OR_RETURN(gpu::UploadStats up, w.Restore(path, o));
    if (up.GBps() > best.GBps()) best = up;
  }
  return best;
}

json StatsJson(const gpu::UploadStats& s, const gpu::UploadOptions& o) {
  return {{"mode", s.mode},
          {"readers", o.readers},
          {"chunk_bytes", o.chunk_bytes},
          {"buffers", o.buffers},
          {"upload_GBps", s.GBps()},
          {"seconds", s.seconds},
          {"staging_ms", s.staging_seconds * 1e3},
          {"staging_buffers", s.staging_buffers},
          {"read_GBps_per_reader", s.read_seconds > 0 ? static_cast<double>(s.bytes) / s.read_seconds / 1e9 : 0},
          {"copy_wait_ms", s.copy_wait_seconds * 1e3}};
}

// What the source rows share: the device (null with --host-only), the
// weights file (in the page cache), the upload options and the resident
// DeviceWeights of the first measure, which the rows release and refill.
struct RowContext {
  const GpuBenchArgs& a;
  gpu::Device* dev;
  std::string path;
  uint64_t size;
  gpu::UploadOptions o;
  gpu::DeviceWeights* w;
  host::Job& job;
  Status mount_ns;  // whether the bench is in a mount namespace of its own (huge_tmpfs), else why not
};

// `n` bytes of device memory at `va` against the file at `off`, sampled at
// the start, the middle and the end: a wrong upload is an error, not a rate.
Status CheckSample(gpu::Device& dev, gpu::DevicePtr va, const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  const uint64_t n = std::min<uint64_t>(size, 1u << 20);
  std::string want(n, '\0'), got(n, '\0');
  Status st;
  for (uint64_t off : {uint64_t{0}, size / 2 - std::min(size / 2, n / 2), size - n}) {
    if (::pread(fd, want.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
      st = ErrnoError("read " + path, errno ? errno : EIO);
      break;
    }
    st = dev.CopyToHost(got.data(), va + off, n);
    if (!st.ok()) break;
    if (got != want) {
      st = Corrupt("the device's bytes at offset " + std::to_string(off) + " differ from the weights file's");
      break;
    }
  }
  ::close(fd);
  return st;
}

std::vector<SourceRow> RowHugeTmpfs(RowContext& c) {
  SourceRow base;
  base.source = "huge_tmpfs";
  base.bytes = c.size;
  HugeTmpfs fs(c.job);
  if (Status m = fs.Mount(c.mount_ns, c.a.disk_dir, c.size); !m.ok()) {
    base.error = m.ToString();
    return {base};
  }
  if (c.a.stop_when_mounted) {
    Note("tmpfs mounted on " + fs.dir() + "; stopped (--stop-when-mounted)");
    ::raise(SIGSTOP);
  }
  const auto tc = std::chrono::steady_clock::now();
  if (Status cp = CopyFile(c.path, fs.file(), c.size); !cp.ok()) {
    base.error = cp.ToString();
    return {base};
  }
  base.extra["copy_GBps"] = static_cast<double>(c.size) / Seconds(tc) / 1e9;
  if (!c.dev) {
    base.error = "not uploaded: --host-only (the tmpfs was mounted, filled and unmounted)";
    return {base};
  }
  std::vector<SourceRow> rows;
  for (auto mode : {gpu::UploadOptions::ReadMode::kMmap, gpu::UploadOptions::ReadMode::kRegister}) {
    gpu::UploadOptions o = c.o;
    o.mode = mode;
    SourceRow r = FromStats("huge_tmpfs", BestUpload(*c.w, fs.file(), o, c.a.repeat));
    r.extra.update(base.extra);
    rows.push_back(r);
  }
  return rows;
}

SourceRow RowDirect(RowContext& c) {
  SourceRow r;
  r.source = "direct";
  r.bytes = c.size;
  TempFile disk(&c.job);
  if (Status t = disk.Claim(c.a.disk_dir + "/hotboot-bench-gpu-direct." + std::to_string(::getpid())); !t.ok()) {
    r.error = t.ToString();
    return r;
  }
  if (Status cp = CopyFile(c.path, disk.path(), c.size); !cp.ok()) {
    disk.Forget();  // CopyFile removed it
    r.error = cp.ToString();
    return r;
  }
  if (Status d = DropFromPageCache(disk.path()); !d.ok()) {
    r.error = d.ToString();
    return r;
  }
  if (!c.dev) {
    auto rate = HostDirectReadRate(disk.path(), c.size, c.o.chunk_bytes);
    if (rate.ok()) r.extra["read_GBps"] = *rate;
    r.error = rate.ok() ? "not uploaded: --host-only (O_DIRECT read rate measured)" : rate.status().ToString();
    return r;
  }
  gpu::UploadOptions o = c.o;
  o.mode = gpu::UploadOptions::ReadMode::kDirect;
  // O_DIRECT reads leave nothing in the page cache: every repeat reads the disk.
  r = FromStats("direct", BestUpload(*c.w, disk.path(), o, c.a.repeat));
  return r;
}

SourceRow RowSnapshot(RowContext& c) {
  SourceRow r;
  r.source = "snapshot";
  r.bytes = c.size;
  TempFile snap(&c.job);
  if (Status t = snap.Claim(c.a.workdir + "/hotboot-bench-gpu." + std::to_string(::getpid()) + ".hbsnap"); !t.ok()) {
    r.error = t.ToString();
    return r;
  }
  // The writer's temporary (renamed into place at the end), as the builder registers it.
  TempFile writing(&c.job);
  if (Status t = writing.Claim(snap.path() + ".tmp." + std::to_string(::getpid())); !t.ok()) {
    r.error = t.ToString();
    return r;
  }
  const auto tw = std::chrono::steady_clock::now();
  const Status ws = WriteBenchSnapshot(c.path, snap.path());
  writing.Forget();  // renamed into place, or removed by the writer
  if (!ws.ok()) {
    r.error = ws.ToString();
    return r;
  }
  r.extra["write_seconds"] = Seconds(tw);
  auto reader = snapfile::SnapshotReader::Open(snap.path());
  if (!reader.ok()) {
    r.error = reader.status().ToString();
    return r;
  }
  const std::string section = "weights/bench.bin";
  auto layout = (*reader)->SectionChunks(section);
  if (!layout.ok()) {
    r.error = layout.status().ToString();
    return r;
  }
  std::error_code ec;
  r.extra["snapshot_bytes"] = std::filesystem::file_size(snap.path(), ec);
  r.extra["chunks"] = layout->chunks.size();
  r.extra["max_chunk_bytes"] = layout->max_chunk_raw;
  // Decode alone, into pinned memory (plain memory with --host-only).
  const int threads = HardwareThreads();
  std::vector<char*> bufs;
  for (int t = 0; t < threads; ++t) {
    void* p = nullptr;
    if (c.dev) {
      auto pin = c.dev->AllocPinned(layout->max_chunk_raw);
      if (pin.ok()) p = *pin;
    } else {
      p = std::aligned_alloc(4096, (layout->max_chunk_raw + 4095) / 4096 * 4096);
    }
    if (p) bufs.push_back(static_cast<char*>(p));
  }
  auto decode = bufs.empty() ? Result<double>(Internal("no decode buffers")) : HostDecodeRate(**reader, section, bufs);
  for (char* p : bufs) {
    if (c.dev) {
      c.dev->FreePinned(p, layout->max_chunk_raw);
    } else {
      std::free(p);
    }
  }
  if (!decode.ok()) {
    r.error = decode.status().ToString();
    return r;
  }
  r.extra["decode_GBps"] = *decode;
  r.extra["decode_threads"] = threads;
  if (!c.dev) {
    r.error = "not uploaded: --host-only (snapshot written and decoded)";
    return r;
  }
  // Upload: decode straight into the staging buffers, one reader per
  // hardware thread, into device memory the size of the image.
  if (Status rel = c.w->Release(); !rel.ok()) {
    r.error = rel.ToString();
    return r;
  }
  const size_t g = c.dev->Granularity();
  const size_t mapped = (c.size + g - 1) / g * g;
  auto va = c.dev->Reserve(mapped);
  Status ms = va.ok() ? c.dev->Map(*va, mapped) : va.status();
  if (!ms.ok()) {
    if (va.ok()) c.dev->FreeReservation(*va, mapped);
    r.error = ms.ToString();
    return r;
  }
  const gpu::UploadOptions o = gpu::SectionUploadOptions();
  r.extra["upload_readers"] = o.readers;
  Result<gpu::UploadStats> best = Internal("no run");
  for (int k = 0; k < c.a.repeat; ++k) {
    auto up = gpu::UploadSection(*c.dev, **reader, section, *va, o);
    if (!up.ok() || !best.ok() || up->GBps() > best->GBps()) best = up;
    if (!up.ok()) break;
  }
  Status check = best.ok() ? CheckSample(*c.dev, *va, c.path, c.size) : Status();
  c.dev->Unmap(*va, mapped);
  c.dev->FreeReservation(*va, mapped);
  json extra = r.extra;
  r = FromStats("snapshot", best);
  r.extra.update(extra);
  if (!check.ok()) r.error = check.ToString(), r.measured = false;
  return r;
}

// The server's side of the handoff in another process, as a restored server
// does it: its own context, the exported fd inherited, import + map at its
// own reservation timed, the bytes checked against the file. This binary
// again (/proc/self/exe) with the hidden --handoff-fd; JSON back on a pipe.
Result<double> ImportInChild(const GpuBenchArgs& a, int exported, uint64_t image_bytes, const std::string& path) {
  const int inherit = ::fcntl(exported, F_DUPFD, 10);  // without close-on-exec
  if (inherit < 0) return ErrnoError("dup the exported fd", errno);
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(inherit);
    return ErrnoError("pipe", e);
  }
  std::vector<std::string> args = {"hotboot", "bench", "gpu", "--json", "--handoff-fd", std::to_string(inherit),
                                   "--handoff-bytes", std::to_string(image_bytes), "--weights", path,
                                   "--device", std::to_string(a.device), "--streams", "1"};
  std::vector<char*> argv;
  for (auto& x : args) argv.push_back(x.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
  pid_t pid = -1;
  const int e = ::posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(inherit);
  ::close(out[1]);
  std::string text;
  if (e == 0) {
    char buf[4096];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) != 0;) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(out[0]);
  if (e != 0) return ErrnoError("start the importing process", e);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  json j = json::parse(text, nullptr, false);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !j.is_object() || !j.contains("import_ms")) {
    std::string why = j.is_object() && j.contains("error") ? j["error"].dump() : text.substr(0, 300);
    return Internal("the importing process failed (status " + std::to_string(status) + "): " + why);
  }
  return j["import_ms"].get<double>();
}

// --handoff-fd: the child's side of ImportInChild.
int RunHandoffChild(const GpuBenchArgs& a) {
  auto dev = gpu::OpenCudaDevice(a.device, 1);
  if (!dev.ok()) return Fail(dev.status().Prefixed("bench gpu --handoff-fd needs a CUDA device"));
  gpu::Device& d = **dev;
  std::error_code ec;
  const uint64_t size = fs::file_size(a.weights, ec);
  if (ec || size == 0 || size > a.handoff_bytes) return Fail(InvalidArgument("--handoff-bytes smaller than --weights"));
  auto va = d.Reserve(a.handoff_bytes);
  if (!va.ok()) return Fail(va.status());
  const auto t0 = std::chrono::steady_clock::now();
  auto h = d.ImportFd(a.handoff_fd);
  Status st = h.ok() ? d.MapHandle(*va, a.handoff_bytes, *h) : h.status();
  const double ms = Seconds(t0) * 1e3;
  ::close(a.handoff_fd);
  if (st.ok()) {
    st = CheckSample(d, *va, a.weights, size);
    d.Unmap(*va, a.handoff_bytes);
  }
  if (h.ok()) d.ReleaseHandle(*h);
  d.FreeReservation(*va, a.handoff_bytes);
  if (!st.ok()) return Fail(st);
  std::printf("%s\n", json({{"import_ms", ms}}).dump().c_str());
  return kExitOk;
}

SourceRow RowHandoff(RowContext& c, double* import_ms) {
  SourceRow r;
  r.source = "handoff";
  r.bytes = c.size;
  if (!c.dev) {
    r.error = "not run: --host-only (needs a device)";
    return r;
  }
  // The restorer: shareable memory the size of the server's image, the file
  // uploaded into it, an fd exported.
  if (Status rel = c.w->Release(); !rel.ok()) {
    r.error = rel.ToString();
    return r;
  }
  auto sw = gpu::ShareableWeights::Create(*c.dev, c.w->image_bytes());
  if (!sw.ok()) {
    r.error = sw.status().ToString();
    return r;
  }
  const int fd = ::open(c.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    r.error = ErrnoError("open " + c.path, errno).ToString();
    return r;
  }
  auto up = gpu::UploadFromFile(*c.dev, fd, {{0, c.size, sw->base()}}, c.o);
  ::close(fd);
  r = FromStats("handoff", up);
  if (!up.ok()) return r;
  auto exported = sw->ExportFd();
  if (!exported.ok()) {
    r.error = exported.status().ToString(), r.measured = false;
    return r;
  }
  // The server: import and map at its own reserved addresses, in another
  // process (what a restored server does), and here with DeviceWeights.
  auto child = ImportInChild(c.a, *exported, c.w->image_bytes(), c.path);
  const auto ti = std::chrono::steady_clock::now();
  Status adopt = c.w->AdoptShareable(*exported);
  const double ms = Seconds(ti) * 1e3;
  ::close(*exported);
  sw->Reset();  // the restorer lets go; the memory lives on in the importer
  if (adopt.ok()) adopt = CheckSample(*c.dev, c.w->base(), c.path, c.size);
  if (!adopt.ok()) {
    r.error = adopt.ToString(), r.measured = false;
    return r;
  }
  r.extra["import_same_process_ms"] = ms;
  if (child.ok()) {
    *import_ms = *child;
    r.extra["import_ms"] = *child;
    r.extra["import_where"] = "another process";
  } else {
    *import_ms = ms;
    r.extra["import_ms"] = ms;
    r.extra["import_where"] = "this process";
    r.extra["import_child_error"] = child.status().ToString();
  }
  return r;
}

// --weights, else a generated file (`generated` holds it).
Status MakeWeightsFile(const GpuBenchArgs& a, std::string* path, TempFile& generated) {
  *path = a.weights;
  if (!path->empty()) return Status();
  *path = a.workdir + "/hotboot-bench-gpu." + std::to_string(::getpid());
  HB_RETURN_IF_ERROR(generated.Claim(*path));
  return GenerateWeightsFile(*path, static_cast<uint64_t>(a.size_mib) << 20);
}

std::vector<std::string> SplitSources(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

void PrintRow(const SourceRow& r, double ceiling) {
  const std::string label = "source " + r.source + (r.source == "huge_tmpfs" ? " (" + r.mode + ")" : "");
  if (r.measured) {
    const double vs = ceiling > 0 ? r.gbps / ceiling : 0;
    std::printf("%-34s %.2f GB/s (%.0f%% of pinned, target 80%%: %s), mode %s\n", label.c_str(), r.gbps, 100 * vs,
                vs >= 0.8 ? "met" : "missed", r.mode.c_str());
  }
  if (!r.error.empty()) std::printf("%-34s %s\n", label.c_str(), r.error.c_str());
  for (const auto& [k, v] : r.extra.items()) {
    std::printf("  %-32s %s\n", k.c_str(), v.dump().c_str());
  }
}

int RunBenchGpu(const GpuBenchArgs& a) {
  if (a.handoff_fd >= 0) return RunHandoffChild(a);
  const std::vector<std::string> sources = SplitSources(a.sources);
  auto wanted = [&](const char* s) { return std::find(sources.begin(), sources.end(), s) != sources.end(); };
  // Its files and directories are this job's temporaries; first, it sweeps
  // what killed benches, builds and restores left.
  host::JobOptions jo;
  jo.kind = "bench-gpu";
  auto job = host::Job::Start(jo);
  if (!job.ok()) return Fail(job.status().Prefixed("bench gpu"));
  // Before any thread starts (the device's included), so that all of them
  // see the tmpfs and no other process does.
  const Status mount_ns = wanted("huge_tmpfs") ? EnterPrivateMountNamespace() : Status();
  std::unique_ptr<gpu::Device> device;
  if (!a.host_only) {
    auto dev = gpu::OpenCudaDevice(a.device, a.streams);
    if (!dev.ok()) return Fail(dev.status().Prefixed("bench gpu needs a CUDA device"));
    device = std::move(dev).value();
  }
  std::string path;
  TempFile generated(job->get());
  Note(a.weights.empty() ? "generating " + HumanBytes(static_cast<uint64_t>(a.size_mib) << 20) + " of weights in " +
                              a.workdir
                         : "weights " + a.weights);
  if (Status m = MakeWeightsFile(a, &path, generated); !m.ok()) return Fail(m);
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec || size == 0) return Fail(NotFound("weights file " + path + " is missing or empty"));
  {  // warm the page cache: the upload reads what a restore just extracted
    std::ifstream in(path, std::ios::binary);
    std::vector<char> buf(8 << 20);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    }
  }
  gpu::UploadOptions o;
  o.chunk_bytes = a.chunk_mib << 20;
  o.buffers = a.buffers;
  o.readers = a.readers;
  gpu::ParseReadMode(a.mode, &o.mode);  // checked by the option

  double ceiling = 0;
  json host_copy = json::object(), upload = json::object(), sweep = json::array();
  std::optional<gpu::DeviceWeights> w;
  gpu::UploadStats up;
  double best = 0, ratio = 0;
  if (device) {
    gpu::Device& dev = *device;
    Note("measuring pinned host-to-device bandwidth on " + dev.Name());
    auto c = PinnedH2D(dev, std::min<uint64_t>(size, 1ull << 30), o.chunk_bytes, a.repeat);
    if (!c.ok()) return Fail(c.status());
    ceiling = *c;
    for (int threads : {1, 8, 16}) {
      auto hc = HostCopy(dev, std::min<uint64_t>(size, 1ull << 30), threads, a.repeat);
      if (!hc.ok()) return Fail(hc.status());
      host_copy[std::to_string(threads)] = *hc;
    }
    Note("uploading " + HumanBytes(size) + " of weights " + std::to_string(a.repeat) + " times");
    auto loaded = gpu::DeviceWeights::Load(dev, path, {0}, {size}, o);
    if (!loaded.ok()) return Fail(loaded.status());
    w = std::move(loaded).value();
    auto bu = BestUpload(*w, path, o, a.repeat);
    if (!bu.ok()) return Fail(bu.status());
    up = *bu;
    best = up.GBps();
    ratio = ceiling > 0 ? best / ceiling : 0;
    upload = StatsJson(up, o);
    if (a.sweep) {
      for (auto mode : gpu::kReadModes) {
        for (int readers : {8, 16}) {
          for (size_t chunk_mib : {1, 4, 16}) {
            gpu::UploadOptions so;
            so.mode = mode;
            so.readers = readers;
            so.chunk_bytes = chunk_mib << 20;
            so.buffers = 2 * readers;
            auto r = BestUpload(*w, path, so, a.repeat);
            if (!r.ok()) return Fail(r.status());
            sweep.push_back(StatsJson(*r, so));
            Note("sweep: " + r->mode + ", " + std::to_string(readers) + " readers, " + std::to_string(chunk_mib) +
                 " MiB chunks: " + std::to_string(r->GBps()) + " GB/s");
          }
        }
      }
    }
  }

  // One row per source, against the same ceiling.
  RowContext ctx{a, device.get(), path, size, o, w ? &*w : nullptr, **job, mount_ns};
  std::vector<SourceRow> rows;
  double import_ms = -1;
  for (const char* src : kSources) {
    if (!wanted(src)) continue;
    Note("source " + std::string(src));
    const std::string s = src;
    if (s == "page_cache") {
      SourceRow r;
      r.source = s;
      r.bytes = size;
      if (device) {
        r = FromStats(s, up);
      } else {
        r.error = "not run: --host-only (needs a device)";
      }
      rows.push_back(r);
    } else if (s == "huge_tmpfs") {
      for (auto& r : RowHugeTmpfs(ctx)) rows.push_back(r);
    } else if (s == "direct") {
      rows.push_back(RowDirect(ctx));
    } else if (s == "snapshot") {
      rows.push_back(RowSnapshot(ctx));
    } else if (s == "handoff") {
      rows.push_back(RowHandoff(ctx, &import_ms));
    }
  }
  json rows_json = json::array();
  for (const auto& r : rows) rows_json.push_back(RowJson(r, ceiling));

  if (a.json_out) {
    json j;
    if (device) {
      j = {{"device", device->Name()},   {"weights_bytes", size},      {"pinned_h2d_GBps", ceiling},
           {"upload_GBps", best},        {"upload_vs_pinned", ratio}, {"streams", device->Streams()},
           {"upload", upload}, {"host_copy_GBps_by_threads", host_copy}};
      if (a.sweep) j["sweep"] = sweep;
    } else {
      j = {{"device", nullptr}, {"host_only", true}, {"weights_bytes", size}};
    }
    j["sources"] = rows_json;
    j["handoff_import_ms"] = import_ms >= 0 ? json(import_ms) : json(nullptr);
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  if (device) {
    std::printf("%-34s %s\n", "device", device->Name().c_str());
    std::printf("%-34s %s\n", "weights", HumanBytes(size).c_str());
    std::printf("%-34s %.2f GB/s\n", "pinned host->device (ceiling)", ceiling);
    for (const auto& [threads, gbps] : host_copy.items()) {
      std::printf("%-34s %.2f GB/s\n", ("host memcpy to pinned, " + threads + " threads").c_str(), gbps.get<double>());
    }
    std::printf("%-34s %.2f GB/s (%.0f%% of the ceiling)\n", "weights upload (file->device)", best, 100 * ratio);
    std::printf("%-34s %.1f ms for %d buffers (overlapped)\n", "  pinned staging allocation", up.staging_seconds * 1e3,
                up.staging_buffers);
    std::printf("%-34s %.2f GB/s per reader, %d readers\n", "  file reads",
                upload["read_GBps_per_reader"].get<double>(), o.readers);
    std::printf("%-34s %.1f ms\n", "  waiting for copies", up.copy_wait_seconds * 1e3);
    for (const auto& r : sweep) {
      std::printf("  sweep: %-9s %2d readers, %3zu MiB chunks: %.2f GB/s\n", r["mode"].get<std::string>().c_str(),
                  r["readers"].get<int>(), r["chunk_bytes"].get<size_t>() >> 20, r["upload_GBps"].get<double>());
    }
  } else {
    std::printf("%-34s %s\n", "device", "none (--host-only)");
    std::printf("%-34s %s\n", "weights", HumanBytes(size).c_str());
  }
  for (const auto& r : rows) PrintRow(r, ceiling);
  if (import_ms >= 0) std::printf("%-34s %.2f ms\n", "handoff import+map", import_ms);
  return kExitOk;
}

}  // namespace

void AddBenchGpu(CLI::App& bench, std::function<int()>* run) {
  auto a = std::make_shared<GpuBenchArgs>();
  CLI::App* g = bench.add_subcommand(
      "gpu", "Weight upload to the GPU (cooperative restore) vs the pinned host-to-device bandwidth");
  g->footer(
      "Measures the pinned host->device copy bandwidth (1 GiB or the file's size, in chunks over\n"
      "every stream: the ceiling for an upload from host memory, which the upload can at best\n"
      "reach) and host memcpy into pinned memory on 1, 8 and 16 threads (the ceiling of the\n"
      "staging copy), then uploads a weights file (page cache warm, as right after a restore\n"
      "extracted it) with DeviceWeights: parallel reads into pinned staging buffers, copies on\n"
      "several streams, into one reserved device range; best of --repeat. Then one row per\n"
      "--sources entry, each with GB/s and its ratio to the pinned ceiling (target >= 0.80):\n"
      "page_cache, huge_tmpfs, direct, snapshot (with the host decode rate alone) and handoff\n"
      "(with the import+map time). Needs a CUDA GPU, except with --host-only. --size-mib 16384\n"
      "is an 8B-class model (the file is generated in parallel; the rows need about 3x its size\n"
      "in memory and 1x on --disk-dir). Killed, it leaves nothing: the tmpfs is mounted in a mount\n"
      "namespace of the bench's own, and its files are removed by its janitor (or the next run).");
  g->add_option("--weights", a->weights, "Weights file to upload (default: --size-mib of random bytes in --workdir)");
  g->add_option("--size-mib", a->size_mib, "Size of the generated file")->check(CLI::Range(1, 1 << 20));
  g->add_option("--device", a->device, "CUDA device ordinal");
  g->add_option("--streams", a->streams, "Copy streams")->check(CLI::Range(1, 64));
  g->add_option("--chunk-mib", a->chunk_mib, "Bytes per read and copy, MiB")->check(CLI::Range(1, 1024));
  g->add_option("--buffers", a->buffers, "Pinned staging buffers")->check(CLI::Range(1, 256));
  g->add_option("--readers", a->readers, "Reader threads")->check(CLI::Range(1, 256));
  g->add_option("--repeat", a->repeat, "Runs; the fastest counts")->check(CLI::Range(1, 100));
  g->add_option("--workdir", a->workdir, "Where the generated file goes");
  g->add_flag("--sweep", a->sweep, "Also try every --mode with 8 and 16 readers and 1, 4, 16 MiB chunks (buffers: two per reader)");
  g->add_option("--mode", a->mode,
                "How bytes reach the copy engine: pread or mmap (into pinned staging), populate (mmap, "
                "pages faulted in per chunk), register (page-lock the file's pages, no staging), direct "
                "(O_DIRECT reads into pinned staging)")
      ->check(CLI::IsMember({"pread", "mmap", "populate", "register", "direct"}));
  g->add_option("--disk-dir", a->disk_dir,
                "A directory on disk: the direct row's copy of the file (read with O_DIRECT after dropping it "
                "from the page cache) and the huge_tmpfs row's mount point");
  g->add_option("--sources", a->sources,
                "Rows to measure, comma-separated: page_cache (the file in the page cache, --mode), huge_tmpfs "
                "(copied to a tmpfs mounted with huge=always; mmap and register modes; needs root), direct "
                "(O_DIRECT from --disk-dir), snapshot (a snapshot section decoded straight into the staging "
                "buffers; also the host decode rate alone), handoff (shareable memory uploaded, exported and "
                "imported: the import+map time); empty: none")
      ->check([](const std::string& v) -> std::string {
        for (const auto& s : SplitSources(v)) {
          if (std::find(std::begin(kSources), std::end(kSources), s) == std::end(kSources)) {
            return "unknown source '" + s + "' (page_cache, huge_tmpfs, direct, snapshot, handoff)";
          }
        }
        return "";
      });
  g->add_flag("--host-only", a->host_only,
              "No device: generate the file, write and decode the snapshot, mount/fill/unmount the tmpfs, read "
              "with O_DIRECT; rows that need the GPU say so");
  g->add_flag("--json", a->json_out, "Print the result as JSON");
  // The handoff row's importing process (ImportInChild); not for people.
  g->add_option("--handoff-fd", a->handoff_fd)->group("")->check(CLI::Range(0, 1 << 20));
  g->add_option("--handoff-bytes", a->handoff_bytes)->group("");
  // For the tests (tests/tools/bench_gpu_test.cpp): SIGSTOP once the tmpfs is mounted.
  g->add_flag("--stop-when-mounted", a->stop_when_mounted)->group("");
  *run = [a, g]() { return g->parsed() ? RunBenchGpu(*a) : -1; };
}

}  // namespace hotboot::cli
