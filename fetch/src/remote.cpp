// RemoteSnapshot: a snapshot read while it is fetched (fetch.h).
//
// The snapshot's bytes are a row of segments -- an artifact's layers (oci) or
// one segment for the whole file (https) -- each backed by a file mapped
// read-only: a blob from the node cache, or a sized temporary the workers
// write into. Segments are fetched in pieces (ranged requests, `piece` bytes)
// by `connections` workers; a read waits until the pieces under its bytes
// have arrived far enough, and asks for them first when nobody had.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "hotboot/cache.h"
#include "hotboot/fetch.h"
#include "hotboot/snapshot_format.h"

namespace hotboot::fetch {

using Clock = std::chrono::steady_clock;

std::pair<uint64_t, uint64_t> SectionSpan(const snapfile::SectionInfo& s) {
  const uint64_t end = s.chunks.empty()
                           ? s.offset + snapfile::kSectionFixed + s.name.size() + 8
                           : s.chunks.back().offset + snapfile::kChunkHeaderSize + s.chunks.back().stored_size;
  return {s.offset, end + snapfile::kSectionEndSize};
}

namespace {
Part MakePart(uint64_t offset, uint64_t size, std::vector<std::string> sections) {
  Part p;
  p.offset = offset;
  p.size = size;
  p.sections = std::move(sections);
  return p;
}
}  // namespace

std::vector<Part> PartsOf(const snapfile::SnapshotReader& r) {
  std::vector<const snapfile::SectionInfo*> secs;
  for (const auto& s : r.sections()) secs.push_back(&s);
  std::sort(secs.begin(), secs.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  std::vector<Part> parts;
  uint64_t cur = 0;
  std::vector<std::string> pending;
  for (const auto* s : secs) {
    const auto [b, e] = SectionSpan(*s);
    if (e - b < kOwnBlobMin) {
      pending.push_back(s->name);
      continue;
    }
    if (b > cur) parts.push_back(MakePart(cur, b - cur, std::move(pending)));
    pending.clear();
    Part own = MakePart(b, e - b, {s->name});
    own.own_section = true;
    own.content_hash = s->content_hash.Hex();
    parts.push_back(std::move(own));
    cur = e;
  }
  if (r.file_size() > cur) parts.push_back(MakePart(cur, r.file_size() - cur, std::move(pending)));
  return parts;
}

namespace {

struct Piece {
  uint64_t begin = 0, len = 0;  // within the segment
  uint64_t arrived = 0;         // bytes from begin that are written
  enum State { kIdle, kQueued, kRunning, kDone } state = kIdle;
};

struct Segment {
  uint64_t offset = 0, size = 0;
  std::string digest;  // oci: the blob's; https: empty
  int fd = -1;
  const char* map = nullptr;
  bool cached = false;  // a complete blob from the node cache
  bool temp = false;    // a temporary the workers fill
  PartialBlob partial;  // oci temporaries (NodeCache)
  BlobLock lock;
  std::vector<Piece> pieces;
  bool asked = false;  // any piece was ever asked for
  bool publishing = false, published = false;  // oci: put into the node cache as soon as complete
};

bool Retryable(const Status& s) { return s.code() == Code::kIo || s.code() == Code::kTimeout; }

}  // namespace

class RemoteSnapshot::Impl {
 public:
  ~Impl() {
    Stop();
    for (auto& s : segs_) {
      if (s.map) ::munmap(const_cast<char*>(s.map), s.size);
      if (s.partial.fd >= 0 && cache_) cache_->Discard(s.partial);
      else if (s.fd >= 0) ::close(s.fd);
    }
  }

  Status OpenOci(const std::string& ref_str, const FetchOptions& o) {
    opts_ = o;
    name_ = ref_str;
    stats_.source = "oci";
    HB_ASSIGN_OR_RETURN(OciRef ref, ParseOciRef(ref_str));
    HB_ASSIGN_OR_RETURN(registry_, Registry::Connect(ref, o.remote));
    HB_ASSIGN_OR_RETURN(auto mb, registry_->GetManifest(ref.reference()));
    HB_ASSIGN_OR_RETURN(OciManifest m, OciManifest::Parse(mb.bytes));
    const std::string what = ref_str + " (manifest " + mb.digest + ")";
    if (m.artifact_type != kArtifactType && m.config.media_type != kConfigType) {
      return Unsupported(what + " is not a hotboot snapshot: artifactType '" + m.artifact_type + "', config '" +
                         m.config.media_type + "' (expected " + kArtifactType + ")");
    }
    if (m.layers.empty() || m.layers.size() > kMaxParts) {
      return Corrupt(what + ": " + std::to_string(m.layers.size()) + " layers (1 .. " + std::to_string(kMaxParts) +
                     " expected)");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const Descriptor& d = m.layers[i];
      const std::string at = what + ": layers[" + std::to_string(i) + "]";
      if (d.media_type != kPartType) return Corrupt(at + ": media type '" + d.media_type + "', not " + kPartType);
      if (d.size == 0 || d.size > kMaxArtifactBytes - off) {
        return Corrupt(at + ": size " + std::to_string(d.size) + " is 0 or takes the artifact past " +
                       std::to_string(kMaxArtifactBytes) + " bytes");
      }
      auto a = d.annotations.find("org.hotboot.offset");
      if (a != d.annotations.end() && a->second != std::to_string(off)) {
        return Corrupt(at + ": annotation org.hotboot.offset says " + a->second + ", the layers before it add up to " +
                       std::to_string(off));
      }
      Segment s;
      s.offset = off;
      s.size = d.size;
      s.digest = d.digest;
      segs_.push_back(std::move(s));
      off += d.size;
    }
    size_ = off;
    stats_.resolved = mb.digest;
    manifest_digest_ = mb.digest;
    manifest_bytes_ = mb.bytes;
    HB_ASSIGN_OR_RETURN(cache_, NodeCache::Open(o.cache_dir));
    if (o.job) cache_->SetJob(o.job);
    // Recorded first: gc keeps the blobs a recorded reference lists.
    HB_RETURN_IF_ERROR(cache_->RecordRef(name_, manifest_digest_, manifest_bytes_));
    // In layer order, so that two fetches of overlapping artifacts never
    // wait on each other in a cycle.
    for (auto& s : segs_) HB_RETURN_IF_ERROR(Back(s));
    Start();
    return Status::Ok();
  }

  Status OpenHttp(const std::string& url, const FetchOptions& o) {
    opts_ = o;
    name_ = url;
    stats_.source = "https";
    stats_.resolved = url;
    HB_ASSIGN_OR_RETURN(file_, HttpFile::Open(url, o.remote));
    size_ = file_->size();
    if (size_ == 0 || size_ > kMaxArtifactBytes) {
      return Corrupt(url + ": " + std::to_string(size_) + " bytes is not the size of a snapshot");
    }
    // The whole file is one segment, in an unnamed file in the cache's tmp/
    // (O_TMPFILE: nothing is left behind, whatever ends this process).
    HB_ASSIGN_OR_RETURN(cache_, NodeCache::Open(o.cache_dir));
    Segment s;
    s.size = size_;
    const std::string tmp = cache_->dir() + "/tmp";
    s.fd = ::open(tmp.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (s.fd < 0) return ErrnoError("create a temporary file in " + tmp, errno);
    if (::ftruncate(s.fd, static_cast<off_t>(size_)) != 0) return ErrnoError("size a temporary in " + tmp, errno);
    s.temp = true;
    segs_.push_back(std::move(s));
    HB_RETURN_IF_ERROR(Map(segs_.back()));
    MakePieces(segs_.back());
    Start();
    return Status::Ok();
  }

  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }

  Status ReadAt(uint64_t offset, size_t n, char* out) {
    if (offset > size_ || n > size_ - offset) return Truncated(name_ + ": read past the end");
    while (n > 0) {
      Segment& s = SegmentAt(offset);
      const uint64_t in = offset - s.offset;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(n, s.size - in));
      HB_RETURN_IF_ERROR(Wait(s, in, take));
      std::memcpy(out, s.map + in, take);
      out += take;
      offset += take;
      n -= take;
    }
    return Status::Ok();
  }

  Result<const char*> View(uint64_t offset, size_t n) {
    if (offset > size_ || n > size_ - offset) return Truncated(name_ + ": read past the end");
    Segment& s = SegmentAt(offset);
    const uint64_t in = offset - s.offset;
    if (n > s.size - in) return static_cast<const char*>(nullptr);
    HB_RETURN_IF_ERROR(Wait(s, in, n));
    return s.map + in;
  }

  void Prefetch(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
    std::lock_guard lk(mu_);
    for (const auto& [b, e] : ranges) {
      for (auto& s : segs_) {
        const uint64_t lo = std::max(b, s.offset), hi = std::min(e, s.offset + s.size);
        if (lo < hi) ScheduleLocked(s, lo - s.offset, hi - s.offset, /*front=*/false);
      }
    }
    cv_.notify_all();
  }

  Status Finish() {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return !error_.ok() || Outstanding() == 0; });
      if (!error_.ok()) return error_;
    }
    Stop();
    HB_RETURN_IF_ERROR(publish_error_);
    stats_.fetch_ms = first_request_ms_ < 0 ? 0 : last_byte_ms_ - first_request_ms_;
    {
      std::lock_guard lk(mu_);
      for (const auto& s : segs_) {
        if (s.cached) stats_.bytes_from_cache += s.size;
        if (!s.asked && !s.cached) stats_.bytes_skipped += s.size;
      }
      finished_ = true;
    }
    for (auto& s : segs_) {
      if (s.published) ++stats_.blobs_published;
      if (!s.temp || s.digest.empty() || s.published) continue;
      const bool complete = std::all_of(s.pieces.begin(), s.pieces.end(), [](const Piece& p) { return p.state == Piece::kDone; });
      if (!complete) {
        // Never (or not wholly) needed: nothing half-fetched is kept.
        cache_->Discard(s.partial);
        s.fd = -1;
        s.partial.path.clear();
        s.lock = BlobLock();
        continue;
      }
      HB_RETURN_IF_ERROR(cache_->Publish(s.partial).Prefixed(name_));
      s.fd = s.partial.fd = -1;
      // Others waiting to fetch it find it now (our mapping stays valid
      // whatever happens to the name).
      s.lock = BlobLock();
      ++stats_.blobs_published;
    }
    return Status::Ok();
  }

  FetchStats Stats() {
    std::lock_guard lk(mu_);
    FetchStats s = stats_;
    s.size = size_;
    s.bytes_fetched = fetched_.load();
    if (!finished_) {
      // Before Finish (a restore reports at ready, before publishing): what
      // came from the cache so far, and what nobody asked for yet.
      for (const auto& seg : segs_) {
        if (seg.cached) s.bytes_from_cache += seg.size;
        if (!seg.asked && !seg.cached) s.bytes_skipped += seg.size;
      }
    }
    return s;
  }

 private:
  // A blob from the cache when it is there, else a temporary under the
  // blob's exclusive lock: one fetch per blob on the host (single flight).
  // While another process holds that lock, this one waits for a shared
  // lock, which is granted once that fetch published the blob (or gave it
  // up), and looks again. It never waits for the exclusive lock itself: that
  // queued it behind every running replica's shared lock on the published
  // blob, so N restores started at once on a fresh host stalled after the
  // first two until those replicas ended (found by `hotboot bench burst`).
  Status Back(Segment& s) {
    for (;;) {
      if (auto p = cache_->Find(s.digest)) return UseCached(s, *p);
      HB_ASSIGN_OR_RETURN(std::optional<BlobLock> mine, cache_->TryLockExclusive(s.digest));
      if (mine) {
        s.lock = std::move(*mine);
        break;
      }
      HB_RETURN_IF_ERROR(cache_->LockShared(s.digest).status());  // waits out a fetch; released at once
    }
    if (auto p = cache_->Find(s.digest)) {
      s.lock = BlobLock();
      return UseCached(s, *p);
    }
    HB_ASSIGN_OR_RETURN(s.partial, cache_->NewPartial(s.digest, s.size));
    s.fd = s.partial.fd;
    s.temp = true;
    HB_RETURN_IF_ERROR(Map(s));
    MakePieces(s);
    return Status::Ok();
  }

  Status UseCached(Segment& s, const std::string& path) {
    HB_ASSIGN_OR_RETURN(s.lock, cache_->LockShared(s.digest));
    s.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (s.fd < 0) return ErrnoError("open cached blob " + path, errno);
    struct stat st{};
    if (::fstat(s.fd, &st) != 0) return ErrnoError("stat " + path, errno);
    if (static_cast<uint64_t>(st.st_size) != s.size) {
      return Corrupt(path + ": the cached blob " + s.digest + " has " + std::to_string(st.st_size) +
                     " bytes, the manifest says " + std::to_string(s.size) + ": run `hotboot cache gc`");
    }
    s.cached = true;
    return Map(s);
  }

  Status Map(Segment& s) {
    void* m = ::mmap(nullptr, s.size, PROT_READ, MAP_SHARED, s.fd, 0);
    if (m == MAP_FAILED) return ErrnoError("map " + (s.digest.empty() ? name_ : s.digest), errno);
    s.map = static_cast<const char*>(m);
    return Status::Ok();
  }

  void MakePieces(Segment& s) {
    const uint64_t p = std::max<uint64_t>(opts_.piece, 64 << 10);
    for (uint64_t b = 0; b < s.size; b += p) s.pieces.push_back({.begin = b, .len = std::min(p, s.size - b)});
  }

  Segment& SegmentAt(uint64_t offset) {
    auto it = std::upper_bound(segs_.begin(), segs_.end(), offset,
                               [](uint64_t off, const Segment& s) { return off < s.offset; });
    return *std::prev(it);
  }

  void ScheduleLocked(Segment& s, uint64_t b, uint64_t e, bool front) {
    if (s.cached) return;
    const uint64_t p = s.pieces.empty() ? 1 : s.pieces[0].len;
    for (size_t i = b / p; i < s.pieces.size() && s.pieces[i].begin < e; ++i) {
      Piece& pc = s.pieces[i];
      s.asked = true;
      if (pc.state == Piece::kIdle) {
        pc.state = Piece::kQueued;
        if (front) queue_.emplace_front(&s, i);
        else queue_.emplace_back(&s, i);
      } else if (front && pc.state == Piece::kQueued) {
        // Someone reads it now: ahead of what was only prefetched.
        auto it = std::find(queue_.begin(), queue_.end(), std::make_pair(&s, i));
        if (it != queue_.end()) {
          queue_.erase(it);
          queue_.emplace_front(&s, i);
        }
      }
    }
  }

  Status Wait(Segment& s, uint64_t b, uint64_t n) {
    if (s.cached) return Status::Ok();
    const uint64_t e = b + n;
    std::unique_lock lk(mu_);
    bool asked = false;
    for (;;) {
      if (!error_.ok()) return error_;
      bool ready = true;
      const uint64_t p = s.pieces[0].len;
      for (size_t i = b / p; i < s.pieces.size() && s.pieces[i].begin < e; ++i) {
        const Piece& pc = s.pieces[i];
        if (pc.state == Piece::kDone) continue;
        if (pc.arrived < std::min(e, pc.begin + pc.len) - pc.begin) ready = false;
      }
      if (ready) return Status::Ok();
      if (stopping_) return Internal(name_ + ": read after the fetch stopped");
      if (!asked) {
        ScheduleLocked(s, b, e, /*front=*/true);
        asked = true;
        cv_.notify_all();
      }
      ++waiters_;
      cv_.wait(lk);
      --waiters_;
    }
  }

  size_t Outstanding() const {
    size_t n = queue_.size() + running_ + publishing_;
    return n;
  }

  // A blob of ours whose every piece arrived goes into the node cache now
  // (hashed, renamed; our mapping stays valid) and its exclusive lock is let
  // go: restores of the same snapshot that wait for it go on while this one
  // still restores, instead of after it is ready (Finish). A failure is
  // Finish's to report, as it was; this restore reads on from its mapping.
  void PublishIfComplete(Segment& s, std::unique_lock<std::mutex>& lk) {
    if (!s.temp || s.digest.empty() || s.publishing || s.published || stopping_) return;
    for (const Piece& p : s.pieces) {
      if (p.state != Piece::kDone) return;
    }
    s.publishing = true;
    ++publishing_;
    lk.unlock();
    Status st = cache_->Publish(s.partial).Prefixed(name_);
    lk.lock();
    --publishing_;
    // Either way the file is closed (published, or discarded: nothing
    // unverified is kept) and others may look for the blob again.
    s.fd = s.partial.fd = -1;
    s.lock = BlobLock();
    if (st.ok()) {
      s.published = true;
    } else if (publish_error_.ok()) {
      publish_error_ = st;  // s.publishing stays set: not tried again
    }
  }

  void Start() {
    t0_ = Clock::now();
    const int n = std::clamp(opts_.connections, 1, 64);
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { Work(); });
  }

  void Stop() {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void Work() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stopping_ || (!queue_.empty() && error_.ok()); });
      if (stopping_) return;
      auto [s, i] = queue_.front();
      queue_.pop_front();
      s->pieces[i].state = Piece::kRunning;
      ++running_;
      if (first_request_ms_ < 0) first_request_ms_ = MsNow();
      lk.unlock();
      Status st = Fetch(*s, i);
      lk.lock();
      --running_;
      if (st.ok()) {
        s->pieces[i].state = Piece::kDone;
        last_byte_ms_ = MsNow();
        cv_.notify_all();
        PublishIfComplete(*s, lk);
      } else if (error_.ok()) {
        error_ = st;
      }
      cv_.notify_all();
    }
  }

  // One piece, resumed where a dropped connection left it.
  Status Fetch(Segment& s, size_t i) {
    Piece& pc = s.pieces[i];
    Status last;
    // `attempts` counts tries in a row that brought nothing: a connection
    // cut every few MiB still moves forward and is not given up.
    for (int attempt = 0; attempt < std::max(1, opts_.attempts);) {
      if (attempt > 0) {
        // Back off before asking again: 100 ms, 200 ms, 400 ms, ...
        std::unique_lock lk(mu_);
        cv_.wait_for(lk, std::chrono::milliseconds(100 << std::min(attempt - 1, 5)), [&] { return stopping_; });
        if (stopping_) return Internal("stopped");
      }
      uint64_t at;
      {
        std::lock_guard lk(mu_);
        at = pc.arrived;
      }
      if (at >= pc.len) return Status::Ok();
      const uint64_t before = at;
      Sink sink = [&](const char* data, size_t n) -> Status {
        if (stopping_) return Internal("stopped");
        uint64_t w;
        {
          std::lock_guard lk(mu_);
          w = pc.arrived;
        }
        if (n > pc.len - w) return Corrupt("the server sent more bytes than asked for");
        const uint64_t pos = pc.begin + w;
        size_t done = 0;
        while (done < n) {
          ssize_t k = ::pwrite(s.fd, data + done, n - done, static_cast<off_t>(pos + done));
          if (k < 0 && errno == EINTR) continue;
          if (k < 0) return ErrnoError("write the fetched bytes into the node cache's tmp/", errno);
          done += static_cast<size_t>(k);
        }
        fetched_ += n;
        {
          std::lock_guard lk(mu_);
          pc.arrived += n;
          if (waiters_ > 0) cv_.notify_all();
        }
        Report();
        return Status::Ok();
      };
      Result<uint64_t> got = s.digest.empty() ? file_->Get(pc.begin + at, pc.len - at, sink)
                                              : registry_->GetBlob(s.digest, pc.begin + at, pc.len - at, sink);
      bool progressed;
      {
        std::lock_guard lk(mu_);
        if (pc.arrived >= pc.len) return Status::Ok();
        progressed = pc.arrived > before;
      }
      last = got.ok() ? Truncated("the server ended the response early") : got.status();
      if (!Retryable(last)) break;
      attempt = progressed ? 1 : attempt + 1;
    }
    const std::string where = s.digest.empty() ? "bytes " + std::to_string(s.offset + pc.begin) + "-" +
                                                     std::to_string(s.offset + pc.begin + pc.len - 1)
                                               : "blob " + s.digest + " bytes " + std::to_string(pc.begin) + "-" +
                                                     std::to_string(pc.begin + pc.len - 1);
    return Status(last.code(), name_ + ": fetching " + where + ": " + last.message());
  }

  void Report() {
    if (!opts_.progress) return;
    const double now = MsNow();
    std::lock_guard lk(progress_mu_);
    if (now - last_report_ms_ < 200) return;
    last_report_ms_ = now;
    uint64_t total = 0;
    {
      std::lock_guard l2(mu_);
      for (const auto& s : segs_) {
        if (s.cached) continue;
        for (const auto& p : s.pieces) total += p.state == Piece::kIdle ? 0 : p.len;
      }
    }
    opts_.progress({.what = "fetch", .done = fetched_.load(), .total = total, .elapsed_s = now / 1000.0});
  }

  double MsNow() const { return std::chrono::duration<double, std::milli>(Clock::now() - t0_).count(); }

  FetchOptions opts_;
  std::string name_;
  uint64_t size_ = 0;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<HttpFile> file_;
  std::unique_ptr<NodeCache> cache_;
  std::string manifest_digest_, manifest_bytes_;
  std::vector<Segment> segs_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Segment*, size_t>> queue_;
  size_t running_ = 0;
  size_t publishing_ = 0;
  Status publish_error_;  // an early publish that failed (Finish reports it)
  int waiters_ = 0;
  bool stopping_ = false;
  bool finished_ = false;  // Finish counted bytes_from_cache / bytes_skipped
  Status error_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> fetched_{0};
  FetchStats stats_;
  Clock::time_point t0_ = Clock::now();
  double first_request_ms_ = -1, last_byte_ms_ = 0;
  std::mutex progress_mu_;
  double last_report_ms_ = -1e9;
};

RemoteSnapshot::RemoteSnapshot(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteSnapshot::~RemoteSnapshot() = default;

Result<std::shared_ptr<RemoteSnapshot>> RemoteSnapshot::Open(const std::string& ref, const FetchOptions& opts) {
  auto impl = std::make_unique<Impl>();
  if (IsOciRef(ref)) {
    HB_RETURN_IF_ERROR(impl->OpenOci(ref, opts));
  } else if (IsHttpUrl(ref)) {
    HB_RETURN_IF_ERROR(impl->OpenHttp(ref, opts));
  } else {
    return InvalidArgument(ref + " is neither oci://HOST/REPO:TAG nor an http(s):// URL");
  }
  return std::shared_ptr<RemoteSnapshot>(new RemoteSnapshot(std::move(impl)));
}

uint64_t RemoteSnapshot::size() const { return impl_->size(); }
const std::string& RemoteSnapshot::name() const { return impl_->name(); }
Status RemoteSnapshot::ReadAt(uint64_t offset, size_t n, char* out) const { return impl_->ReadAt(offset, n, out); }
Result<const char*> RemoteSnapshot::View(uint64_t offset, size_t n) const { return impl_->View(offset, n); }
void RemoteSnapshot::Prefetch(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) { impl_->Prefetch(ranges); }
Status RemoteSnapshot::Finish() { return impl_->Finish(); }
FetchStats RemoteSnapshot::stats() const { return impl_->Stats(); }

void RemoteSnapshot::PrefetchAllBut(const snapfile::SnapshotReader& r, const std::vector<std::string>& skip) {
  // What is read first goes first: every section but the skipped ones, the
  // large ones (weights) after the small ones (CRIU images, GPU state).
  std::vector<std::pair<uint64_t, uint64_t>> small, large;
  for (const auto& s : r.sections()) {
    if (std::find(skip.begin(), skip.end(), s.name) != skip.end()) continue;
    const auto span = SectionSpan(s);
    (span.second - span.first >= kOwnBlobMin ? large : small).push_back(span);
  }
  small.insert(small.end(), large.begin(), large.end());
  Prefetch(small);
}

}  // namespace hotboot::fetch
