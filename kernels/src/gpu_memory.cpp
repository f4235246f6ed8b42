// The weight upload pipeline and the release/restore life of device weights
// (gpu_memory.h); device-independent, so the fake device tests all of it.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "hotboot/gpu_memory.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif

namespace hotboot::gpu {
namespace {

struct Chunk {
  uint64_t file_offset;
  size_t size;
  DevicePtr dst;
};

struct Staged {
  int buffer;
  size_t chunk;
};

// A queue that the readers and the copier hand buffers through.
template <typename T>
class Channel {
 public:
  void Push(T v) {
    {
      std::lock_guard l(mu_);
      q_.push_back(v);
    }
    cv_.notify_one();
  }
  // False once closed and drained.
  bool Pop(T* v) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    *v = q_.front();
    q_.pop_front();
    return true;
  }
  void Close() {
    {
      std::lock_guard l(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> q_;
  bool closed_ = false;
};

Status ReadFully(int fd, void* dst, size_t n, uint64_t off) {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("read weights at byte " + std::to_string(off), errno);
    if (r == 0) return Truncated("weights file ends at byte " + std::to_string(off) + ", before the tensors do");
    p += r, n -= static_cast<size_t>(r), off += static_cast<uint64_t>(r);
  }
  return Status();
}

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The first failure of a pipeline's threads; later ones add nothing. Once
// set, `stop` tells every thread to finish.
struct FirstFailure {
  std::mutex mu;
  Status status;
  std::atomic<bool> stop{false};
  void Fail(Status s) {
    std::lock_guard l(mu);
    if (status.ok()) status = std::move(s);
    stop = true;
  }
};

// A read-only shared mapping of the whole weights file.
struct FileMapping {
  void* p = MAP_FAILED;
  size_t n = 0;
  bool ok() const { return p != MAP_FAILED; }
  const char* at(uint64_t off) const { return static_cast<const char*>(p) + off; }
  ~FileMapping() {
    if (ok()) ::munmap(p, n);
  }
};

Status MapFile(int fd, FileMapping* m) {
  struct stat sb{};
  if (::fstat(fd, &sb) != 0) return ErrnoError("stat weights file", errno);
  if (sb.st_size == 0) return Truncated("weights file is empty");
  m->n = static_cast<size_t>(sb.st_size);
  m->p = ::mmap(nullptr, m->n, PROT_READ, MAP_SHARED, fd, 0);
  if (!m->ok()) return ErrnoError("mmap weights file", errno);
  return Status();
}

Status CheckCovers(const FileMapping& m, const std::vector<Region>& regions) {
  for (const auto& r : regions) {
    if (r.file_offset + r.size > m.n) {
      return Truncated("weights file ends at byte " + std::to_string(m.n) + ", before the tensors do");
    }
  }
  return Status();
}

// ReadMode::kRegister: readers page-lock page-aligned windows of the mapped
// file in turn and copy the regions' bytes in each straight from the page
// cache, then wait for their copies and unlock. kUnsupported (before any
// copy) when the first window cannot be registered: the caller stages.
Result<UploadStats> UploadRegistered(Device& dev, const FileMapping& map, const std::vector<Region>& regions,
                                     const UploadOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  UploadStats st;
  st.mode = "register";
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t window = AlignUp(std::max(opts.chunk_bytes, page), page);
  const size_t map_len = AlignUp(map.n, page);
  struct Piece {
    uint64_t off;
    size_t n;
    DevicePtr dst;
  };
  std::vector<std::vector<Piece>> windows((map.n + window - 1) / window);
  for (const auto& r : regions) {
    st.bytes += r.size;
    for (uint64_t off = r.file_offset, end = r.file_offset + r.size; off < end;) {
      const uint64_t w = off / window, wend = std::min<uint64_t>((w + 1) * window, end);
      windows[w].push_back({off, static_cast<size_t>(wend - off), r.dst + (off - r.file_offset)});
      off = wend;
    }
  }
  auto span = [&](size_t w) { return std::min(window, map_len - w * window); };
  // The probe: a device (or driver) that cannot register read-only host
  // memory says so here, before anything is copied.
  for (size_t w = 0; w < windows.size(); ++w) {
    if (windows[w].empty()) continue;
    Status probe = dev.RegisterHost(map.at(w * window), span(w));
    if (!probe.ok()) return Status(Code::kUnsupported, probe.message());
    HB_RETURN_IF_ERROR(dev.UnregisterHost(map.at(w * window)));
    break;
  }
  std::atomic<size_t> next{0};
  FirstFailure failure;
  auto fail = [&](Status s) { failure.Fail(std::move(s)); };
  const int streams = std::max(1, dev.Streams());
  std::vector<double> lock_s(static_cast<size_t>(opts.readers), 0), wait_s(static_cast<size_t>(opts.readers), 0);
  std::vector<std::thread> readers;
  for (int t = 0; t < opts.readers; ++t) {
    readers.emplace_back([&, t] {
      const int stream = t % streams;
      for (;;) {
        const size_t w = next.fetch_add(1);
        if (w >= windows.size() || failure.stop) break;
        if (windows[w].empty()) continue;
        const uint64_t base = w * window;
        const auto tl = std::chrono::steady_clock::now();
        Status s = dev.RegisterHost(map.at(base), span(w));
        lock_s[static_cast<size_t>(t)] += Since(tl);
        if (!s.ok()) {
          fail(s.Prefixed("page-locking the weights file at byte " + std::to_string(base)));
          break;
        }
        for (const Piece& p : windows[w]) {
          s = dev.CopyToDeviceAsync(p.dst, map.at(p.off), p.n, stream);
          if (!s.ok()) {
            fail(s.Prefixed("copying weights to the device at byte " + std::to_string(p.off)));
            break;
          }
        }
        // Whatever was queued must be done before the pages are unlocked.
        const auto tw = std::chrono::steady_clock::now();
        auto ev = dev.Record(stream);
        Status done = ev.ok() ? dev.Wait(*ev) : ev.status();
        if (!done.ok()) {
          fail(done.Prefixed("waiting for a weight copy"));
          dev.Sync();  // no marker to wait on: wait for everything
        }
        wait_s[static_cast<size_t>(t)] += Since(tw);
        Status u = dev.UnregisterHost(map.at(base));
        if (!u.ok()) fail(u.Prefixed("unlocking the weights file at byte " + std::to_string(base)));
        if (!s.ok() || !done.ok() || !u.ok()) break;
      }
    });
  }
  for (auto& t : readers) t.join();
  if (!failure.status.ok()) return failure.status;
  for (double v : lock_s) st.read_seconds += v;
  for (double v : wait_s) st.copy_wait_seconds += v;
  st.seconds = Since(t0);
  return st;
}

}  // namespace

const char* ReadModeName(UploadOptions::ReadMode m) {
  switch (m) {
    case UploadOptions::ReadMode::kPread: return "pread";
    case UploadOptions::ReadMode::kMmap: return "mmap";
    case UploadOptions::ReadMode::kMmapPopulate: return "populate";
    case UploadOptions::ReadMode::kRegister: return "register";
  }
  return "?";
}

bool ParseReadMode(const std::string& s, UploadOptions::ReadMode* m) {
  for (auto c : kReadModes) {
    if (s == ReadModeName(c)) {
      *m = c;
      return true;
    }
  }
  return false;
}

Result<UploadStats> UploadFromFile(Device& dev, int fd, const std::vector<Region>& regions,
                                   const UploadOptions& opts) {
  if (opts.chunk_bytes == 0 || opts.buffers < 1 || opts.readers < 1) {
    return InvalidArgument("upload options: chunk_bytes, buffers and readers must be positive");
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Chunk> chunks;
  UploadStats st;
  for (const auto& r : regions) {
    for (uint64_t done = 0; done < r.size; done += opts.chunk_bytes) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(opts.chunk_bytes, r.size - done));
      chunks.push_back({r.file_offset + done, n, r.dst + done});
    }
    st.bytes += r.size;
  }
  if (chunks.empty()) return st;

  const int nbuf = static_cast<int>(std::min<size_t>(static_cast<size_t>(opts.buffers), chunks.size()));
  std::vector<void*> buffers(static_cast<size_t>(nbuf), nullptr);
  Channel<int> free_buffers;
  Channel<Staged> staged;
  std::atomic<size_t> next{0};
  std::atomic<int> allocated{0};
  FirstFailure failure;
  std::atomic<bool>& stop = failure.stop;
  auto fail = [&](Status s) { failure.Fail(std::move(s)); };

  // Every mode but pread reads through a mapping of the whole file; without
  // one (mmap refused) the readers fall back to pread.
  using Mode = UploadOptions::ReadMode;
  FileMapping map;
  if (opts.mode != Mode::kPread && MapFile(fd, &map).ok()) {
    HB_RETURN_IF_ERROR(CheckCovers(map, regions));
    if (opts.mode == Mode::kRegister) {
      auto r = UploadRegistered(dev, map, regions, opts);
      if (r.ok() || r.status().code() != Code::kUnsupported) return r;
      st.mode = "mmap (register refused: " + r.status().message() + ")";
    }
  }
  if (st.mode.empty()) st.mode = map.ok() ? (opts.mode == Mode::kMmapPopulate ? "populate" : "mmap") : "pread";
  const bool populate = opts.mode == Mode::kMmapPopulate;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  auto read_chunk = [&](void* dst, const Chunk& c) -> Status {
    if (!map.ok()) return ReadFully(fd, dst, c.size, c.file_offset);
    const char* src = map.at(c.file_offset);
    if (populate) {
      // One call faults in the chunk's pages; an older kernel (EINVAL) just
      // takes the faults during the copy.
      const uintptr_t lo = reinterpret_cast<uintptr_t>(src) / page * page;
      ::madvise(reinterpret_cast<void*>(lo), reinterpret_cast<uintptr_t>(src) + c.size - lo, MADV_POPULATE_READ);
    }
    std::memcpy(dst, src, c.size);
    return Status();
  };

  // Pinning host memory is slow (the OS locks and maps every page), so the
  // staging buffers are allocated one by one beside the pipeline: the first
  // read starts as soon as the first buffer exists. Fewer buffers than asked
  // for is only slower; none is an error.
  std::thread allocator([&] {
    const auto ta = std::chrono::steady_clock::now();
    for (int i = 0; i < nbuf && !stop; ++i) {
      auto b = dev.AllocPinned(opts.chunk_bytes);
      if (!b.ok()) {
        if (i == 0) fail(b.status().Prefixed("pinned staging buffer"));
        break;
      }
      buffers[static_cast<size_t>(i)] = *b;
      allocated.fetch_add(1);
      free_buffers.Push(i);
    }
    st.staging_seconds = Since(ta);
    st.staging_buffers = allocated.load();
    if (allocated.load() == 0) free_buffers.Close();  // nothing will ever come: readers stop
  });

  // Readers: a free buffer, the next chunk, a read, hand it on.
  std::atomic<int> readers_left{opts.readers};
  std::vector<double> read_seconds(static_cast<size_t>(opts.readers), 0);
  std::vector<std::thread> readers;
  for (int t = 0; t < opts.readers; ++t) {
    readers.emplace_back([&, t] {
      for (;;) {
        int b;
        if (stop || !free_buffers.Pop(&b)) break;
        const size_t c = next.fetch_add(1);
        if (c >= chunks.size() || stop) {
          free_buffers.Push(b);
          break;
        }
        const auto tr = std::chrono::steady_clock::now();
        Status s = read_chunk(buffers[static_cast<size_t>(b)], chunks[c]);
        read_seconds[static_cast<size_t>(t)] += Since(tr);
        if (!s.ok()) {
          fail(s);
          free_buffers.Push(b);
          break;
        }
        staged.Push({b, c});
      }
      if (--readers_left == 0) staged.Close();
    });
  }

  // The copier (this thread): copies round-robin over the streams; a buffer
  // goes back to the readers once the event after its copy has passed.
  struct InFlight {
    int buffer;
    int event;
  };
  std::deque<InFlight> in_flight;
  const int streams = std::max(1, dev.Streams());
  size_t issued = 0;
  auto retire_oldest = [&]() {
    InFlight f = in_flight.front();
    in_flight.pop_front();
    const auto tw = std::chrono::steady_clock::now();
    Status s = dev.Wait(f.event);
    st.copy_wait_seconds += Since(tw);
    if (!s.ok()) fail(s.Prefixed("waiting for a weight copy"));
    free_buffers.Push(f.buffer);
  };
  Staged s;
  while (staged.Pop(&s)) {
    if (stop) {
      free_buffers.Push(s.buffer);
      continue;
    }
    const Chunk& c = chunks[s.chunk];
    const int stream = static_cast<int>(issued++ % static_cast<size_t>(streams));
    Status cs = dev.CopyToDeviceAsync(c.dst, buffers[static_cast<size_t>(s.buffer)], c.size, stream);
    auto ev = cs.ok() ? dev.Record(stream) : Result<int>(cs);
    if (!ev.ok()) {
      fail(ev.status().Prefixed("copying weights to the device at byte " + std::to_string(c.file_offset)));
      free_buffers.Push(s.buffer);
      continue;
    }
    in_flight.push_back({s.buffer, *ev});
    // Keep readers fed: retire once no more than half the readers' worth of
    // the buffers allocated so far is left to them. While some buffer is not
    // in flight a reader holds it or will, so the copier never waits for a
    // read that cannot come.
    if (static_cast<int>(in_flight.size()) >= std::max(1, allocated.load() - opts.readers / 2)) retire_oldest();
  }
  while (!in_flight.empty()) retire_oldest();
  stop = true;  // the allocator stops early when the work is done before it
  allocator.join();
  free_buffers.Close();
  for (auto& t : readers) t.join();
  // A copy whose marker could not be recorded may still read its buffer.
  if (!failure.status.ok()) dev.Sync();
  for (void* b : buffers) {
    if (b) dev.FreePinned(b, opts.chunk_bytes);
  }
  if (!failure.status.ok()) return failure.status;
  for (double r : read_seconds) st.read_seconds += r;
  st.seconds = Since(t0);
  return st;
}

DeviceWeights::~DeviceWeights() { Reset(); }

DeviceWeights::DeviceWeights(DeviceWeights&& o) noexcept { *this = std::move(o); }

DeviceWeights& DeviceWeights::operator=(DeviceWeights&& o) noexcept {
  if (this != &o) {
    Reset();
    dev_ = o.dev_, base_ = o.base_, reserved_ = o.reserved_, bytes_ = o.bytes_, resident_ = o.resident_;
    offsets_ = std::move(o.offsets_), sizes_ = std::move(o.sizes_), file_offsets_ = std::move(o.file_offsets_);
    last_ = o.last_;
    o.dev_ = nullptr, o.base_ = 0, o.reserved_ = 0, o.resident_ = false;
  }
  return *this;
}

void DeviceWeights::Reset() {
  if (!dev_ || !base_) return;
  if (resident_) dev_->Unmap(base_, reserved_);
  dev_->FreeReservation(base_, reserved_);
  dev_ = nullptr, base_ = 0, reserved_ = 0, resident_ = false;
}

Result<DeviceWeights> DeviceWeights::Load(Device& dev, const std::string& path,
                                          const std::vector<uint64_t>& file_offsets,
                                          const std::vector<uint64_t>& sizes, const UploadOptions& opts) {
  if (file_offsets.size() != sizes.size()) return InvalidArgument("DeviceWeights: offsets and sizes differ in count");
  DeviceWeights w;
  const size_t g = dev.Granularity();
  if (g == 0) return Internal("device reports a zero allocation granularity");
  size_t total = 0;
  for (uint64_t s : sizes) {
    w.offsets_.push_back(total);
    total += AlignUp(static_cast<size_t>(s), g);
    w.bytes_ += s;
  }
  w.sizes_ = sizes;
  w.file_offsets_ = file_offsets;
  w.reserved_ = std::max(total, g);
  HB_ASSIGN_OR_RETURN(w.base_, dev.Reserve(w.reserved_));
  w.dev_ = &dev;
  HB_ASSIGN_OR_RETURN(w.last_, w.MapAndUpload(path, opts));
  return w;
}

Result<UploadStats> DeviceWeights::MapAndUpload(const std::string& path, const UploadOptions& opts) {
  HB_RETURN_IF_ERROR(dev_->Map(base_, reserved_).Prefixed("mapping device memory for the weights"));
  resident_ = true;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    Status s = ErrnoError("open weights " + path, errno);
    Release();
    return s;
  }
  std::vector<Region> regions;
  for (size_t i = 0; i < sizes_.size(); ++i) regions.push_back({file_offsets_[i], sizes_[i], base_ + offsets_[i]});
  auto st = UploadFromFile(*dev_, fd, regions, opts);
  ::close(fd);
  if (!st.ok()) {
    Release();  // never leave half-uploaded weights looking resident
    return st.status().Prefixed("uploading weights from " + path);
  }
  return st;
}

Status DeviceWeights::Release() {
  if (!dev_ || !resident_) return Status();
  HB_RETURN_IF_ERROR(dev_->Unmap(base_, reserved_).Prefixed("releasing the weights' device memory"));
  resident_ = false;
  return Status();
}

Result<UploadStats> DeviceWeights::Restore(const std::string& path, const UploadOptions& opts) {
  if (!dev_) return FailedPrecondition("no device weights to restore");
  if (resident_) return FailedPrecondition("device weights are still resident; Release them first");
  HB_ASSIGN_OR_RETURN(last_, MapAndUpload(path, opts));
  return last_;
}

}  // namespace hotboot::gpu
