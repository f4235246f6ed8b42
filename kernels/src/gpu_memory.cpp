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
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "hotboot/gpu_memory.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif

namespace hotboot::gpu {
namespace {

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

// Fills piece k's bytes somewhere in a staging buffer and says where they
// start (the direct mode reads an aligned span around them).
using StagedFill = std::function<Result<size_t>(size_t piece, void* buffer)>;

// The staging pipeline behind UploadPieces and UploadFromFile (see
// UploadPieces in the header). `where(k)` names piece k in a copy error.
Result<UploadStats> RunStaged(Device& dev, const std::vector<Piece>& pieces, size_t buffer_bytes,
                              const StagedFill& fill, const std::function<std::string(size_t)>& where,
                              const UploadOptions& opts, UploadStats st) {
  const auto t0 = std::chrono::steady_clock::now();
  if (pieces.empty()) return st;
  const int nbuf = static_cast<int>(std::min<size_t>(static_cast<size_t>(opts.buffers), pieces.size()));
  const int nreaders = static_cast<int>(std::min<size_t>(static_cast<size_t>(opts.readers), pieces.size()));
  std::vector<void*> buffers(static_cast<size_t>(nbuf), nullptr);
  Channel<int> free_buffers;
  struct Filled {
    int buffer;
    size_t piece;
    size_t start;  // where the piece's bytes start in the buffer
  };
  Channel<Filled> staged;
  std::atomic<size_t> next{0};
  std::atomic<int> allocated{0};
  FirstFailure failure;
  std::atomic<bool>& stop = failure.stop;
  auto fail = [&](Status s) { failure.Fail(std::move(s)); };

  // Pinning host memory is slow (the OS locks and maps every page), so the
  // staging buffers are allocated one by one beside the pipeline: the first
  // fill starts as soon as the first buffer exists. Fewer buffers than asked
  // for is only slower; none is an error.
  std::thread allocator([&] {
    const auto ta = std::chrono::steady_clock::now();
    for (int i = 0; i < nbuf && !stop; ++i) {
      auto b = dev.AllocPinned(buffer_bytes);
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

  // Readers: a free buffer, the next piece, a fill, hand it on.
  std::atomic<int> readers_left{nreaders};
  std::vector<double> read_seconds(static_cast<size_t>(nreaders), 0);
  std::vector<std::thread> readers;
  for (int t = 0; t < nreaders; ++t) {
    readers.emplace_back([&, t] {
      for (;;) {
        int b;
        if (stop || !free_buffers.Pop(&b)) break;
        const size_t k = next.fetch_add(1);
        if (k >= pieces.size() || stop) {
          free_buffers.Push(b);
          break;
        }
        const auto tr = std::chrono::steady_clock::now();
        Result<size_t> start = fill(k, buffers[static_cast<size_t>(b)]);
        read_seconds[static_cast<size_t>(t)] += Since(tr);
        if (!start.ok()) {
          fail(start.status());
          free_buffers.Push(b);
          break;
        }
        staged.Push({b, k, *start});
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
  Filled f;
  while (staged.Pop(&f)) {
    if (stop) {
      free_buffers.Push(f.buffer);
      continue;
    }
    const Piece& p = pieces[f.piece];
    const int stream = static_cast<int>(issued++ % static_cast<size_t>(streams));
    const char* src = static_cast<const char*>(buffers[static_cast<size_t>(f.buffer)]) + f.start;
    Status cs = dev.CopyToDeviceAsync(p.dst, src, p.size, stream);
    auto ev = cs.ok() ? dev.Record(stream) : Result<int>(cs);
    if (!ev.ok()) {
      fail(ev.status().Prefixed("copying weights to the device (" + where(f.piece) + ")"));
      free_buffers.Push(f.buffer);
      continue;
    }
    in_flight.push_back({f.buffer, *ev});
    // Keep readers fed: retire once no more than half the readers' worth of
    // the buffers allocated so far is left to them. While some buffer is not
    // in flight a reader holds it or will, so the copier never waits for a
    // fill that cannot come.
    if (static_cast<int>(in_flight.size()) >= std::max(1, allocated.load() - nreaders / 2)) retire_oldest();
  }
  while (!in_flight.empty()) retire_oldest();
  stop = true;  // the allocator stops early when the work is done before it
  allocator.join();
  free_buffers.Close();
  for (auto& t : readers) t.join();
  // A copy whose marker could not be recorded may still read its buffer.
  if (!failure.status.ok()) dev.Sync();
  for (void* b : buffers) {
    if (b) dev.FreePinned(b, buffer_bytes);
  }
  if (!failure.status.ok()) return failure.status;
  for (double r : read_seconds) st.read_seconds += r;
  st.seconds = Since(t0);
  return st;
}

// O_DIRECT reads need page-aligned offsets, lengths and buffers (the
// logical block size, 512 or 4096, divides a page).
constexpr size_t kDirectAlign = 4096;

// The file reopened with O_DIRECT through /proc/self/fd: its own open file
// description, so the caller's fd keeps its flags. Fails (with the reason)
// where the filesystem refuses O_DIRECT at open or at the first read.
struct DirectFile {
  int fd = -1;
  ~DirectFile() {
    if (fd >= 0) ::close(fd);
  }
};

Status OpenDirect(int fd, DirectFile* d) {
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  d->fd = ::open(proc.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (d->fd < 0) return ErrnoError("open " + proc + " with O_DIRECT", errno);
  // Some filesystems accept the open and refuse the reads: probe one block.
  void* probe = std::aligned_alloc(kDirectAlign, kDirectAlign);
  if (!probe) return Internal("out of memory for an O_DIRECT probe");
  ssize_t r;
  do {
    r = ::pread(d->fd, probe, kDirectAlign, 0);
  } while (r < 0 && errno == EINTR);
  const int err = errno;
  std::free(probe);
  if (r < 0) return ErrnoError("O_DIRECT read of " + proc, err);
  return Status();
}

// Reads [off, off + n) of the O_DIRECT file into buf (page-aligned, with
// room for the aligned span around it); returns where the bytes start.
Result<size_t> ReadDirect(int dfd, char* buf, uint64_t off, size_t n) {
  const uint64_t lo = off / kDirectAlign * kDirectAlign;
  const uint64_t need = off + n - lo;  // bytes from lo that must arrive
  const size_t span = AlignUp(static_cast<size_t>(need), kDirectAlign);
  size_t got = 0;
  while (got < need) {
    ssize_t r = ::pread(dfd, buf + got, span - got, static_cast<off_t>(lo + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("O_DIRECT read of weights at byte " + std::to_string(lo + got), errno);
    if (r == 0) {
      return Truncated("weights file ends at byte " + std::to_string(lo + got) + ", before the tensors do");
    }
    got += static_cast<size_t>(r);
  }
  return static_cast<size_t>(off - lo);
}

}  // namespace

Result<UploadStats> UploadPieces(Device& dev, const std::vector<Piece>& pieces, size_t max_piece_bytes,
                                 const FillFn& fill, const UploadOptions& opts) {
  if (max_piece_bytes == 0 || opts.buffers < 1 || opts.readers < 1) {
    return InvalidArgument("upload options: piece size, buffers and readers must be positive");
  }
  UploadStats st;
  st.mode = "pieces";
  for (size_t k = 0; k < pieces.size(); ++k) {
    if (pieces[k].size > max_piece_bytes) {
      return InvalidArgument("upload piece " + std::to_string(k) + " has " + std::to_string(pieces[k].size) +
                             " bytes, more than the staging buffers' " + std::to_string(max_piece_bytes));
    }
    st.bytes += pieces[k].size;
  }
  auto where = [&](size_t k) { return "piece " + std::to_string(k) + " of " + std::to_string(pieces.size()); };
  StagedFill staged = [&](size_t k, void* buf) -> Result<size_t> {
    HB_RETURN_IF_ERROR(fill(k, buf).Prefixed(where(k)));
    return size_t{0};
  };
  return RunStaged(dev, pieces, max_piece_bytes, staged, where, opts, st);
}

UploadOptions SectionUploadOptions() {
  UploadOptions o;
  o.readers = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  o.buffers = 2 * o.readers;
  return o;
}

const char* ReadModeName(UploadOptions::ReadMode m) {
  switch (m) {
    case UploadOptions::ReadMode::kPread: return "pread";
    case UploadOptions::ReadMode::kMmap: return "mmap";
    case UploadOptions::ReadMode::kMmapPopulate: return "populate";
    case UploadOptions::ReadMode::kRegister: return "register";
    case UploadOptions::ReadMode::kDirect: return "direct";
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
  // Pieces end at multiples of chunk_bytes in the file: aligned reads for
  // the direct mode, whatever the regions' offsets.
  std::vector<Piece> pieces;
  std::vector<uint64_t> piece_offsets;
  UploadStats st;
  for (const auto& r : regions) {
    for (uint64_t off = r.file_offset, end = r.file_offset + r.size; off < end;) {
      const uint64_t next = std::min<uint64_t>((off / opts.chunk_bytes + 1) * opts.chunk_bytes, end);
      pieces.push_back({next - off, r.dst + (off - r.file_offset)});
      piece_offsets.push_back(off);
      off = next;
    }
    st.bytes += r.size;
  }
  if (pieces.empty()) return st;

  // The mapped modes read through a mapping of the whole file; without one
  // (mmap refused) the readers fall back to pread. The direct mode reads a
  // second, O_DIRECT description of the file; refused, pread.
  using Mode = UploadOptions::ReadMode;
  FileMapping map;
  DirectFile direct;
  if (opts.mode == Mode::kDirect) {
    if (Status d = OpenDirect(fd, &direct); !d.ok()) {
      st.mode = "pread (O_DIRECT refused: " + d.message() + ")";
      if (direct.fd >= 0) ::close(direct.fd), direct.fd = -1;
    } else {
      st.mode = "direct";
    }
  } else if (opts.mode != Mode::kPread && MapFile(fd, &map).ok()) {
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
  // Direct reads land an aligned span: room for a block before and after.
  const size_t buffer_bytes = direct.fd >= 0 ? AlignUp(opts.chunk_bytes, kDirectAlign) + 2 * kDirectAlign
                                             : opts.chunk_bytes;
  StagedFill fill = [&](size_t k, void* dst) -> Result<size_t> {
    const uint64_t off = piece_offsets[k];
    const size_t n = static_cast<size_t>(pieces[k].size);
    if (direct.fd >= 0 && reinterpret_cast<uintptr_t>(dst) % kDirectAlign == 0) {
      return ReadDirect(direct.fd, static_cast<char*>(dst), off, n);
    }
    if (!map.ok()) {
      HB_RETURN_IF_ERROR(ReadFully(fd, dst, n, off));
      return size_t{0};
    }
    const char* src = map.at(off);
    if (populate) {
      // One call faults in the piece's pages; an older kernel (EINVAL) just
      // takes the faults during the copy.
      const uintptr_t lo = reinterpret_cast<uintptr_t>(src) / page * page;
      ::madvise(reinterpret_cast<void*>(lo), reinterpret_cast<uintptr_t>(src) + n - lo, MADV_POPULATE_READ);
    }
    std::memcpy(dst, src, n);
    return size_t{0};
  };
  auto where = [&](size_t k) { return "byte " + std::to_string(piece_offsets[k]) + " of the weights file"; };
  return RunStaged(dev, pieces, buffer_bytes, fill, where, opts, st);
}

DeviceWeights::~DeviceWeights() { Reset(); }

DeviceWeights::DeviceWeights(DeviceWeights&& o) noexcept { *this = std::move(o); }

DeviceWeights& DeviceWeights::operator=(DeviceWeights&& o) noexcept {
  if (this != &o) {
    Reset();
    dev_ = o.dev_, base_ = o.base_, reserved_ = o.reserved_, bytes_ = o.bytes_, resident_ = o.resident_;
    adopted_ = o.adopted_, handle_ = o.handle_;
    sizes_ = std::move(o.sizes_), file_offsets_ = std::move(o.file_offsets_);
    last_ = o.last_;
    o.dev_ = nullptr, o.base_ = 0, o.reserved_ = 0, o.resident_ = false, o.adopted_ = false, o.handle_ = 0;
  }
  return *this;
}

void DeviceWeights::Reset() {
  if (!dev_ || !base_) return;
  Release();
  dev_->FreeReservation(base_, reserved_);
  dev_ = nullptr, base_ = 0, reserved_ = 0, resident_ = false;
}

Result<uint64_t> DeviceWeights::ImageBytes(size_t granularity, const std::vector<uint64_t>& file_offsets,
                                           const std::vector<uint64_t>& sizes) {
  if (file_offsets.size() != sizes.size()) return InvalidArgument("DeviceWeights: offsets and sizes differ in count");
  if (granularity == 0) return Internal("device reports a zero allocation granularity");
  uint64_t end = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > UINT64_MAX / 2 || file_offsets[i] > UINT64_MAX / 2 - sizes[i]) {
      return InvalidArgument("DeviceWeights: tensor " + std::to_string(i) + " ends past any file (offset " +
                             std::to_string(file_offsets[i]) + ", size " + std::to_string(sizes[i]) + ")");
    }
    end = std::max(end, file_offsets[i] + sizes[i]);
  }
  return AlignUp(std::max<uint64_t>(end, 1), granularity);
}

Result<DeviceWeights> DeviceWeights::Load(Device& dev, const std::string& path,
                                          const std::vector<uint64_t>& file_offsets,
                                          const std::vector<uint64_t>& sizes, const UploadOptions& opts) {
  DeviceWeights w;
  HB_ASSIGN_OR_RETURN(uint64_t image, ImageBytes(dev.Granularity(), file_offsets, sizes));
  for (uint64_t s : sizes) w.bytes_ += s;
  w.sizes_ = sizes;
  w.file_offsets_ = file_offsets;
  w.reserved_ = static_cast<size_t>(image);
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
  for (size_t i = 0; i < sizes_.size(); ++i) regions.push_back({file_offsets_[i], sizes_[i], base_ + file_offsets_[i]});
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
  if (adopted_) {
    adopted_ = false;
    HB_RETURN_IF_ERROR(dev_->ReleaseHandle(handle_).Prefixed("releasing the adopted weights' memory handle"));
  }
  return Status();
}

Result<UploadStats> DeviceWeights::Restore(const std::string& path, const UploadOptions& opts) {
  if (!dev_) return FailedPrecondition("no device weights to restore");
  if (resident_) return FailedPrecondition("device weights are still resident; Release them first");
  HB_ASSIGN_OR_RETURN(last_, MapAndUpload(path, opts));
  return last_;
}

Status DeviceWeights::AdoptShareable(int fd) {
  if (!dev_) return FailedPrecondition("no device weights to adopt memory for");
  if (resident_) return FailedPrecondition("device weights are still resident; Release them first");
  HB_ASSIGN_OR_RETURN(uint64_t h, dev_->ImportFd(fd));
  if (Status s = dev_->MapHandle(base_, reserved_, h); !s.ok()) {
    dev_->ReleaseHandle(h);
    return s.Prefixed("mapping the restorer's weights (" + std::to_string(reserved_) + " bytes) at the weights' addresses");
  }
  handle_ = h, adopted_ = true, resident_ = true;
  last_ = UploadStats();
  last_.bytes = bytes_;
  last_.mode = "adopted";
  return Status();
}

ShareableWeights::ShareableWeights(ShareableWeights&& o) noexcept { *this = std::move(o); }

ShareableWeights& ShareableWeights::operator=(ShareableWeights&& o) noexcept {
  if (this != &o) {
    Reset();
    dev_ = o.dev_, base_ = o.base_, bytes_ = o.bytes_, handle_ = o.handle_, has_handle_ = o.has_handle_;
    mapped_ = o.mapped_;
    o.dev_ = nullptr, o.base_ = 0, o.bytes_ = 0, o.handle_ = 0, o.has_handle_ = false, o.mapped_ = false;
  }
  return *this;
}

Result<ShareableWeights> ShareableWeights::Create(Device& dev, uint64_t bytes) {
  const size_t g = dev.Granularity();
  if (g == 0) return Internal("device reports a zero allocation granularity");
  if (bytes == 0 || bytes > UINT64_MAX / 2) return InvalidArgument("shareable weights of " + std::to_string(bytes) + " bytes");
  ShareableWeights w;
  w.bytes_ = AlignUp(bytes, g);
  HB_ASSIGN_OR_RETURN(w.base_, dev.Reserve(w.bytes_));
  w.dev_ = &dev;
  auto h = dev.CreateShareable(w.bytes_);
  if (!h.ok()) return h.status().Prefixed("shareable device memory for the weights");
  w.handle_ = *h, w.has_handle_ = true;
  HB_RETURN_IF_ERROR(dev.MapHandle(w.base_, w.bytes_, w.handle_).Prefixed("mapping shareable device memory"));
  w.mapped_ = true;
  return w;
}

Result<int> ShareableWeights::ExportFd() const {
  if (!dev_ || !has_handle_) return FailedPrecondition("no shareable weights to export");
  return dev_->ExportFd(handle_);
}

void ShareableWeights::Reset() {
  if (!dev_) return;
  if (mapped_) dev_->Unmap(base_, bytes_);
  if (has_handle_) dev_->ReleaseHandle(handle_);
  if (base_) dev_->FreeReservation(base_, bytes_);
  dev_ = nullptr, base_ = 0, bytes_ = 0, handle_ = 0, has_handle_ = false, mapped_ = false;
}

}  // namespace hotboot::gpu
