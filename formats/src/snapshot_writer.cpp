// Writes a v0 snapshot: chunks are compressed in parallel and written in
// order with a bounded number in flight, so memory stays bounded whatever the
// snapshot's size.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "hotboot/snapshot_file.h"
#include "snapshot_layout.h"

namespace hotboot::snapfile {

namespace fs = std::filesystem;

namespace {

struct Task {
  size_t section;
  uint64_t raw_offset;
  uint64_t raw_size;
};

struct Done {
  Status status;
  uint8_t method = kMethodRaw;
  std::string stored;
  uint64_t stored_hash = 0;
  uint64_t raw_hash = 0;
};

Status ReadRange(const SectionSource& s, int fd, uint64_t off, uint64_t len, std::string* out) {
  out->resize(len);
  if (s.file_path.empty()) {
    out->assign(s.bytes, off, len);
    return Status::Ok();
  }
  uint64_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, out->data() + got, len - got, static_cast<off_t>(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read " + s.file_path, errno);
    if (n == 0) return IoError("read " + s.file_path + ": file shrank while being packed");
    got += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

bool AllZero(const std::string& b) {
  return std::all_of(b.begin(), b.end(), [](char c) { return c == 0; });
}

Done Compress(const std::string& raw, int level, ZSTD_CCtx* cctx) {
  Done d;
  d.raw_hash = XXH3_64bits(raw.data(), raw.size());
  if (AllZero(raw)) {
    d.method = kMethodZero;
  } else {
    d.stored.resize(ZSTD_compressBound(raw.size()));
    size_t n = ZSTD_compressCCtx(cctx, d.stored.data(), d.stored.size(), raw.data(), raw.size(), level);
    if (ZSTD_isError(n)) {
      d.status = Internal(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
      return d;
    }
    if (n < raw.size()) {
      d.stored.resize(n);
      d.method = kMethodZstd;
    } else {
      d.stored = raw;  // does not shrink: stored raw
      d.method = kMethodRaw;
    }
  }
  d.stored_hash = XXH3_64bits(d.stored.data(), d.stored.size());
  return d;
}

class Output {
 public:
  explicit Output(int fd) : fd_(fd) { XXH3_128bits_reset(&digest_); }
  Status Write(const std::string& b, bool hashed = true) {
    size_t off = 0;
    while (off < b.size()) {
      ssize_t n = ::write(fd_, b.data() + off, b.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("write snapshot", errno);
      off += static_cast<size_t>(n);
    }
    if (hashed) XXH3_128bits_update(&digest_, b.data(), b.size());
    pos_ += b.size();
    return Status::Ok();
  }
  uint64_t pos() const { return pos_; }
  XXH128_hash_t digest() const { return XXH3_128bits_digest(&digest_); }

 private:
  int fd_;
  uint64_t pos_ = 0;
  XXH3_state_t digest_;
};

std::string EncodeHeader(uint64_t file_size) {
  std::string h(kMagic, 8);
  PutU16(h, kVersionMajor);
  PutU16(h, kVersionMinor);
  PutU32(h, 0);  // flags
  PutU64(h, file_size);
  PutU64(h, 0);  // reserved
  PutU64(h, XXH3_64bits(h.data(), h.size()));
  return h;
}

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd(fd) {}
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
  int fd;
};

Status WriteBody(int fd, const std::string& manifest, const std::vector<SectionSource>& sections,
                 const WriteOptions& opts, const ProgressFn& progress) {
  if (opts.chunk_size == 0 || opts.chunk_size > kMaxChunkRaw) {
    return InvalidArgument("chunk size must be 1.." + std::to_string(kMaxChunkRaw));
  }
  if (manifest.size() > kMaxManifestSize) return InvalidArgument("manifest is larger than 16 MiB");
  if (sections.size() > kMaxSections) return InvalidArgument("too many sections");
  // Open every source and plan the chunks.
  std::vector<std::unique_ptr<FdCloser>> fds;
  std::vector<uint64_t> sizes;
  std::vector<Task> tasks;
  uint64_t total = 0;
  std::map<std::string, int> names;
  for (size_t i = 0; i < sections.size(); ++i) {
    const auto& s = sections[i];
    if (s.name.empty() || s.name.size() > kMaxNameLen) return InvalidArgument("bad section name '" + s.name + "'");
    if (names[s.name]++) return InvalidArgument("duplicate section name '" + s.name + "'");
    uint64_t size = s.bytes.size();
    int sfd = -1;
    if (!s.file_path.empty()) {
      sfd = ::open(s.file_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (sfd < 0) return ErrnoError("open " + s.file_path, errno);
      struct stat st{};
      ::fstat(sfd, &st);
      size = static_cast<uint64_t>(st.st_size);
    }
    fds.push_back(std::make_unique<FdCloser>(sfd));
    sizes.push_back(size);
    for (uint64_t off = 0; off < size; off += opts.chunk_size) {
      tasks.push_back({i, off, std::min<uint64_t>(opts.chunk_size, size - off)});
    }
    total += size;
  }

  Output out(fd);
  HB_RETURN_IF_ERROR(out.Write(EncodeHeader(0), /*hashed=*/false));

  const int threads = std::max(1, opts.threads > 0 ? opts.threads : static_cast<int>(std::thread::hardware_concurrency()));
  const size_t window = static_cast<size_t>(threads) * 2;
  std::mutex mu;
  std::condition_variable cv;
  std::map<size_t, Done> ready;
  size_t next_task = 0, written = 0;
  bool abort = false;

  auto worker = [&] {
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    std::string raw;
    for (;;) {
      size_t t;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return abort || next_task >= tasks.size() || next_task < written + window; });
        if (abort || next_task >= tasks.size()) break;
        t = next_task++;
      }
      const Task& task = tasks[t];
      Done d;
      d.status = ReadRange(sections[task.section], fds[task.section]->fd, task.raw_offset, task.raw_size, &raw);
      if (d.status.ok()) d = Compress(raw, opts.zstd_level, cctx);
      std::lock_guard lock(mu);
      ready.emplace(t, std::move(d));
      cv.notify_all();
    }
    ZSTD_freeCCtx(cctx);
  };
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) pool.emplace_back(worker);

  std::vector<SectionInfo> infos(sections.size());
  for (size_t i = 0; i < sections.size(); ++i) {
    infos[i].name = sections[i].name;
    infos[i].mode = sections[i].mode;
    infos[i].raw_size = sizes[i];
  }
  Status st;
  uint64_t done_raw = 0;
  while (written < tasks.size()) {
    Done d;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return ready.count(written) > 0; });
      d = std::move(ready[written]);
      ready.erase(written);
    }
    if (!d.status.ok()) {
      st = d.status;
      break;
    }
    const Task& task = tasks[written];
    ChunkInfo c;
    c.offset = out.pos();
    c.stored_size = d.stored.size();
    c.raw_size = task.raw_size;
    c.method = d.method;
    c.stored_hash = d.stored_hash;
    c.raw_hash = d.raw_hash;
    st = out.Write(d.stored);
    if (!st.ok()) break;
    infos[task.section].chunks.push_back(c);
    infos[task.section].stored_size += c.stored_size;
    done_raw += task.raw_size;
    if (progress) progress(done_raw, total);
    std::lock_guard lock(mu);
    ++written;
    cv.notify_all();
  }
  {
    std::lock_guard lock(mu);
    abort = true;
    cv.notify_all();
  }
  for (auto& t : pool) t.join();
  HB_RETURN_IF_ERROR(st);

  // Index: manifest, then sections with their chunk tables (SPEC.md "Index").
  std::string index;
  PutU32(index, static_cast<uint32_t>(manifest.size()));
  index += manifest;
  PutU32(index, static_cast<uint32_t>(infos.size()));
  for (const auto& s : infos) {
    PutU16(index, static_cast<uint16_t>(s.name.size()));
    index += s.name;
    PutU32(index, s.mode);
    PutU64(index, s.raw_size);
    PutU32(index, static_cast<uint32_t>(s.chunks.size()));
    for (const auto& c : s.chunks) {
      PutU64(index, c.offset);
      PutU32(index, static_cast<uint32_t>(c.stored_size));
      PutU32(index, static_cast<uint32_t>(c.raw_size));
      PutU8(index, c.method);
      PutU64(index, c.stored_hash);
      PutU64(index, c.raw_hash);
    }
  }
  const uint64_t index_offset = out.pos();
  HB_RETURN_IF_ERROR(out.Write(index));
  XXH128_hash_t digest = out.digest();
  std::string trailer;
  PutU64(trailer, index_offset);
  PutU64(trailer, index.size());
  PutU64(trailer, XXH3_64bits(index.data(), index.size()));
  PutU64(trailer, digest.high64);
  PutU64(trailer, digest.low64);
  trailer.append(kTrailerMagic, 8);
  HB_RETURN_IF_ERROR(out.Write(trailer, false));
  // The header records the final size, so a reader tells truncation apart.
  std::string header = EncodeHeader(out.pos());
  if (::pwrite(fd, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size())) {
    return ErrnoError("write snapshot header", errno);
  }
  if (::fsync(fd) != 0) return ErrnoError("fsync snapshot", errno);
  return Status::Ok();
}

}  // namespace

Result<std::vector<SectionSource>> SectionsFromDirectory(const std::string& dir, const std::string& prefix) {
  std::vector<SectionSource> out;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  if (ec) return IoError("list " + dir + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) return IoError("list " + dir + ": " + ec.message());
    if (!it->is_regular_file()) continue;
    SectionSource s;
    s.name = prefix + "/" + fs::relative(it->path(), dir).string();
    s.file_path = it->path().string();
    struct stat st{};
    if (::stat(s.file_path.c_str(), &st) == 0) s.mode = st.st_mode & 07777;
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

Status WriteSnapshot(const std::string& out_path, const std::string& manifest_json,
                     const std::vector<SectionSource>& sections, const WriteOptions& opts, ProgressFn progress) {
  const std::string tmp = out_path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create " + tmp, errno);
  Status s = WriteBody(fd, manifest_json, sections, opts, progress);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + tmp, errno);
  if (s.ok() && ::rename(tmp.c_str(), out_path.c_str()) != 0) s = ErrnoError("rename " + tmp + " to " + out_path, errno);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s.Prefixed("writing snapshot " + out_path);
  }
  fs::path parent = fs::path(out_path).has_parent_path() ? fs::path(out_path).parent_path() : fs::path(".");
  int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return Status::Ok();
}

}  // namespace hotboot::snapfile
