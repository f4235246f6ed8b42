// Reads a v0 snapshot. Distrusts every number: lengths and offsets are bounded
// by caps and by the file's size before anything is allocated; "truncated"
// and "corrupt" are told apart; a chunk's bytes are used only after both of
// its hashes matched.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <thread>

#include "hotboot/snapshot_file.h"
#include "io_util.h"
#include "snapshot_layout.h"

namespace hotboot::snapfile {

namespace fs = std::filesystem;

namespace {

using io::PreadAll;


// Runs fn(i) for i in [0, n) on `threads` threads; returns the error of the
// lowest failing index, so the report does not depend on scheduling.
Status ParallelFor(size_t n, int threads, const std::function<Status(size_t, std::string*)>& fn) {
  threads = std::max(1, threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
  std::atomic<size_t> next{0};
  std::mutex mu;
  size_t first_bad = SIZE_MAX;
  Status first_status;
  auto work = [&] {
    std::string scratch;
    for (;;) {
      size_t i = next++;
      if (i >= n) return;
      {
        std::lock_guard lock(mu);
        if (i > first_bad) return;
      }
      Status s = fn(i, &scratch);
      if (!s.ok()) {
        std::lock_guard lock(mu);
        if (i < first_bad) {
          first_bad = i;
          first_status = s;
        }
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return first_status;
}

std::string Where(const SectionInfo& s, size_t chunk, uint64_t offset) {
  return "section '" + s.name + "' chunk " + std::to_string(chunk) + " (file offset " + std::to_string(offset) + ")";
}

}  // namespace

SnapshotReader::~SnapshotReader() {
  if (fd_ >= 0) ::close(fd_);
}

std::string SnapshotReader::file_digest_hex() const {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016" PRIx64 "%016" PRIx64, digest_hi_, digest_lo_);
  return buf;
}

const SectionInfo* SnapshotReader::FindSection(std::string_view name) const {
  for (const auto& s : sections_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::Open(const std::string& path) {
  std::unique_ptr<SnapshotReader> r(new SnapshotReader());
  r->path_ = path;
  r->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (r->fd_ < 0) return ErrnoError("open " + path, errno);
  struct stat st{};
  if (::fstat(r->fd_, &st) != 0) return ErrnoError("stat " + path, errno);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  r->file_size_ = static_cast<uint64_t>(st.st_size);

  // Header (SPEC.md "Header").
  if (r->file_size_ < 8) return Corrupt(path + ": not a hotboot snapshot (bad magic; the file has only " + std::to_string(r->file_size_) + " bytes)");
  char hb[kHeaderSize] = {};
  size_t hlen = std::min<uint64_t>(kHeaderSize, r->file_size_);
  HB_RETURN_IF_ERROR(PreadAll(r->fd_, hb, hlen, 0, path));
  if (std::memcmp(hb, kMagic, 8) != 0) return Corrupt(path + ": not a hotboot snapshot (bad magic)");
  if (hlen < kHeaderSize) return Truncated(path + ": truncated inside the header (" + std::to_string(r->file_size_) + " bytes)");
  const auto* h = reinterpret_cast<const unsigned char*>(hb);
  if (GetLE(h + 32, 8) != XXH3_64bits(hb, 32)) {
    // A bad header checksum may be a newer layout: report the version first.
    uint16_t major = static_cast<uint16_t>(GetLE(h + 8, 2));
    if (major > kVersionMajor) {
      return Unsupported(path + ": snapshot format version " + std::to_string(major) + "." +
                         std::to_string(GetLE(h + 10, 2)) + " is newer than this hotboot reads (" +
                         std::to_string(kVersionMajor) + "." + std::to_string(kVersionMinor) + "); upgrade hotboot");
    }
    return Corrupt(path + ": header checksum mismatch (bytes 0-31)");
  }
  r->major_ = static_cast<uint16_t>(GetLE(h + 8, 2));
  r->minor_ = static_cast<uint16_t>(GetLE(h + 10, 2));
  if (r->major_ != kVersionMajor) {
    return Unsupported(path + ": snapshot format version " + std::to_string(r->major_) + "." +
                       std::to_string(r->minor_) + " is not readable by this hotboot (reads " +
                       std::to_string(kVersionMajor) + ".x)");
  }
  if (GetLE(h + 12, 4) != 0) return Corrupt(path + ": header flags must be zero in version 0");
  if (GetLE(h + 24, 8) != 0) return Corrupt(path + ": header reserved field must be zero");
  const uint64_t want_size = GetLE(h + 16, 8);
  if (r->file_size_ < want_size) {
    return Truncated(path + ": truncated: the file has " + std::to_string(r->file_size_) + " bytes, the header says " +
                     std::to_string(want_size));
  }
  if (r->file_size_ > want_size) {
    return Corrupt(path + ": " + std::to_string(r->file_size_ - want_size) + " unexpected bytes after the end (" +
                   std::to_string(want_size) + ")");
  }
  if (want_size < kHeaderSize + kTrailerSize) return Corrupt(path + ": header gives an impossible size");

  // Trailer.
  char tb[kTrailerSize];
  r->body_end_ = r->file_size_ - kTrailerSize;
  HB_RETURN_IF_ERROR(PreadAll(r->fd_, tb, kTrailerSize, r->body_end_, path));
  const auto* t = reinterpret_cast<const unsigned char*>(tb);
  if (std::memcmp(tb + 40, kTrailerMagic, 8) != 0) {
    return Corrupt(path + ": bad trailer magic at byte " + std::to_string(r->body_end_ + 40));
  }
  const uint64_t index_off = GetLE(t, 8), index_size = GetLE(t + 8, 8), index_hash = GetLE(t + 16, 8);
  r->digest_hi_ = GetLE(t + 24, 8);
  r->digest_lo_ = GetLE(t + 32, 8);
  if (index_size > kMaxIndexSize || index_off < kHeaderSize || index_off > r->body_end_ ||
      index_size != r->body_end_ - index_off) {
    return Corrupt(path + ": trailer points the index outside the file (offset " + std::to_string(index_off) +
                   ", size " + std::to_string(index_size) + ")");
  }

  // Index (SPEC.md "Index").
  std::string index(index_size, '\0');
  HB_RETURN_IF_ERROR(PreadAll(r->fd_, index.data(), index_size, index_off, path));
  if (XXH3_64bits(index.data(), index.size()) != index_hash) {
    return Corrupt(path + ": index checksum mismatch (index at byte " + std::to_string(index_off) + ")");
  }
  Cursor c(index.data(), index.size());
  auto bad = [&](const std::string& what) {
    return Corrupt(path + ": index: " + what + " at index byte " + std::to_string(c.pos()) + " (file byte " +
                   std::to_string(index_off + c.pos()) + ")");
  };
  uint64_t mlen = c.U(4);
  if (c.bad || mlen > kMaxManifestSize || mlen > c.left()) return bad("manifest length out of bounds");
  r->manifest_ = c.Bytes(mlen);
  uint64_t nsec = c.U(4);
  // Each section needs at least 18 bytes of index: bounds the reservation.
  if (c.bad || nsec > kMaxSections || nsec > c.left() / 18) return bad("section count out of bounds");
  r->sections_.reserve(nsec);
  uint64_t expect_off = kHeaderSize;
  for (uint64_t i = 0; i < nsec; ++i) {
    SectionInfo s;
    uint64_t nlen = c.U(2);
    if (c.bad || nlen == 0 || nlen > c.left()) return bad("section name length out of bounds");
    s.name = c.Bytes(nlen);
    if (s.name.find('\0') != std::string::npos || s.name.find("..") != std::string::npos || s.name[0] == '/') {
      return bad("unsafe section name '" + s.name + "'");
    }
    s.mode = static_cast<uint32_t>(c.U(4));
    s.raw_size = c.U(8);
    uint64_t nchunks = c.U(4);
    if (c.bad || nchunks > c.left() / 33) return bad("chunk count of section '" + s.name + "' out of bounds");
    uint64_t raw_sum = 0;
    s.chunks.reserve(nchunks);
    for (uint64_t k = 0; k < nchunks; ++k) {
      ChunkInfo ch;
      ch.offset = c.U(8);
      ch.stored_size = c.U(4);
      ch.raw_size = c.U(4);
      ch.method = static_cast<uint8_t>(c.U(1));
      ch.stored_hash = c.U(8);
      ch.raw_hash = c.U(8);
      if (c.bad) return bad("chunk table of section '" + s.name + "' cut short");
      const std::string where = "section '" + s.name + "' chunk " + std::to_string(k);
      if (ch.method > kMethodZero) return bad(where + ": unknown method " + std::to_string(ch.method));
      if (ch.raw_size == 0 || ch.raw_size > kMaxChunkRaw) return bad(where + ": raw size out of bounds");
      if (ch.offset != expect_off || ch.stored_size > index_off - ch.offset) {
        return bad(where + ": stored bytes at " + std::to_string(ch.offset) + "+" + std::to_string(ch.stored_size) +
                   " are not where the chunks before it end (" + std::to_string(expect_off) + ")");
      }
      if ((ch.method == kMethodRaw && ch.stored_size != ch.raw_size) ||
          (ch.method == kMethodZero && ch.stored_size != 0)) {
        return bad(where + ": stored size does not fit its method");
      }
      expect_off += ch.stored_size;
      raw_sum += ch.raw_size;
      s.stored_size += ch.stored_size;
      s.chunks.push_back(ch);
    }
    if (raw_sum != s.raw_size) return bad("section '" + s.name + "': chunk sizes do not add up to its size");
    r->sections_.push_back(std::move(s));
  }
  if (c.left() != 0) return bad(std::to_string(c.left()) + " unexpected bytes at the end of the index");
  if (expect_off != index_off) return bad("chunks do not end where the index starts");
  return r;
}

Status SnapshotReader::ReadChunk(const SectionInfo& s, size_t i, std::string* scratch, char* out) const {
  const ChunkInfo& c = s.chunks[i];
  if (c.method == kMethodZero) {
    std::memset(out, 0, c.raw_size);
  } else {
    scratch->resize(c.stored_size);
    Status st = PreadAll(fd_, scratch->data(), c.stored_size, c.offset, path_);
    if (!st.ok()) return st.Prefixed(Where(s, i, c.offset));
    if (XXH3_64bits(scratch->data(), scratch->size()) != c.stored_hash) {
      return Corrupt(path_ + ": " + Where(s, i, c.offset) + ": stored checksum mismatch");
    }
    if (c.method == kMethodRaw) {
      std::memcpy(out, scratch->data(), c.raw_size);
    } else {
      size_t n = ZSTD_decompress(out, c.raw_size, scratch->data(), scratch->size());
      if (ZSTD_isError(n) || n != c.raw_size) {
        return Corrupt(path_ + ": " + Where(s, i, c.offset) + ": zstd data does not decode to " +
                       std::to_string(c.raw_size) + " bytes" + (ZSTD_isError(n) ? std::string(" (") + ZSTD_getErrorName(n) + ")" : ""));
      }
    }
  }
  if (XXH3_64bits(out, c.raw_size) != c.raw_hash) {
    return Corrupt(path_ + ": " + Where(s, i, c.offset) + ": decoded checksum mismatch");
  }
  return Status::Ok();
}

namespace {
struct ChunkRef {
  const SectionInfo* section;
  size_t index;
  uint64_t raw_offset;
  int out_fd;
};
}  // namespace

Status SnapshotReader::Verify(int threads, ProgressFn progress) const {
  std::vector<ChunkRef> refs;
  uint64_t total = 0;
  for (const auto& s : sections_) {
    uint64_t off = 0;
    for (size_t i = 0; i < s.chunks.size(); ++i) {
      refs.push_back({&s, i, off, -1});
      off += s.chunks[i].raw_size;
    }
    total += s.raw_size;
  }
  std::atomic<uint64_t> done{0};
  std::mutex pmu;
  HB_RETURN_IF_ERROR(ParallelFor(refs.size(), threads, [&](size_t k, std::string* scratch) {
    const ChunkRef& r = refs[k];
    std::string out(r.section->chunks[r.index].raw_size, '\0');
    HB_RETURN_IF_ERROR(ReadChunk(*r.section, r.index, scratch, out.data()));
    uint64_t d = done += out.size();
    if (progress) {
      std::lock_guard lock(pmu);
      progress(d, total);
    }
    return Status::Ok();
  }));
  // The whole-file digest covers every byte from the header's end to the trailer.
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  std::string buf(8u << 20, '\0');
  Status st;
  for (uint64_t off = kHeaderSize; off < body_end_ && st.ok();) {
    uint64_t n = std::min<uint64_t>(buf.size(), body_end_ - off);
    st = PreadAll(fd_, buf.data(), n, off, path_);
    XXH3_128bits_update(state, buf.data(), n);
    off += n;
  }
  XXH128_hash_t dg = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  HB_RETURN_IF_ERROR(st);
  if (dg.high64 != digest_hi_ || dg.low64 != digest_lo_) {
    return Corrupt(path_ + ": whole-file digest mismatch (bytes " + std::to_string(kHeaderSize) + "-" +
                   std::to_string(body_end_) + ")");
  }
  return Status::Ok();
}

Status SnapshotReader::ExtractTo(const std::string& dir, const std::string& prefix, int threads,
                                 ProgressFn progress) const {
  std::vector<ChunkRef> refs;
  std::vector<int> fds;
  uint64_t total = 0;
  auto close_all = [&] {
    for (int fd : fds) ::close(fd);
  };
  for (const auto& s : sections_) {
    if (s.name.rfind(prefix, 0) != 0) continue;
    fs::path p = fs::path(dir) / s.name.substr(prefix.size());
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, s.mode & 0777);
    if (fd < 0) {
      Status e = ErrnoError("create " + p.string(), errno);
      close_all();
      return e;
    }
    fds.push_back(fd);
    if (::ftruncate(fd, static_cast<off_t>(s.raw_size)) != 0) {
      Status e = ErrnoError("size " + p.string(), errno);
      close_all();
      return e;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < s.chunks.size(); ++i) {
      refs.push_back({&s, i, off, fd});
      off += s.chunks[i].raw_size;
    }
    total += s.raw_size;
  }
  std::atomic<uint64_t> done{0};
  std::mutex pmu;
  Status st = ParallelFor(refs.size(), threads, [&](size_t k, std::string* scratch) {
    const ChunkRef& r = refs[k];
    const ChunkInfo& c = r.section->chunks[r.index];
    uint64_t d;
    if (c.method == kMethodZero) {
      d = done += c.raw_size;  // ftruncate left a hole of zeros
    } else {
      std::string out(c.raw_size, '\0');
      HB_RETURN_IF_ERROR(ReadChunk(*r.section, r.index, scratch, out.data()));
      uint64_t w = 0;
      while (w < out.size()) {
        ssize_t n = ::pwrite(r.out_fd, out.data() + w, out.size() - w, static_cast<off_t>(r.raw_offset + w));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ErrnoError("write " + r.section->name + " into " + dir, errno);
        w += static_cast<uint64_t>(n);
      }
      d = done += out.size();
    }
    if (progress) {
      std::lock_guard lock(pmu);
      progress(d, total);
    }
    return Status::Ok();
  });
  close_all();
  return st;
}

Result<std::string> SnapshotReader::ReadSection(std::string_view name) const {
  const SectionInfo* s = FindSection(name);
  if (!s) return NotFound(path_ + ": no section '" + std::string(name) + "'");
  std::string out(s->raw_size, '\0');
  std::string scratch;
  uint64_t off = 0;
  for (size_t i = 0; i < s->chunks.size(); ++i) {
    HB_RETURN_IF_ERROR(ReadChunk(*s, i, &scratch, out.data() + off));
    off += s->chunks[i].raw_size;
  }
  return out;
}

}  // namespace hotboot::snapfile
