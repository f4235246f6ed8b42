// Decodes a snapshot front to back (formats/SPEC.md "Reading a stream"): a
// push parser that takes bytes in any pieces, checks every record as it
// completes, decodes chunks on worker threads and delivers events in order.
// It never buffers more than the record it is in, and a record's size is
// checked against the format's caps before its bytes are awaited.
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "crypto.h"
#include "hotboot/snapshot_file.h"
#include "pipeline.h"
#include "records.h"
#include "xxh3_fast.h"

namespace hotboot::snapfile {

namespace {

enum class State {
  kHeader, kManifestFixed, kManifestTail, kManifestBody, kRecordTag, kSectionFixed, kSectionTail,
  kChunkHeader, kChunkBody, kSectionEnd, kIndexFixed, kIndexBody, kTrustFixed, kTrustBody, kTrailer, kDone, kFailed
};

const char* StateName(State s) {
  switch (s) {
    case State::kHeader: return "the header";
    case State::kManifestFixed:
    case State::kManifestTail: return "the manifest record";
    case State::kManifestBody: return "the manifest";
    case State::kRecordTag: return "a record tag";
    case State::kSectionFixed:
    case State::kSectionTail: return "a section record";
    case State::kChunkHeader: return "a chunk record header";
    case State::kChunkBody: return "a chunk's stored bytes";
    case State::kSectionEnd: return "a section end record";
    case State::kIndexFixed:
    case State::kIndexBody: return "the index";
    case State::kTrustFixed:
    case State::kTrustBody: return "the trust record";
    case State::kTrailer: return "the trailer";
    default: return "the end";
  }
}

// One chunk decoded by a worker; delivered in order by the feeding thread.
struct Job {
  ChunkInfo chunk;
  std::string stored;
  std::string raw;
  Hash256 sha256{};  // of the stored bytes, taken by the decoding worker
  Status status;
  bool done = false;
};

// Hashes the stored bytes (format 1.1), then decodes them.
Status HashAndDecode(ChunkDecoder* dec, Job* j, bool hash) {
  if (hash) j->sha256 = crypto::Sha256(j->stored.data(), j->stored.size());
  j->raw.resize(j->chunk.raw_size);
  return dec->Decode(j->chunk, j->stored.data(), j->raw.data());
}

// A section start, a chunk or a section end, in file order.
struct Item {
  enum Kind { kSection, kChunk, kEnd } kind;
  size_t section;  // index into sections_
  uint64_t raw_offset = 0;
  std::shared_ptr<Job> job;
};

}  // namespace

struct StreamDecoder::Impl {
  StreamEvents ev;
  std::string name;
  int threads;
  State state = State::kHeader;
  size_t need = kHeaderSize;
  std::string buf;  // the bytes of the record (part) being read
  uint64_t pos = 0;         // bytes consumed
  uint64_t record_at = 0;   // where the current record started
  Status failed;
  Header header;
  ManifestFixed manifest;
  std::string manifest_fixed;  // fixed part + base name, for the record hash
  std::string manifest_record;  // the whole record, manifest included (for the root)
  std::vector<Hash256> chunk_sha;  // each delivered chunk's SHA-256, in file order
  TrustInfo trust;
  bool hash_chunks = false;  // the header announces a trust record
  std::vector<SectionInfo> sections;
  uint32_t chunks_left = 0;
  uint64_t raw_seen = 0;
  uint64_t index_at = 0;
  std::string index;
  std::unordered_set<std::string> names;
  XXH3_state_t digest;
  XXH3_state_t content;
  uint64_t max_raw = 0, raw_total = 0;

  // Workers and the in-order delivery queue.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> todo;
  std::deque<Item> items;
  size_t in_flight = 0;
  bool stop = false;
  std::vector<std::thread> pool;

  Impl(StreamEvents e, int t, std::string n) : ev(std::move(e)), name(std::move(n)), threads(ResolveThreads(t)) {
    XXH3_128bits_reset(&digest);
    // One thread: chunks are decoded inline, as they complete.
    if (threads > 1) {
      for (int i = 0; i < threads; ++i) pool.emplace_back([this] { Work(); });
    }
  }
  ~Impl() {
    {
      std::lock_guard lock(mu);
      stop = true;
      cv.notify_all();
    }
    for (auto& t : pool) t.join();
  }

  void Work() {
    ChunkDecoder dec;
    for (;;) {
      std::shared_ptr<Job> j;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || !todo.empty(); });
        if (stop) return;
        j = std::move(todo.front());
        todo.pop_front();
      }
      Status s = HashAndDecode(&dec, j.get(), hash_chunks);
      std::string().swap(j->stored);
      std::lock_guard lock(mu);
      j->status = s;
      j->done = true;
      cv.notify_all();
    }
  }

  Status Bad(Code code, const std::string& what) const {
    return Status(code, name + ": " + what + " (record at byte " + std::to_string(record_at) + ")");
  }
  Status Fail(const Status& s) {
    if (s.ok()) return s;
    failed = s;
    state = State::kFailed;
    return s;
  }

  // Delivers the items at the front of the queue; with `all`, waits for every one.
  Status Deliver(bool all) {
    for (;;) {
      Item it;
      {
        std::unique_lock lock(mu);
        if (items.empty()) return Status::Ok();
        Item& front = items.front();
        if (front.kind == Item::kChunk && !front.job->done) {
          if (!all && in_flight < static_cast<size_t>(threads) * 2) return Status::Ok();
          cv.wait(lock, [&] { return front.job->done; });
        }
        it = std::move(items.front());
        items.pop_front();
        if (it.kind == Item::kChunk) --in_flight;
      }
      const SectionInfo& s = sections[it.section];
      switch (it.kind) {
        case Item::kSection:
          XXH3_128bits_reset(&content);
          if (ev.on_section) HB_RETURN_IF_ERROR(ev.on_section(s));
          break;
        case Item::kChunk: {
          if (!it.job->status.ok()) {
            return Status(it.job->status.code(), name + ": section '" + s.name + "' chunk at byte " +
                                                     std::to_string(it.job->chunk.offset) + ": " + it.job->status.message());
          }
          XXH3_128bits_update(&content, it.job->raw.data(), it.job->raw.size());
          if (hash_chunks) chunk_sha.push_back(it.job->sha256);
          if (ev.on_data) HB_RETURN_IF_ERROR(ev.on_data(s, it.raw_offset, it.job->raw));
          break;
        }
        case Item::kEnd: {
          if (!s.is_ref) {
            XXH128_hash_t d = XXH3_128bits_digest(&content);
            if (!(Digest128{d.high64, d.low64} == s.content_hash)) {
              return Status(Code::kCorrupt, name + ": section '" + s.name + "': content hash mismatch");
            }
          }
          if (ev.on_section_end) HB_RETURN_IF_ERROR(ev.on_section_end(s));
          break;
        }
      }
    }
  }

  void Expect(State s, size_t n) {
    if (s == State::kChunkHeader || s == State::kSectionEnd || s == State::kRecordTag || s == State::kTrailer ||
        s == State::kTrustFixed) {
      record_at = pos;
    }
    state = s;
    need = n;
    buf.clear();
  }

  // Handles a complete record part in buf; sets the next state.
  Status Step() {
    const char* p = buf.data();
    switch (state) {
      case State::kHeader: {
        Status s = DecodeHeader(p, buf.size(), &header);
        if (!s.ok()) return Status(s.code(), name + ": " + s.message());
        hash_chunks = (header.flags & kFlagTrustRecord) != 0;
        trust.version_major = header.major;
        trust.version_minor = header.minor;
        record_at = pos;
        Expect(State::kManifestFixed, kManifestFixed);
        return Status::Ok();
      }
      case State::kManifestFixed: {
        Status s = DecodeManifestFixed(p, &manifest);
        if (!s.ok()) return Bad(s.code(), s.message());
        manifest_fixed = buf;
        Expect(State::kManifestTail, manifest.base_name_len + 8);
        return Status::Ok();
      }
      case State::kManifestTail: {
        manifest_fixed.append(buf, 0, manifest.base_name_len);
        Status s = CheckManifestTail(manifest_fixed.data(), manifest_fixed.size(), p + manifest.base_name_len, &manifest);
        if (!s.ok()) return Bad(s.code(), s.message());
        manifest_record = manifest_fixed;
        manifest_record.append(p + manifest.base_name_len, 8);
        Expect(State::kManifestBody, manifest.manifest_len);
        return manifest.manifest_len == 0 ? Step() : Status::Ok();
      }
      case State::kManifestBody: {
        if (XXH3_64bits(p, buf.size()) != manifest.manifest_hash) return Bad(Code::kCorrupt, "manifest checksum mismatch");
        if (hash_chunks) manifest_record += buf;
        trust.has_base = !manifest.base.digest.zero();
        if (ev.on_manifest) HB_RETURN_IF_ERROR(ev.on_manifest(buf, manifest.base));
        NextRecord();
        return Status::Ok();
      }
      case State::kRecordTag: {
        if (std::memcmp(p, kTagSection, 4) == 0) {
          Expect(State::kSectionFixed, kSectionFixed - 4);
          buf.assign(kTagSection, 4);
          need = kSectionFixed;
        } else if (std::memcmp(p, kTagIndex, 4) == 0) {
          Expect(State::kIndexFixed, kIndexFixed);
          buf.assign(kTagIndex, 4);
        } else {
          return Bad(Code::kCorrupt, "expected a section record or the index");
        }
        return Status::Ok();
      }
      case State::kSectionFixed: {
        SectionInfo s;
        uint16_t name_len = 0;
        Status st = DecodeSectionFixed(p, &s, &name_len, &chunks_left);
        if (!st.ok()) return Bad(st.code(), st.message());
        if (sections.size() >= kMaxSections) return Bad(Code::kCorrupt, "too many sections");
        s.offset = record_at;
        sections.push_back(std::move(s));
        need = kSectionFixed + name_len + 8;
        state = State::kSectionTail;
        return Status::Ok();
      }
      case State::kSectionTail: {
        SectionInfo& s = sections.back();
        const size_t name_len = buf.size() - kSectionFixed - 8;
        if (GetLE(reinterpret_cast<const unsigned char*>(p) + buf.size() - 8, 8) != XXH3_64bits(p, buf.size() - 8)) {
          return Bad(Code::kCorrupt, "section record checksum mismatch");
        }
        s.name.assign(p + kSectionFixed, name_len);
        Status st = CheckSectionName(s.name);
        if (!st.ok()) return Bad(st.code(), st.message());
        if (!names.insert(s.name).second) return Bad(Code::kCorrupt, "duplicate section '" + s.name + "'");
        if (s.is_ref && (manifest.base.digest.zero() || s.raw_size == 0)) {
          return Bad(Code::kCorrupt, "section '" + s.name + "' is a ref but there is no base or nothing to refer to");
        }
        raw_seen = 0;
        Push({Item::kSection, sections.size() - 1, 0, nullptr});
        if (chunks_left == 0) {
          Expect(State::kSectionEnd, kSectionEndSize);
        } else {
          Expect(State::kChunkHeader, kChunkHeaderSize);
        }
        return Status::Ok();
      }
      case State::kChunkHeader: {
        ChunkInfo c;
        Status st = DecodeChunkHeader(p, header.max_chunk_raw, &c);
        if (!st.ok()) return Bad(st.code(), "section '" + sections.back().name + "': " + st.message());
        c.offset = record_at;
        if (c.raw_size > sections.back().raw_size - raw_seen) {
          return Bad(Code::kCorrupt, "section '" + sections.back().name + "': chunks exceed the section's size");
        }
        raw_total += c.raw_size;
        if (max_raw && raw_total > max_raw) {
          return Bad(Code::kFailedPrecondition, "the stream decodes to more than the " + std::to_string(max_raw) +
                                                    " bytes allowed");
        }
        auto job = std::make_shared<Job>();
        job->chunk = c;
        pending = job;
        Expect(State::kChunkBody, c.stored_size);
        return c.stored_size == 0 ? Step() : Status::Ok();
      }
      case State::kChunkBody: {
        SectionInfo& s = sections.back();
        pending->stored = std::move(buf);
        buf.clear();
        s.chunks.push_back(pending->chunk);
        s.stored_size += kChunkHeaderSize + pending->chunk.stored_size;
        Item it{Item::kChunk, sections.size() - 1, raw_seen, pending};
        raw_seen += pending->chunk.raw_size;
        if (pool.empty()) {
          if (!inline_dec) inline_dec = std::make_unique<ChunkDecoder>();
          pending->status = HashAndDecode(inline_dec.get(), pending.get(), hash_chunks);
          std::string().swap(pending->stored);
          pending->done = true;
        } else {
          std::lock_guard lock(mu);
          todo.push_back(pending);
          cv.notify_all();
        }
        {
          std::lock_guard lock(mu);
          ++in_flight;
        }
        pending.reset();
        Push(std::move(it));
        HB_RETURN_IF_ERROR(Deliver(false));
        if (--chunks_left == 0) {
          Expect(State::kSectionEnd, kSectionEndSize);
        } else {
          Expect(State::kChunkHeader, kChunkHeaderSize);
        }
        return Status::Ok();
      }
      case State::kSectionEnd: {
        SectionInfo& s = sections.back();
        Status st = DecodeSectionEnd(p, &s.content_hash);
        if (!st.ok()) return Bad(st.code(), "section '" + s.name + "': " + st.message());
        if (!s.is_ref && raw_seen != s.raw_size) return Bad(Code::kCorrupt, "section '" + s.name + "': its chunks do not add up to its size");
        Push({Item::kEnd, sections.size() - 1, 0, nullptr});
        HB_RETURN_IF_ERROR(Deliver(false));
        NextRecord();
        return Status::Ok();
      }
      case State::kIndexFixed: {
        const auto* u = reinterpret_cast<const unsigned char*>(p);
        const uint64_t body = GetLE(u + 8, 8);
        if (GetLE(u + 4, 4) != 0 || body > kMaxIndexBody) return Bad(Code::kCorrupt, "bad index record header");
        index_at = record_at;
        index = buf;
        Expect(State::kIndexBody, body);
        return body == 0 ? Step() : Status::Ok();
      }
      case State::kIndexBody: {
        index += buf;
        HB_RETURN_IF_ERROR(Deliver(true));
        if (index != EncodeIndex(sections)) return Bad(Code::kCorrupt, "the index disagrees with the records before it");
        if (hash_chunks) {
          Expect(State::kTrustFixed, kTrustFixed);
        } else {
          Expect(State::kTrailer, kTrailerSize);
        }
        return Status::Ok();
      }
      case State::kTrustFixed: {
        // Bound the record by its counts before awaiting its bytes.
        if (std::memcmp(p, kTagTrust, 4) != 0) return Bad(Code::kCorrupt, "expected the trust record (tag HBTS)");
        const auto* u = reinterpret_cast<const unsigned char*>(p);
        const uint64_t sigs = GetLE(u + 5, 1), chunks = GetLE(u + 8, 8);
        if (sigs > kMaxSignatures || chunks != chunk_sha.size()) {
          return Bad(Code::kCorrupt, "trust record: " + std::to_string(chunks) + " chunk hashes and " +
                                         std::to_string(sigs) + " signatures for " + std::to_string(chunk_sha.size()) +
                                         " chunks");
        }
        need = TrustRecordSize(chunks, sigs);
        if (header.file_size != 0 && record_at + need + kTrailerSize != header.file_size) {
          return Bad(Code::kCorrupt, "trust record: its counts make it " + std::to_string(need) +
                                         " bytes, which does not end where the header's file size puts the trailer");
        }
        state = State::kTrustBody;
        return Status::Ok();
      }
      case State::kTrustBody: {
        TrustRecord t;
        Status st = DecodeTrustRecord(p, buf.size(), chunk_sha.size(), &t);
        if (!st.ok()) return Bad(st.code(), st.message());
        if (!IsZero(t.base_root) && manifest.base.digest.zero()) return Bad(Code::kCorrupt, "a base root but no base snapshot");
        size_t k = 0;
        for (const auto& s : sections) {
          for (size_t i = 0; i < s.chunks.size(); ++i, ++k) {
            if (t.chunk_hashes[k] != chunk_sha[k]) {
              return Bad(Code::kCorrupt, "section '" + s.name + "' chunk " + std::to_string(i) + " (file offset " +
                                             std::to_string(s.chunks[i].offset) + "): stored checksum mismatch: the stored bytes have SHA-256 " +
                                             HexOf(chunk_sha[k]) + ", not " + HexOf(t.chunk_hashes[k]) +
                                             ", the hash the snapshot's signed hash list names");
            }
          }
        }
        trust.has_chunk_hashes = true;
        trust.chunk_count = chunk_sha.size();
        trust.base_root = t.base_root;
        trust.root = crypto::SnapshotRoot(manifest_record, {}, index, t.chunk_hashes, t.base_root);
        for (const auto& sig : t.signatures) {
          trust.signatures.push_back({sig.public_key, crypto::Fingerprint(sig.public_key),
                                      crypto::VerifyRoot(sig.public_key, sig.signature, trust.root)});
        }
        std::string().swap(manifest_record);
        std::vector<Hash256>().swap(chunk_sha);
        if (ev.on_trust) HB_RETURN_IF_ERROR(ev.on_trust(trust));
        Expect(State::kTrailer, kTrailerSize);
        return Status::Ok();
      }
      case State::kTrailer: {
        Trailer t;
        Status st = DecodeTrailer(p, &t);
        if (!st.ok()) return Bad(st.code(), st.message());
        XXH128_hash_t d = XXH3_128bits_digest(&digest);
        if (t.index_offset != index_at || t.index_size != index.size() ||
            t.index_hash != XXH3_64bits(index.data(), index.size())) {
          return Bad(Code::kCorrupt, "the trailer does not describe the index");
        }
        if (!(t.digest == Digest128{d.high64, d.low64})) return Bad(Code::kCorrupt, "whole-file digest mismatch");
        if (header.file_size != 0 && header.file_size != pos) {
          return Bad(Code::kCorrupt, "the header says the file has " + std::to_string(header.file_size) + " bytes, it has " +
                                         std::to_string(pos));
        }
        Expect(State::kDone, 0);
        return Status::Ok();
      }
      default: return Internal("stream decoder in a bad state");
    }
  }

  void NextRecord() { Expect(State::kRecordTag, 4); }
  void Push(Item it) {
    std::lock_guard lock(mu);
    items.push_back(std::move(it));
  }

  std::shared_ptr<Job> pending;
  std::unique_ptr<ChunkDecoder> inline_dec;  // when there is no pool

  Status Feed(const char* data, size_t n) {
    if (state == State::kFailed) return failed;
    while (n > 0) {
      if (state == State::kDone) {
        return Fail(Status(Code::kCorrupt, name + ": unexpected bytes after the end of the snapshot (byte " +
                                               std::to_string(pos) + ")"));
      }
      const size_t take = std::min(n, need - buf.size());
      buf.append(data, take);
      // The file digest covers everything between header and trailer, but
      // the trust record (format 1.1), so that signing keeps it.
      if (state != State::kHeader && state != State::kTrailer && state != State::kTrustFixed &&
          state != State::kTrustBody) {
        XXH3_128bits_update(&digest, data, take);
      }
      pos += take;
      data += take;
      n -= take;
      if (buf.size() < need) break;
      HB_RETURN_IF_ERROR(Fail(Step()));
    }
    HB_RETURN_IF_ERROR(Fail(Deliver(false)));
    if (state == State::kDone) return Status::Ok();
    return Status(Code::kNeedMore, name + ": need " + std::to_string(need - buf.size()) + " more bytes of " +
                                       StateName(state) + " (at byte " + std::to_string(pos) + ")");
  }

  Status Finish() {
    if (state == State::kFailed) return failed;
    if (state == State::kDone) return Status::Ok();
    return Fail(Status(Code::kTruncated, name + ": truncated: the stream ended at byte " + std::to_string(pos) +
                                             " inside " + StateName(state) + " (" + std::to_string(need - buf.size()) +
                                             " more bytes expected)"));
  }
};

StreamDecoder::StreamDecoder(StreamEvents events, int threads, std::string name)
    : impl_(std::make_unique<Impl>(std::move(events), threads, std::move(name))) {}
StreamDecoder::~StreamDecoder() = default;
Status StreamDecoder::Feed(const char* data, size_t n) { return impl_->Feed(data, n); }
Status StreamDecoder::Finish() { return impl_->Finish(); }
uint64_t StreamDecoder::consumed() const { return impl_->pos; }
bool StreamDecoder::done() const { return impl_->state == State::kDone; }
void StreamDecoder::set_max_raw_bytes(uint64_t n) { impl_->max_raw = n; }
const TrustInfo& StreamDecoder::trust() const { return impl_->trust; }

Status DecodeStream(int fd, const StreamEvents& events, int threads, const std::string& name, ProgressFn progress) {
  StreamDecoder dec(events, threads, name);
  std::string buf(1u << 20, '\0');
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read " + name, errno);
    if (n == 0) return dec.Finish();
    Status s = dec.Feed(buf.data(), static_cast<size_t>(n));
    if (progress) progress(dec.consumed(), 0);
    if (s.ok()) {
      // Complete: anything after the trailer is an error.
      char extra;
      ssize_t m;
      while ((m = ::read(fd, &extra, 1)) < 0 && errno == EINTR) {
      }
      if (m > 0) return dec.Feed(&extra, 1);
      return Status::Ok();
    }
    if (s.code() != Code::kNeedMore) return s;
  }
}

}  // namespace hotboot::snapfile
