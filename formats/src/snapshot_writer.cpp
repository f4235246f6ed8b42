// Writes a snapshot (formats/SPEC.md): chunks are encoded in parallel and
// written in order with a bounded number in flight, so memory stays bounded
// whatever the snapshot's size. Sections the base snapshot already holds are
// written as references.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <map>
#include <set>

#include "crypto.h"
#include "hotboot/signing.h"
#include "hotboot/snapshot_file.h"
#include "hotboot/io.h"
#include "pipeline.h"
#include "records.h"
#include "hotboot/temp_files.h"
#include "xxh3_fast.h"

namespace hotboot::snapfile {

namespace fs = std::filesystem;

namespace {

struct Task {
  size_t section;
  uint64_t raw_offset;
  uint64_t raw_size;
};

struct Encoded {
  std::string raw;  // kept for the section's content hash, taken in order
  EncodedChunk chunk;
  Hash256 sha256{};  // of chunk.stored, taken on the worker (SPEC.md "Trust record")
};

class FdCloser {
 public:
  explicit FdCloser(int fd) : fd(fd) {}
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
  int fd;
};

Status ReadRange(const SectionSource& s, int fd, uint64_t off, uint64_t len, std::string* out) {
  out->resize(len);
  if (s.file_path.empty()) {
    out->assign(s.bytes, off, len);
    return Status::Ok();
  }
  Status st = io::PreadAll(fd, out->data(), len, off, s.file_path);
  if (st.code() == Code::kTruncated) return IoError("read " + s.file_path + ": the file shrank while being packed");
  return st;
}

// Everything written after the header goes through here: it counts the
// position and feeds the whole-file digest.
class Output {
 public:
  explicit Output(int fd) : fd_(fd) { XXH3_128bits_reset(&digest_); }
  Status Write(const std::string& b, bool digested = true) {
    HB_RETURN_IF_ERROR(io::WriteAll(fd_, b.data(), b.size(), "snapshot"));
    if (digested) XXH3_128bits_update(&digest_, b.data(), b.size());
    pos_ += b.size();
    return Status::Ok();
  }
  uint64_t pos() const { return pos_; }
  Digest128 digest() const {
    XXH128_hash_t d = XXH3_128bits_digest(&digest_);
    return {d.high64, d.low64};
  }

 private:
  int fd_;
  uint64_t pos_ = 0;
  XXH3_state_t digest_;
};

Result<Digest128> HashSource(const SectionSource& s, int fd, uint64_t size) {
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  std::string buf;
  for (uint64_t off = 0; off < size; off += 8u << 20) {
    HB_RETURN_IF_ERROR(ReadRange(s, fd, off, std::min<uint64_t>(8u << 20, size - off), &buf));
    XXH3_128bits_update(&st, buf.data(), buf.size());
  }
  XXH128_hash_t d = XXH3_128bits_digest(&st);
  return Digest128{d.high64, d.low64};
}

class Writer {
 public:
  Writer(int fd, const WriteOptions& opts, ProgressFn progress) : out_(fd), fd_(fd), opts_(opts), progress_(progress) {}

  Status Run(const std::string& manifest, const std::vector<SectionSource>& sections) {
    HB_RETURN_IF_ERROR(Plan(sections));
    HB_RETURN_IF_ERROR(OpenBase(sections));
    Header h;
    h.flags = kFlagTrustRecord;
    h.max_chunk_raw = static_cast<uint32_t>(opts_.chunk_size);
    HB_RETURN_IF_ERROR(out_.Write(EncodeHeader(h), /*digested=*/false));
    const std::string manifest_record = EncodeManifestRecord(manifest, base_);
    HB_RETURN_IF_ERROR(out_.Write(manifest_record));

    std::vector<ChunkEncoder> encoders(ResolveThreads(opts_.threads));
    auto produce = [&](size_t i, int worker, Encoded* e) {
      const Task& t = tasks_[i];
      HB_RETURN_IF_ERROR(ReadRange(sections[t.section], fds_[t.section]->fd, t.raw_offset, t.raw_size, &e->raw));
      HB_RETURN_IF_ERROR(encoders[worker].Encode(e->raw.data(), e->raw.size(), sections[t.section].elem,
                                                 opts_.zstd_level, opts_.transforms, &e->chunk));
      e->sha256 = crypto::Sha256(e->chunk.stored.data(), e->chunk.stored.size());
      return Status::Ok();
    };
    auto consume = [&](size_t i, Encoded& e) { return WriteChunk(tasks_[i], e); };
    HB_RETURN_IF_ERROR(RunOrdered<Encoded>(tasks_.size(), opts_.threads, produce, consume));
    HB_RETURN_IF_ERROR(AdvanceTo(infos_.size()));

    // Index and trailer (SPEC.md "Index", "Trailer").
    Trailer tr;
    tr.index_offset = out_.pos();
    const std::string index = EncodeIndex(infos_);
    HB_RETURN_IF_ERROR(out_.Write(index));
    tr.index_size = index.size();
    tr.index_hash = XXH3_64bits(index.data(), index.size());
    tr.digest = out_.digest();  // ends where the trust record starts
    HB_RETURN_IF_ERROR(WriteTrust(manifest_record, index));
    HB_RETURN_IF_ERROR(out_.Write(EncodeTrailer(tr), false));
    // The header records the final size, so a reader tells truncation apart.
    h.file_size = out_.pos();
    const std::string header = EncodeHeader(h);
    if (::pwrite(fd_, header.data(), header.size(), 0) != static_cast<ssize_t>(header.size())) {
      return ErrnoError("write snapshot header", errno);
    }
    if (::fsync(fd_) != 0) return ErrnoError("fsync snapshot", errno);
    return Status::Ok();
  }

 private:
  Status Plan(const std::vector<SectionSource>& sections) {
    if (opts_.chunk_size == 0 || opts_.chunk_size > kMaxChunkRaw) {
      return InvalidArgument("chunk size must be 1.." + std::to_string(kMaxChunkRaw));
    }
    if (sections.size() > kMaxSections) return InvalidArgument("too many sections");
    std::set<std::string> names;
    for (size_t i = 0; i < sections.size(); ++i) {
      const auto& s = sections[i];
      if (!CheckSectionName(s.name).ok()) return InvalidArgument("bad section name '" + s.name + "'");
      if (!names.insert(s.name).second) return InvalidArgument("duplicate section name '" + s.name + "'");
      uint64_t size = s.bytes.size();
      int sfd = -1;
      if (!s.file_path.empty()) {
        sfd = ::open(s.file_path.c_str(), O_RDONLY | O_CLOEXEC);
        if (sfd < 0) return ErrnoError("open " + s.file_path, errno);
        struct stat st{};
        if (::fstat(sfd, &st) != 0) {
          ::close(sfd);
          return ErrnoError("stat " + s.file_path, errno);
        }
        size = static_cast<uint64_t>(st.st_size);
      }
      fds_.push_back(std::make_unique<FdCloser>(sfd));
      SectionInfo info;
      info.name = s.name;
      info.mode = s.mode & 07777;
      info.elem = s.elem;
      info.raw_size = size;
      infos_.push_back(std::move(info));
      total_ += size;
    }
    return Status::Ok();
  }

  // SPEC.md "Trust record": the chunk hashes in index order, the base's
  // root, and a signature when a key was given.
  Status WriteTrust(const std::string& manifest_record, const std::string& index) {
    TrustRecord t;
    t.base_root = base_root_;
    for (const auto& s : infos_) {
      for (const auto& c : s.chunks) t.chunk_hashes.push_back(c.sha256);
    }
    if (opts_.signing_key) {
      const Hash256 root = crypto::SnapshotRoot(manifest_record, {}, index, t.chunk_hashes, t.base_root);
      TrustSignature sig;
      sig.public_key = opts_.signing_key->public_key().raw;
      HB_ASSIGN_OR_RETURN(sig.signature, opts_.signing_key->SignRoot(root));
      t.signatures.push_back(sig);
    }
    return out_.Write(EncodeTrustRecord(t), /*digested=*/false);
  }

  // Sections whose size and content hash the base holds become refs.
  Status OpenBase(const std::vector<SectionSource>& sections) {
    if (opts_.base_path.empty()) return MakeTasks();
    auto base = SnapshotReader::Open(opts_.base_path);
    if (!base.ok()) return base.status().Prefixed("base snapshot");
    base_.digest = (*base)->file_digest();
    // A 1.0 base has no root: the snapshot records zero and a trust policy
    // will not accept it (its base is not covered).
    if ((*base)->trust().has_chunk_hashes) base_root_ = (*base)->trust().root;
    base_.name = fs::path(opts_.base_path).filename().string();
    std::multimap<uint64_t, Digest128> by_size;
    for (const auto& s : (*base)->sections()) {
      if (s.raw_size > 0) by_size.emplace(s.raw_size, s.content_hash);
    }
    for (size_t i = 0; i < sections.size(); ++i) {
      auto [lo, hi] = by_size.equal_range(infos_[i].raw_size);
      if (lo == hi) continue;
      HB_ASSIGN_OR_RETURN(Digest128 h, HashSource(sections[i], fds_[i]->fd, infos_[i].raw_size));
      for (auto it = lo; it != hi; ++it) {
        if (it->second == h) {
          infos_[i].is_ref = true;
          infos_[i].content_hash = h;
          total_ -= infos_[i].raw_size;
          break;
        }
      }
    }
    return MakeTasks();
  }

  Status MakeTasks() {
    for (size_t i = 0; i < infos_.size(); ++i) {
      if (infos_[i].is_ref) continue;
      for (uint64_t off = 0; off < infos_[i].raw_size; off += opts_.chunk_size) {
        tasks_.push_back({i, off, std::min<uint64_t>(opts_.chunk_size, infos_[i].raw_size - off)});
      }
    }
    return Status::Ok();
  }

  // Writes the records up to and including the start of section `target`:
  // the end of the open section, then the records of every section before
  // `target` (refs and empty ones have no chunks). target == size: all.
  Status AdvanceTo(size_t target) {
    for (;;) {
      if (open_ && next_ - 1 == target) return Status::Ok();
      if (open_) {
        SectionInfo& s = infos_[next_ - 1];
        if (!s.is_ref) {
          XXH128_hash_t d = XXH3_128bits_digest(&content_);
          s.content_hash = {d.high64, d.low64};
        }
        HB_RETURN_IF_ERROR(out_.Write(EncodeSectionEnd(s.content_hash)));
        open_ = false;
      }
      if (next_ > target || next_ >= infos_.size()) return Status::Ok();
      SectionInfo& s = infos_[next_];
      s.offset = out_.pos();
      const uint64_t chunks = s.is_ref ? 0 : (s.raw_size + opts_.chunk_size - 1) / opts_.chunk_size;
      HB_RETURN_IF_ERROR(out_.Write(EncodeSectionRecord(s, static_cast<uint32_t>(chunks))));
      XXH3_128bits_reset(&content_);
      ++next_;
      open_ = true;
    }
  }

  Status WriteChunk(const Task& t, Encoded& e) {
    HB_RETURN_IF_ERROR(AdvanceTo(t.section));
    ChunkInfo c;
    c.offset = out_.pos();
    c.stored_size = e.chunk.stored.size();
    c.raw_size = t.raw_size;
    c.method = e.chunk.method;
    c.transform = e.chunk.transform;
    c.stored_hash = e.chunk.stored_hash;
    c.raw_hash = e.chunk.raw_hash;
    c.sha256 = e.sha256;
    HB_RETURN_IF_ERROR(out_.Write(EncodeChunkHeader(c)));
    HB_RETURN_IF_ERROR(out_.Write(e.chunk.stored));
    XXH3_128bits_update(&content_, e.raw.data(), e.raw.size());
    SectionInfo& s = infos_[t.section];
    s.chunks.push_back(c);
    s.stored_size += kChunkHeaderSize + c.stored_size;
    done_ += t.raw_size;
    if (progress_) progress_(done_, total_);
    return Status::Ok();
  }

  Output out_;
  int fd_;
  const WriteOptions& opts_;
  ProgressFn progress_;
  std::vector<std::unique_ptr<FdCloser>> fds_;
  std::vector<SectionInfo> infos_;
  std::vector<Task> tasks_;
  BaseRef base_;
  Hash256 base_root_{};
  uint64_t total_ = 0, done_ = 0;
  size_t next_ = 0;  // the first section whose record is not written yet
  bool open_ = false;  // section next_ - 1 awaits its end record
  XXH3_state_t content_;
};

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
  if (manifest_json.size() > kMaxManifestSize) return InvalidArgument("the manifest is larger than 16 MiB");
  const std::string tmp = TempPathFor(out_path);
  // Exclusive, no symlink followed; stale temporaries of dead writers (and signers) go first.
  auto created = CreateTemporary(out_path, 0644);
  if (!created.ok()) return created.status().Prefixed("writing snapshot " + out_path);
  const int fd = *created;
  Status s = Writer(fd, opts, progress).Run(manifest_json, sections);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + tmp, errno);
  if (s.ok() && ::rename(tmp.c_str(), out_path.c_str()) != 0) s = ErrnoError("rename " + tmp + " to " + out_path, errno);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s.Prefixed("writing snapshot " + out_path);
  }
  SyncParentDir(out_path);
  return Status::Ok();
}

}  // namespace hotboot::snapfile
