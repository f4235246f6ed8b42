// Reads a snapshot through its index (formats/SPEC.md). Distrusts every
// number: lengths and offsets are bounded by caps and by the file's size
// before anything is allocated; "truncated" and "corrupt" are told apart; a
// chunk's bytes are used only after its record, its stored bytes and its
// decoded bytes were checked.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "crypto.h"
#include "hotboot/snapshot_file.h"
#include "hotboot/io.h"
#include "pipeline.h"
#include "records.h"
#include "xxh3_fast.h"

namespace hotboot::snapfile {

namespace fs = std::filesystem;

namespace {

using io::PreadAll;

std::string Where(const SectionInfo& s, size_t chunk, uint64_t offset) {
  return "section '" + s.name + "' chunk " + std::to_string(chunk) + " (file offset " + std::to_string(offset) + ")";
}

bool SameChunk(const ChunkInfo& a, const ChunkInfo& b) {
  return a.stored_size == b.stored_size && a.raw_size == b.raw_size && a.method == b.method &&
         a.transform == b.transform && a.stored_hash == b.stored_hash && a.raw_hash == b.raw_hash;
}

class Hasher128 {
 public:
  Hasher128() { XXH3_128bits_reset(&st_); }
  void Update(const void* p, size_t n) { XXH3_128bits_update(&st_, p, n); }
  Digest128 Get() const {
    XXH128_hash_t d = XXH3_128bits_digest(&st_);
    return {d.high64, d.low64};
  }

 private:
  XXH3_state_t st_;
};

// Zero chunks reach a parallel sink undecoded; their bytes still count.
void HashZeros(Hasher128* h, uint64_t n) {
  static const char kZeros[64 << 10] = {};
  while (n > 0) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof kZeros));
    h->Update(kZeros, k);
    n -= k;
  }
}

Status ContentMismatch(const std::string& path, const SectionInfo& s, const Digest128& got) {
  return Corrupt(path + ": section '" + s.name + "': content hash mismatch: the index records " + s.content_hash.Hex() +
                 ", the decoded bytes hash to " + got.Hex() + " (every chunk passed its own checks; section record at byte " +
                 std::to_string(s.offset) + ")");
}

struct ChunkTask {
  const SectionInfo* s;
  size_t chunk;
  uint64_t raw_offset;
};

// The content hashes of sections whose chunks are decoded on many workers in
// any order (SPEC.md "Section end record"). XXH3-128 streams, so chunks are
// hashed in file order: the worker that finishes the chunk next in turn hashes
// it at once, then any later chunks that finished early and were parked. A
// worker does not start a chunk more than `window` ahead of the hash, which
// bounds the parked bytes to about `window` chunks.
class OrderedContentHash {
 public:
  OrderedContentHash(const std::string& path, const std::vector<ChunkTask>& tasks, size_t window)
      : path_(path), tasks_(tasks), window_(window) {}

  // Before decoding task k; false: stop, an earlier task failed or a content
  // hash did not match.
  bool Admit(size_t k) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return stopped_ || failed_ < k || k < next_ + window_; });
    return !stopped_ && !(failed_ < k);
  }

  // Decoding task k failed: the hash cannot pass it, so later tasks must not wait for it.
  void Fail(size_t k) {
    std::lock_guard lock(mu_);
    failed_ = std::min(failed_, k);
    cv_.notify_all();
  }

  // Task k decoded into *buf (untouched for a zero chunk). When k is not next
  // in turn, its bytes are parked and *buf gets a spare buffer.
  Status Done(size_t k, std::string* buf) {
    const bool zero = Chunk(k).method == Method::kZero;
    std::unique_lock lock(mu_);
    if (stopped_) return Stopped();
    if (k != next_ || hashing_) {
      std::string& parked = parked_[k];
      if (!zero) {
        parked.swap(*buf);
        if (!spare_.empty()) {
          buf->swap(spare_.back());
          spare_.pop_back();
        }
      }
      return Status::Ok();
    }
    hashing_ = true;
    lock.unlock();
    Status st = Hash(k, zero ? nullptr : buf->data());
    lock.lock();
    for (;;) {
      if (!st.ok()) {
        error_ = st;
        stopped_ = true;
        hashing_ = false;
        cv_.notify_all();
        return st;
      }
      ++next_;
      cv_.notify_all();
      auto it = parked_.find(next_);
      if (it == parked_.end()) break;
      std::string bytes = std::move(it->second);
      parked_.erase(it);
      lock.unlock();
      st = Hash(next_, Chunk(next_).method == Method::kZero ? nullptr : bytes.data());
      lock.lock();
      if (!bytes.empty()) spare_.push_back(std::move(bytes));
    }
    hashing_ = false;
    return Status::Ok();
  }

  // The first content hash mismatch, which precedes in file order any other
  // failure the workers saw.
  Status error() const {
    std::lock_guard lock(mu_);
    return error_;
  }

 private:
  const ChunkInfo& Chunk(size_t k) const { return tasks_[k].s->chunks[tasks_[k].chunk]; }
  Status Stopped() const { return Corrupt(path_ + ": stopped after a content hash mismatch"); }

  // Runs only on the worker holding hashing_, one task at a time, in order.
  Status Hash(size_t k, const char* bytes) {
    const ChunkTask& t = tasks_[k];
    const ChunkInfo& c = Chunk(k);
    if (bytes) {
      content_.Update(bytes, c.raw_size);
    } else {
      HashZeros(&content_, c.raw_size);
    }
    if (t.chunk + 1 < t.s->chunks.size()) return Status::Ok();
    const Digest128 got = content_.Get();
    content_ = Hasher128();
    return got == t.s->content_hash ? Status::Ok() : ContentMismatch(path_, *t.s, got);
  }

  const std::string& path_;
  const std::vector<ChunkTask>& tasks_;
  const size_t window_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t next_ = 0;              // the next task to hash
  size_t failed_ = SIZE_MAX;     // the lowest task that failed to decode
  bool hashing_ = false;         // a worker is hashing (outside the lock)
  bool stopped_ = false;         // a content hash did not match
  Status error_;
  std::map<size_t, std::string> parked_;
  std::vector<std::string> spare_;
  Hasher128 content_;
};

}  // namespace

namespace {

class FileSource final : public ByteSource {
 public:
  ~FileSource() override {
    if (map_) ::munmap(const_cast<char*>(map_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  static Result<std::shared_ptr<ByteSource>> Open(const std::string& path) {
    auto f = std::make_shared<FileSource>();
    f->path_ = path;
    f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f->fd_ < 0) return ErrnoError("open " + path, errno);
    struct stat st{};
    if (::fstat(f->fd_, &st) != 0) return ErrnoError("stat " + path, errno);
    if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
    f->size_ = static_cast<uint64_t>(st.st_size);
    // Chunks are read through a read-only mapping (snapshots are immutable
    // once published); pread is the fallback where mapping fails.
    if (f->size_ > 0) {
      void* mapped = ::mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, f->fd_, 0);
      if (mapped != MAP_FAILED) f->map_ = static_cast<const char*>(mapped);
    }
    return std::shared_ptr<ByteSource>(std::move(f));
  }
  uint64_t size() const override { return size_; }
  const std::string& name() const override { return path_; }
  Status ReadAt(uint64_t offset, size_t n, char* out) const override { return PreadAll(fd_, out, n, offset, path_); }
  Result<const char*> View(uint64_t offset, size_t n) const override {
    return map_ && offset + n <= size_ ? map_ + offset : nullptr;
  }

 private:
  std::string path_;
  int fd_ = -1;
  const char* map_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace

Result<std::shared_ptr<ByteSource>> OpenFileSource(const std::string& path) { return FileSource::Open(path); }

SnapshotReader::~SnapshotReader() = default;

const SectionInfo* SnapshotReader::FindSection(std::string_view name) const {
  for (const auto& s : sections_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::Open(const std::string& path, const OpenOptions& opts) {
  HB_ASSIGN_OR_RETURN(auto src, FileSource::Open(path));
  return OpenAt(std::move(src), opts, 0, /*local_file=*/true);
}

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::Open(std::shared_ptr<ByteSource> source,
                                                             const OpenOptions& opts) {
  if (!source) return InvalidArgument("no snapshot source");
  return OpenAt(std::move(source), opts, 0, /*local_file=*/false);
}

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::OpenAt(std::shared_ptr<ByteSource> src,
                                                               const OpenOptions& opts, int depth, bool local_file) {
  std::unique_ptr<SnapshotReader> r(new SnapshotReader());
  const std::string path = src->name();
  r->path_ = path;
  r->depth_ = depth;
  r->check_hashes_ = opts.check_chunk_hashes;
  r->src_ = std::move(src);
  r->local_file_ = local_file;
  const uint64_t size = r->file_size_ = r->src_->size();
  auto fail = [&](const Status& s) { return s.Prefixed(path); };

  // Header (SPEC.md "Header").
  char hb[kHeaderSize] = {};
  const size_t hlen = static_cast<size_t>(std::min<uint64_t>(kHeaderSize, size));
  HB_RETURN_IF_ERROR(r->src_->ReadAt(0, hlen, hb));
  Header h;
  HB_RETURN_IF_ERROR(fail(DecodeHeader(hb, hlen, &h)));
  r->major_ = r->trust_.version_major = h.major;
  r->minor_ = r->trust_.version_minor = h.minor;
  const bool has_trust = (h.flags & kFlagTrustRecord) != 0;
  if (h.file_size != 0 && size < h.file_size) {
    return Truncated(path + ": truncated: the file has " + std::to_string(size) + " bytes, the header says " +
                     std::to_string(h.file_size));
  }
  if (h.file_size != 0 && size > h.file_size) {
    return Corrupt(path + ": " + std::to_string(size - h.file_size) + " unexpected bytes after the end (byte " +
                   std::to_string(h.file_size) + ")");
  }
  const uint64_t min_size = kHeaderSize + kManifestFixed + 8 + kIndexFixed + 8 + kTrailerSize;
  if (size < min_size) return Truncated(path + ": truncated: " + std::to_string(size) + " bytes is too short for a snapshot");

  // Trailer (SPEC.md "Trailer").
  char tb[kTrailerSize];
  const uint64_t trailer_at = size - kTrailerSize;
  HB_RETURN_IF_ERROR(r->src_->ReadAt(trailer_at, kTrailerSize, tb));
  Trailer tr;
  Status ts = DecodeTrailer(tb, &tr);
  if (!ts.ok()) {
    if (h.file_size == 0) return Truncated(path + ": no trailer at the end: the snapshot is unfinished or truncated");
    return Corrupt(path + ": " + ts.message() + " (trailer at byte " + std::to_string(trailer_at) + ")");
  }
  // 1.0: the index ends where the trailer starts. 1.1 (trust record flag):
  // the trust record fills the bytes between them (SPEC.md "Trust record").
  const uint64_t trust_min = has_trust ? kTrustFixed + 8 : 0;
  if (tr.index_size < kIndexFixed + 8 || tr.index_size > kIndexFixed + kMaxIndexBody ||
      tr.index_offset < kHeaderSize + kManifestFixed + 8 || tr.index_offset > trailer_at ||
      tr.index_size > trailer_at - tr.index_offset || trailer_at - tr.index_offset - tr.index_size < trust_min ||
      (!has_trust && tr.index_size != trailer_at - tr.index_offset)) {
    return Corrupt(path + ": the trailer points the index outside the file (offset " + std::to_string(tr.index_offset) +
                   ", size " + std::to_string(tr.index_size) + ")");
  }
  const uint64_t index_end = tr.index_offset + tr.index_size;
  r->digest_ = tr.digest;
  r->digest_begin_ = kHeaderSize;
  r->digest_end_ = index_end;  // 1.1: the file digest ends where the trust record starts

  // Manifest record (SPEC.md "Manifest record").
  char mf[kManifestFixed];
  HB_RETURN_IF_ERROR(r->src_->ReadAt(kHeaderSize, kManifestFixed, mf));
  ManifestFixed m;
  auto at = [&](uint64_t off, const Status& s) {
    return s.code() == Code::kOk ? s : Status(s.code(), path + ": " + s.message() + " (at byte " + std::to_string(off) + ")");
  };
  HB_RETURN_IF_ERROR(at(kHeaderSize, DecodeManifestFixed(mf, &m)));
  const uint64_t records_at = kHeaderSize + kManifestFixed + m.base_name_len + 8 + m.manifest_len;
  if (records_at > tr.index_offset) {
    return Corrupt(path + ": the manifest record runs past the index (at byte " + std::to_string(kHeaderSize) + ")");
  }
  std::string rec(kManifestFixed + m.base_name_len + 8, '\0');
  HB_RETURN_IF_ERROR(r->src_->ReadAt(kHeaderSize, rec.size(), rec.data()));
  HB_RETURN_IF_ERROR(at(kHeaderSize, CheckManifestTail(rec.data(), rec.size() - 8, rec.data() + rec.size() - 8, &m)));
  r->manifest_.resize(m.manifest_len);
  HB_RETURN_IF_ERROR(r->src_->ReadAt(kHeaderSize + rec.size(), m.manifest_len, r->manifest_.data()));
  if (XXH3_64bits(r->manifest_.data(), r->manifest_.size()) != m.manifest_hash) {
    return Corrupt(path + ": manifest checksum mismatch (manifest at byte " + std::to_string(kHeaderSize + rec.size()) + ")");
  }
  r->base_ = m.base;

  // Index (SPEC.md "Index").
  std::string index(tr.index_size, '\0');
  HB_RETURN_IF_ERROR(r->src_->ReadAt(tr.index_offset, index.size(), index.data()));
  if (XXH3_64bits(index.data(), index.size()) != tr.index_hash) {
    return Corrupt(path + ": index checksum mismatch (index at byte " + std::to_string(tr.index_offset) + ")");
  }
  const auto* ip = reinterpret_cast<const unsigned char*>(index.data());
  if (std::memcmp(index.data(), kTagIndex, 4) != 0 || GetLE(ip + 4, 4) != 0 ||
      GetLE(ip + 8, 8) != tr.index_size - kIndexFixed) {
    return Corrupt(path + ": bad index record header (at byte " + std::to_string(tr.index_offset) + ")");
  }
  HB_RETURN_IF_ERROR(at(tr.index_offset, DecodeIndexBody(index.data() + kIndexFixed, index.size() - kIndexFixed,
                                                         records_at, tr.index_offset, h.max_chunk_raw, &r->sections_)));
  r->trust_.has_base = !r->base_.digest.zero();
  if (has_trust) HB_RETURN_IF_ERROR(r->ReadTrustRecord(index_end, trailer_at - index_end, rec, index));
  bool has_refs = false;
  for (const auto& s : r->sections_) has_refs |= s.is_ref;
  if (has_refs && r->base_.digest.zero()) return Corrupt(path + ": ref sections but no base snapshot recorded");
  if (has_refs) r->OpenBase(opts);
  return r;
}

// A missing or wrong base does not stop Open (inspect still works); reading
// a ref section then reports why.
void SnapshotReader::OpenBase(const OpenOptions& opts) {
  const std::string want = "base snapshot '" + base_.name + "' (digest " + base_.digest.Hex() + ")";
  if (opts.base_path.empty() && !local_file_) {
    base_error_ = FailedPrecondition(path_ + " refers to " + want + "; a snapshot read from a remote source " +
                                     "finds its base only where --base says");
    return;
  }
  const std::string where =
      opts.base_path.empty() ? (fs::path(path_).parent_path() / base_.name).string() : opts.base_path;
  if (depth_ + 1 >= kMaxBaseDepth) {
    base_error_ = Unsupported(path_ + ": more than " + std::to_string(kMaxBaseDepth) + " levels of base snapshots");
    return;
  }
  trust_.base_check = TrustInfo::BaseCheck::kNotOpened;
  OpenOptions base_opts;
  base_opts.check_chunk_hashes = opts.check_chunk_hashes;
  auto bsrc = FileSource::Open(where);
  auto b = bsrc.ok() ? OpenAt(std::move(bsrc).value(), base_opts, depth_ + 1, /*local_file=*/true)
                     : Result<std::unique_ptr<SnapshotReader>>(bsrc.status());
  if (!b.ok()) {
    base_error_ = FailedPrecondition(path_ + " refers to " + want + ", which could not be opened at " + where + ": " +
                                     b.status().message() + "; pass its path with --base");
    return;
  }
  if (!((*b)->file_digest() == base_.digest)) {
    base_error_ = FailedPrecondition(path_ + " refers to " + want + ", but " + where + " has digest " +
                                     (*b)->file_digest().Hex() + "; pass the right one with --base");
    return;
  }
  // The root recorded for the base covers its manifest, index and chunk
  // hashes: a base with the right XXH3 digest but other content fails here.
  if (!IsZero(trust_.base_root)) {
    const TrustInfo& bt = (*b)->trust();
    if (!bt.has_chunk_hashes || bt.root != trust_.base_root) {
      trust_.base_check = TrustInfo::BaseCheck::kMismatched;
      base_error_ = FailedPrecondition(
          path_ + " refers to " + want + " with root " + HexOf(trust_.base_root) + ", but " + where +
          (bt.has_chunk_hashes ? " has root " + HexOf(bt.root) : std::string(" is a format 1.0 file without one")) +
          "; pass the right one with --base");
      return;
    }
    trust_.base_check = TrustInfo::BaseCheck::kMatched;
  }
  base_reader_ = std::move(b).value();
}

const SectionInfo* SnapshotReader::ResolveRef(const SectionInfo& s) const {
  if (!base_reader_) return nullptr;
  for (const auto& b : base_reader_->sections()) {
    if (b.raw_size == s.raw_size && b.content_hash == s.content_hash) return &b;
  }
  return nullptr;
}

Status SnapshotReader::ReadChunkInto(const SectionInfo& s, size_t i, std::string* scratch, ChunkDecoder* dec,
                                     char* out, bool xxh3_after_sha) const {
  const ChunkInfo& c = s.chunks[i];
  // The index bounds every chunk inside the file; the mapped file is read in
  // place, without a copy.
  auto view = src_->View(c.offset, kChunkHeaderSize + c.stored_size);
  if (!view.ok()) return Status(view.status().code(), path_ + ": " + Where(s, i, c.offset) + ": " + view.status().message());
  const char* rec_bytes = *view;
  Status st;
  if (!rec_bytes) {
    scratch->resize(kChunkHeaderSize + c.stored_size);
    st = src_->ReadAt(c.offset, scratch->size(), scratch->data());
    if (!st.ok()) return st.Prefixed(Where(s, i, c.offset));
    rec_bytes = scratch->data();
  }
  // Format 1.1: first of all, the stored bytes must be the ones the trust
  // record (and so the root a signature covers) names -- whatever the chunk
  // record's own XXH3s say, which whoever swapped the bytes could recompute.
  const bool sha_checked = check_hashes_ && trust_.has_chunk_hashes;
  if (sha_checked) {
    const Hash256 got = crypto::Sha256(rec_bytes + kChunkHeaderSize, c.stored_size);
    if (got != c.sha256) {
      st = Corrupt("stored checksum mismatch: the stored bytes have SHA-256 " + HexOf(got) + ", not " +
                   HexOf(c.sha256) + ", the hash the snapshot's signed hash list names: these are not the bytes " +
                   "it was built with");
    }
  }
  ChunkInfo rec;
  if (st.ok()) st = DecodeChunkHeader(rec_bytes, static_cast<uint32_t>(kMaxChunkRaw), &rec);
  if (st.ok() && !SameChunk(rec, c)) st = Corrupt("chunk record disagrees with the index");
  if (st.ok()) st = dec->Decode(c, rec_bytes + kChunkHeaderSize, out, /*check_xxh3=*/!sha_checked || xxh3_after_sha);
  if (!st.ok()) return Status(st.code(), path_ + ": " + Where(s, i, c.offset) + ": " + st.message());
  return Status::Ok();
}

Result<std::string> SnapshotReader::ReadChunk(std::string_view section, size_t chunk) const {
  const SectionInfo* s = FindSection(section);
  if (!s) return NotFound(path_ + ": no section '" + std::string(section) + "'");
  if (s->is_ref) {
    const SectionInfo* b = ResolveRef(*s);
    if (!b) return base_error_.ok() ? NotFound(path_ + ": the base has no section '" + s->name + "'") : base_error_;
    return base_reader_->ReadChunk(b->name, chunk);
  }
  if (chunk >= s->chunks.size()) return NotFound(path_ + ": section '" + s->name + "' has no chunk " + std::to_string(chunk));
  std::string out(s->chunks[chunk].raw_size, '\0'), scratch;
  ChunkDecoder dec;
  HB_RETURN_IF_ERROR(ReadChunkInto(*s, chunk, &scratch, &dec, out.data()));
  return out;
}

SnapshotReader::ChunkScratch::ChunkScratch() : decoder(std::make_unique<ChunkDecoder>()) {}
SnapshotReader::ChunkScratch::~ChunkScratch() = default;
SnapshotReader::ChunkScratch::ChunkScratch(ChunkScratch&&) noexcept = default;
SnapshotReader::ChunkScratch& SnapshotReader::ChunkScratch::operator=(ChunkScratch&&) noexcept = default;

Result<SnapshotReader::SectionLayout> SnapshotReader::SectionChunks(std::string_view section) const {
  const SectionInfo* s = FindSection(section);
  if (!s) return NotFound(path_ + ": no section '" + std::string(section) + "'");
  if (s->is_ref) {
    const SectionInfo* b = ResolveRef(*s);
    if (!b) return base_error_.ok() ? NotFound(path_ + ": the base has no section '" + s->name + "'") : base_error_;
    return base_reader_->SectionChunks(b->name);
  }
  SectionLayout l;
  l.chunks.reserve(s->chunks.size());
  for (const ChunkInfo& c : s->chunks) {
    l.chunks.push_back({l.raw_size, c.raw_size});
    l.raw_size += c.raw_size;
    l.max_chunk_raw = std::max(l.max_chunk_raw, c.raw_size);
  }
  return l;
}

Status SnapshotReader::DecodeChunkTo(std::string_view section, size_t chunk, char* out, ChunkScratch& scratch) const {
  const SectionInfo* s = FindSection(section);
  if (!s) return NotFound(path_ + ": no section '" + std::string(section) + "'");
  if (s->is_ref) {
    const SectionInfo* b = ResolveRef(*s);
    if (!b) return base_error_.ok() ? NotFound(path_ + ": the base has no section '" + s->name + "'") : base_error_;
    return base_reader_->DecodeChunkTo(b->name, chunk, out, scratch);
  }
  if (chunk >= s->chunks.size()) return NotFound(path_ + ": section '" + s->name + "' has no chunk " + std::to_string(chunk));
  if (!scratch.decoder) scratch.decoder = std::make_unique<ChunkDecoder>();  // a moved-from scratch
  return ReadChunkInto(*s, chunk, &scratch.bytes, scratch.decoder.get(), out);
}

Status SnapshotReader::DecodeSections(const std::vector<const SectionInfo*>& which, int threads,
                                      const ProgressFn& progress, Order order, const Sink& sink) const {
  uint64_t total = 0;
  for (const SectionInfo* s : which) total += s->raw_size;
  std::atomic<uint64_t> done{0};
  std::mutex progress_mu;
  auto report = [&](uint64_t n) {
    const uint64_t d = done += n;
    if (!progress) return;
    std::lock_guard lock(progress_mu);
    progress(d, total);
  };
  using Task = ChunkTask;
  threads = ResolveThreads(threads);
  std::vector<ChunkDecoder> decoders(threads);
  std::vector<std::string> scratch(threads);
  size_t i = 0;
  while (i < which.size()) {
    const SectionInfo& s = *which[i];
    if (s.is_ref) {
      const SectionInfo* b = ResolveRef(s);
      if (!b) {
        if (!base_error_.ok()) return base_error_.Prefixed("section '" + s.name + "'");
        return NotFound(path_ + ": section '" + s.name + "' refers to content " + s.content_hash.Hex() +
                        " that the base snapshot " + base_reader_->path() + " does not hold");
      }
      const uint64_t before = done;
      HB_RETURN_IF_ERROR(base_reader_->DecodeSections(
          {b}, threads,
          [&](uint64_t d, uint64_t) {
            if (progress) progress(before + d, total);
          },
          order,
          [&](const SectionInfo&, const ChunkInfo& c, uint64_t off, std::string_view bytes) {
            return sink(s, c, off, bytes);
          }));
      done = before + s.raw_size;
      ++i;
      continue;
    }
    // A run of sections stored here, decoded together.
    std::vector<Task> tasks;
    std::vector<const SectionInfo*> run;
    for (; i < which.size() && !which[i]->is_ref; ++i) {
      run.push_back(which[i]);
      uint64_t off = 0;
      for (size_t k = 0; k < which[i]->chunks.size(); ++k) {
        tasks.push_back({which[i], k, off});
        off += which[i]->chunks[k].raw_size;
      }
    }
    if (order == Order::kParallel) {
      // Sections without chunks hold no bytes: their hash is that of nothing.
      const Digest128 empty = Hasher128().Get();
      for (const SectionInfo* s : run) {
        if (s->chunks.empty() && !(s->content_hash == empty)) return ContentMismatch(path_, *s, empty);
      }
      OrderedContentHash content(path_, tasks, static_cast<size_t>(threads) * 2);
      std::vector<std::string> out(threads);
      Status st = ParallelFor(tasks.size(), threads, [&](size_t k, int w) {
        if (!content.Admit(k)) return Corrupt(path_ + ": stopped after an earlier failure");
        const Task& t = tasks[k];
        const ChunkInfo& c = t.s->chunks[t.chunk];
        std::string_view bytes;
        Status cs;
        if (c.method != Method::kZero) {
          if (out[w].size() < c.raw_size) out[w].resize(c.raw_size);
          // The SHA-256 covers the stored bytes (their XXH3 would say
          // nothing more), and the decoded bytes are checked by the
          // section's content hash behind the workers.
          cs = ReadChunkInto(*t.s, t.chunk, &scratch[w], &decoders[w], out[w].data(), /*xxh3_after_sha=*/false);
          bytes = std::string_view(out[w].data(), c.raw_size);
        }
        if (cs.ok()) cs = sink(*t.s, c, t.raw_offset, bytes);
        if (!cs.ok()) {
          content.Fail(k);
          return cs;
        }
        report(c.raw_size);
        return content.Done(k, &out[w]);
      });
      HB_RETURN_IF_ERROR(content.error());
      HB_RETURN_IF_ERROR(st);
      continue;
    }
    size_t run_at = 0;
    Hasher128 content;
    // Closes every section of the run before `upto`, checking its content hash.
    auto close_until = [&](const SectionInfo* upto) -> Status {
      while (run_at < run.size() && run[run_at] != upto) {
        if (!(content.Get() == run[run_at]->content_hash)) return ContentMismatch(path_, *run[run_at], content.Get());
        content = Hasher128();
        ++run_at;
      }
      return Status::Ok();
    };
    // Output buffers go back to a pool once consumed: no fresh pages per chunk.
    std::mutex pool_mu;
    std::vector<std::string> pool;
    HB_RETURN_IF_ERROR(RunOrdered<std::string>(
        tasks.size(), threads,
        [&](size_t k, int worker, std::string* out) {
          {
            std::lock_guard lock(pool_mu);
            if (!pool.empty()) {
              out->swap(pool.back());
              pool.pop_back();
            }
          }
          const ChunkInfo& c = tasks[k].s->chunks[tasks[k].chunk];
          out->resize(c.raw_size);
          return ReadChunkInto(*tasks[k].s, tasks[k].chunk, &scratch[worker], &decoders[worker], out->data());
        },
        [&](size_t k, std::string& bytes) {
          const Task& t = tasks[k];
          HB_RETURN_IF_ERROR(close_until(t.s));
          content.Update(bytes.data(), bytes.size());
          HB_RETURN_IF_ERROR(sink(*t.s, t.s->chunks[t.chunk], t.raw_offset, bytes));
          report(bytes.size());
          std::lock_guard lock(pool_mu);
          pool.push_back(std::move(bytes));
          return Status::Ok();
        }));
    HB_RETURN_IF_ERROR(close_until(nullptr));
  }
  return Status::Ok();
}

// The trust record (SPEC.md "Trust record"): its hash list goes onto the
// chunks, its root is computed, its signatures verified.
Status SnapshotReader::ReadTrustRecord(uint64_t at, uint64_t size, const std::string& manifest_record,
                                       const std::string& index) {
  uint64_t chunks = 0;
  for (const auto& s : sections_) chunks += s.chunks.size();
  auto bad = [&](const Status& st) {
    return st.ok() ? st : Status(st.code(), path_ + ": " + st.message() + " (trust record at byte " + std::to_string(at) + ")");
  };
  // Bounded by the index before anything is allocated.
  if (size > TrustRecordSize(chunks, kMaxSignatures)) {
    return bad(Corrupt("trust record of " + std::to_string(size) + " bytes is larger than " +
                       std::to_string(chunks) + " chunk hashes and " + std::to_string(kMaxSignatures) +
                       " signatures take"));
  }
  std::string b(size, '\0');
  HB_RETURN_IF_ERROR(src_->ReadAt(at, size, b.data()));
  TrustRecord t;
  HB_RETURN_IF_ERROR(bad(DecodeTrustRecord(b.data(), size, chunks, &t)));
  if (!IsZero(t.base_root) && base_.digest.zero()) return bad(Corrupt("a base root but no base snapshot"));
  size_t k = 0;
  for (auto& s : sections_) {
    for (auto& c : s.chunks) c.sha256 = t.chunk_hashes[k++];
  }
  trust_.has_chunk_hashes = true;
  trust_.chunk_count = chunks;
  trust_.base_root = t.base_root;
  trust_.root = crypto::SnapshotRoot(manifest_record, manifest_, index, t.chunk_hashes, t.base_root);
  for (const auto& sig : t.signatures) {
    trust_.signatures.push_back(
        {sig.public_key, crypto::Fingerprint(sig.public_key), crypto::VerifyRoot(sig.public_key, sig.signature, trust_.root)});
  }
  return Status::Ok();
}

// The section and section end records (read by stream decoders) must say
// what the index says.
Status SnapshotReader::CheckSectionRecords(const SectionInfo& s) const {
  const std::string what = path_ + ": section record at byte " + std::to_string(s.offset);
  std::string rec(kSectionFixed + s.name.size() + 8, '\0');
  HB_RETURN_IF_ERROR(src_->ReadAt(s.offset, rec.size(), rec.data()));
  SectionInfo got;
  uint16_t name_len = 0;
  uint32_t chunks = 0;
  Status st = DecodeSectionFixed(rec.data(), &got, &name_len, &chunks);
  if (st.ok() && XXH3_64bits(rec.data(), rec.size() - 8) != GetLE(reinterpret_cast<const unsigned char*>(rec.data()) + rec.size() - 8, 8)) {
    st = Corrupt("checksum mismatch");
  }
  if (!st.ok()) return Status(st.code(), what + ": " + st.message());
  if (name_len != s.name.size() || rec.compare(kSectionFixed, name_len, s.name) != 0 || got.elem != s.elem ||
      got.is_ref != s.is_ref || got.mode != s.mode || got.raw_size != s.raw_size || chunks != s.chunks.size()) {
    return Corrupt(what + " disagrees with the index (section '" + s.name + "')");
  }
  const uint64_t end_at =
      s.chunks.empty() ? s.offset + rec.size() : s.chunks.back().offset + kChunkHeaderSize + s.chunks.back().stored_size;
  char end[kSectionEndSize];
  HB_RETURN_IF_ERROR(src_->ReadAt(end_at, kSectionEndSize, end));
  Digest128 content;
  st = DecodeSectionEnd(end, &content);
  if (st.ok() && !(content == s.content_hash)) st = Corrupt("content hash disagrees with the index");
  if (!st.ok()) return Status(st.code(), path_ + ": section '" + s.name + "' end record at byte " + std::to_string(end_at) + ": " + st.message());
  return Status::Ok();
}

Status SnapshotReader::Verify(int threads, ProgressFn progress) const {
  std::vector<const SectionInfo*> all;
  for (const auto& s : sections_) all.push_back(&s);
  HB_RETURN_IF_ERROR(DecodeSections(all, threads, progress, Order::kOrdered, [](auto&&...) { return Status::Ok(); }));
  for (const auto& s : sections_) HB_RETURN_IF_ERROR(CheckSectionRecords(s));
  // The whole-file digest covers every byte from the header's end to the trailer.
  Hasher128 h;
  std::string buf(std::min<uint64_t>(8u << 20, digest_end_ - digest_begin_), '\0');
  for (uint64_t off = digest_begin_; off < digest_end_;) {
    const uint64_t n = std::min<uint64_t>(buf.size(), digest_end_ - off);
    HB_RETURN_IF_ERROR(src_->ReadAt(off, n, buf.data()));
    h.Update(buf.data(), n);
    off += n;
  }
  if (!(h.Get() == digest_)) {
    return Corrupt(path_ + ": whole-file digest mismatch (bytes " + std::to_string(digest_begin_) + "-" +
                   std::to_string(digest_end_) + "); every chunk is intact, so a record header or the index is damaged");
  }
  return Status::Ok();
}

namespace {
// pwrite of a whole buffer.
Status PwriteAll(int fd, std::string_view b, uint64_t off, const std::string& what) {
  uint64_t w = 0;
  while (w < b.size()) {
    ssize_t n = ::pwrite(fd, b.data() + w, b.size() - w, static_cast<off_t>(off + w));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write " + what, errno);
    w += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

// Creates (or truncates) a file of `size` bytes; zero chunks stay holes.
Result<int> CreateSized(const std::string& path, uint32_t mode, uint64_t size) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 0777);
  if (fd < 0) return ErrnoError("create " + path, errno);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    Status e = ErrnoError("size " + path, errno);
    ::close(fd);
    return e;
  }
  return fd;
}
}  // namespace

Status SnapshotReader::DecodeIntoFiles(const std::vector<const SectionInfo*>& which, const std::vector<int>& fds,
                                       int threads, const ProgressFn& progress) const {
  std::map<const SectionInfo*, int> fd_of;
  for (size_t i = 0; i < which.size(); ++i) fd_of[which[i]] = fds[i];
  // Workers write their chunks themselves; zero chunks stay holes. On an
  // error the files may hold part of the sections: the caller discards them.
  return DecodeSections(which, threads, progress, Order::kParallel,
                        [&](const SectionInfo& s, const ChunkInfo& c, uint64_t off, std::string_view bytes) {
                          if (c.method == Method::kZero) return Status::Ok();
                          return PwriteAll(fd_of.at(&s), bytes, off, s.name);
                        });
}

// Each section goes to a temporary beside its final path, renamed into place
// only once every section extracted has passed its chunk and content checks:
// on failure no unchecked file is left and files already there are untouched.
Status SnapshotReader::ExtractTo(const std::string& dir, const std::string& prefix, int threads,
                                 ProgressFn progress) const {
  std::vector<const SectionInfo*> which;
  std::vector<int> fds;
  std::vector<std::string> temps, finals;
  const std::string suffix = ".hotboot-extract." + std::to_string(::getpid());
  Status st;
  for (const auto& s : sections_) {
    if (s.name.rfind(prefix, 0) != 0) continue;
    fs::path p = fs::path(dir) / s.name.substr(prefix.size());
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    // A short name of its own: a temporary named after a long file name
    // could pass NAME_MAX.
    const std::string tmp = (p.parent_path() / ("." + std::to_string(which.size()) + suffix)).string();
    auto fd = CreateSized(tmp, s.mode, s.raw_size);
    if (!fd.ok()) {
      st = fd.status();
      break;
    }
    fds.push_back(*fd);
    temps.push_back(tmp);
    finals.push_back(p.string());
    which.push_back(&s);
  }
  if (st.ok()) st = DecodeIntoFiles(which, fds, threads, progress);
  for (size_t i = 0; i < fds.size(); ++i) {
    if (::close(fds[i]) != 0 && st.ok()) st = ErrnoError("close " + temps[i], errno);
  }
  size_t renamed = 0;
  for (; st.ok() && renamed < temps.size(); ++renamed) {
    if (::rename(temps[renamed].c_str(), finals[renamed].c_str()) != 0) {
      st = ErrnoError("rename to " + finals[renamed], errno);
      break;
    }
  }
  for (size_t i = renamed; i < temps.size(); ++i) ::unlink(temps[i].c_str());
  return st;
}

Status SnapshotReader::ExtractSection(std::string_view name, const std::string& out_path, int threads,
                                      ProgressFn progress) const {
  const SectionInfo* s = FindSection(name);
  if (!s) return NotFound(path_ + ": no section '" + std::string(name) + "'");
  const std::string tmp = out_path + ".tmp." + std::to_string(::getpid());
  HB_ASSIGN_OR_RETURN(int fd, CreateSized(tmp, 0644, s->raw_size));
  Status st = DecodeIntoFiles({s}, {fd}, threads, progress);
  if (::close(fd) != 0 && st.ok()) st = ErrnoError("close " + tmp, errno);
  if (st.ok() && ::rename(tmp.c_str(), out_path.c_str()) != 0) st = ErrnoError("rename to " + out_path, errno);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

Status SnapshotReader::ExtractSectionToFd(std::string_view name, int fd, int threads, ProgressFn progress) const {
  const SectionInfo* s = FindSection(name);
  if (!s) return NotFound(path_ + ": no section '" + std::string(name) + "'");
  if (::ftruncate(fd, static_cast<off_t>(s->raw_size)) != 0) {
    return ErrnoError("size the file for section '" + s->name + "'", errno);
  }
  return DecodeIntoFiles({s}, {fd}, threads, progress);
}

Result<std::string> SnapshotReader::ReadSection(std::string_view name, uint64_t max_bytes) const {
  const SectionInfo* s = FindSection(name);
  if (!s) return NotFound(path_ + ": no section '" + std::string(name) + "'");
  if (s->raw_size > max_bytes) {
    return FailedPrecondition(path_ + ": section '" + s->name + "' has " + std::to_string(s->raw_size) +
                              " bytes, more than the " + std::to_string(max_bytes) + " asked to read into memory");
  }
  std::string out(s->raw_size, '\0');
  HB_RETURN_IF_ERROR(DecodeSections({s}, 1, nullptr, Order::kOrdered,
                                    [&](const SectionInfo&, const ChunkInfo&, uint64_t off, std::string_view bytes) {
                                      std::memcpy(out.data() + off, bytes.data(), bytes.size());
                                      return Status::Ok();
                                    }));
  return out;
}

}  // namespace hotboot::snapfile
