// The snapshot container, version 1.1 (formats/SPEC.md): a header; a
// manifest record; named sections, each a run of independently compressed,
// checksummed chunk records closed by a content hash; an index for random
// access; a trust record (the SHA-256 of every chunk's stored bytes and
// Ed25519 signatures over the snapshot's root); a trailer with the whole-file
// digest. Version 1.0 files (no trust record) still read, as unsigned.
//
// Keys, signing and trust policies: hotboot/signing.h.
//
// Seekable: SnapshotReader::Open reads only the header, the manifest, the
// index and the trailer; one chunk can be read without the rest.
// Streamable: StreamDecoder decodes the same bytes front to back from a pipe.
// Sections are addressed by content (XXH3-128 of their bytes), so a snapshot
// may refer to sections of a base snapshot instead of storing them again.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::snapfile {

// What a section's bytes are made of; a hint that selects the byte-plane
// transform the writer tries (SPEC.md "Sections").
enum class ElemType : uint8_t { kBytes = 0, kBf16 = 1, kFp16 = 2, kFp32 = 3 };
// Per chunk (SPEC.md "Chunk record").
enum class Method : uint8_t { kRaw = 0, kZstd = 1, kZero = 2 };
enum class Transform : uint8_t { kNone = 0, kBytePlanes2 = 1, kBytePlanes4 = 2 };

// A SHA-256 digest, a root, or a raw Ed25519 public key (32 bytes each).
using Hash256 = std::array<uint8_t, 32>;
std::string HexOf(const Hash256& h);
bool IsZero(const Hash256& h);

class PrivateKey;  // hotboot/signing.h

const char* ElemTypeName(ElemType e);
const char* MethodName(Method m);
const char* TransformName(Transform t);

struct WriteOptions {
  int zstd_level = 3;
  size_t chunk_size = 4u << 20;
  int threads = 0;  // 0: all cores
  // Try the byte-plane transform on chunks (per chunk, kept only when it wins).
  bool transforms = true;
  // A base snapshot: sections whose content (size and XXH3-128) the base
  // already holds are written as references to it, not stored again.
  std::string base_path;
  // Sign at write time with this key (hotboot/signing.h); null: the trust
  // record carries no signature (`hotboot sign` adds one later).
  const PrivateKey* signing_key = nullptr;
};

using ProgressFn = std::function<void(uint64_t done_raw_bytes, uint64_t total_raw_bytes)>;

struct SectionSource {
  std::string name;
  std::string file_path;  // read from this file, or when empty ...
  std::string bytes;      // ... these bytes
  uint32_t mode = 0644;
  ElemType elem = ElemType::kBytes;
};

struct ChunkInfo {
  uint64_t offset = 0;  // absolute file offset of the chunk record
  uint64_t stored_size = 0;
  uint64_t raw_size = 0;
  Method method = Method::kRaw;
  Transform transform = Transform::kNone;
  uint64_t stored_hash = 0;
  uint64_t raw_hash = 0;
  // SHA-256 of the stored bytes, from the trust record (format 1.1; zero in
  // 1.0 files). Not part of the chunk record or the index.
  Hash256 sha256{};
};

struct Digest128 {
  uint64_t hi = 0, lo = 0;
  bool operator==(const Digest128&) const = default;
  bool zero() const { return hi == 0 && lo == 0; }
  std::string Hex() const;
};

struct SectionInfo {
  std::string name;
  uint32_t mode = 0644;
  ElemType elem = ElemType::kBytes;
  bool is_ref = false;  // content lives in the base snapshot
  uint64_t raw_size = 0;
  uint64_t stored_size = 0;  // bytes of chunk records in this file
  Digest128 content_hash;    // XXH3-128 of the section's bytes
  uint64_t offset = 0;       // absolute file offset of the section record
  std::vector<ChunkInfo> chunks;
};

// The base snapshot a snapshot refers to (SPEC.md "Manifest record").
struct BaseRef {
  Digest128 digest;  // the base's whole-file digest; zero: no base
  std::string name;  // its file name when written, a hint for finding it
};

// One section per regular file under dir (recursive), named "<prefix>/<path>".
Result<std::vector<SectionSource>> SectionsFromDirectory(const std::string& dir, const std::string& prefix);

// Writes to out_path + ".tmp.<pid>", fsyncs, renames, fsyncs the directory.
// On failure the temporary is removed and out_path is untouched; a process
// killed mid-write leaves only the temporary, never out_path.
Status WriteSnapshot(const std::string& out_path, const std::string& manifest_json,
                     const std::vector<SectionSource>& sections, const WriteOptions& opts = {},
                     ProgressFn progress = nullptr);

class ChunkDecoder;

struct OpenOptions {
  // Where the base snapshot is, for snapshots with ref sections; empty: the
  // base's recorded file name, next to the snapshot.
  std::string base_path;
  // Check each chunk's stored bytes against its SHA-256 in the trust record
  // before decoding it. For measurement only (bench format compares the cost
  // in one run): anything that uses the bytes leaves it on.
  bool check_chunk_hashes = true;
};

// One signature of the trust record, checked by the reader.
struct SignatureInfo {
  Hash256 public_key{};     // raw Ed25519 public key
  std::string fingerprint;  // "ed25519:" + 16 hex digits of SHA-256(public_key)
  bool valid = false;       // it verifies over this snapshot's root
};

// What a reader learnt from the trust record (SPEC.md "Trust record",
// "Root and signatures"), checked when the snapshot was opened (seekable) or
// when the trust record arrived (stream).
struct TrustInfo {
  uint16_t version_major = 0, version_minor = 0;
  // False for format 1.0 files: no chunk hashes, no root, no signatures.
  bool has_chunk_hashes = false;
  uint64_t chunk_count = 0;  // SHA-256s listed (= chunks stored in this file)
  Hash256 root{};            // SHA-256 root over manifest, index, chunk hashes, base root
  // The snapshot's base, when it has one: the root it records for it (zero
  // when the base is a 1.0 file) and whether the opened base had that root.
  bool has_base = false;
  Hash256 base_root{};
  enum class BaseCheck { kNone, kMatched, kMismatched, kNotOpened };
  BaseCheck base_check = BaseCheck::kNone;
  std::vector<SignatureInfo> signatures;
  std::string root_hex() const { return HexOf(root); }
  bool signed_validly() const;  // at least one valid signature
};

// Where a reader's bytes come from: a local file (SnapshotReader::Open with a
// path), or a snapshot still arriving over the network (hotboot/fetch.h),
// whose reads block until the bytes they need have arrived and been checked
// against the digests of the blobs they came in.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // What messages call it: a path, a URL, an oci:// reference.
  virtual const std::string& name() const = 0;
  // Bytes [offset, offset + n) into out (offset + n <= size(), checked by
  // the reader); blocks until they are there; fails when they cannot be had.
  virtual Status ReadAt(uint64_t offset, size_t n, char* out) const = 0;
  // The same bytes in place, valid as long as the source, when it holds them
  // mapped (blocks likewise); nullptr: use ReadAt.
  virtual Result<const char*> View(uint64_t offset, size_t n) const { return static_cast<const char*>(nullptr); }
};

// A regular file, mapped read-only (pread where mapping fails).
Result<std::shared_ptr<ByteSource>> OpenFileSource(const std::string& path);

class SnapshotReader {
 public:
  ~SnapshotReader();
  static Result<std::unique_ptr<SnapshotReader>> Open(const std::string& path, const OpenOptions& opts = {});
  // The same, over any source. A snapshot with ref sections finds its base
  // as a file (opts.base_path, else next to a file source); a remote source
  // has no "next to": its base must be given.
  static Result<std::unique_ptr<SnapshotReader>> Open(std::shared_ptr<ByteSource> source,
                                                      const OpenOptions& opts = {});

  const std::string& path() const { return path_; }
  const std::string& manifest_json() const { return manifest_; }
  const std::vector<SectionInfo>& sections() const { return sections_; }
  const SectionInfo* FindSection(std::string_view name) const;
  uint64_t file_size() const { return file_size_; }
  Digest128 file_digest() const { return digest_; }
  std::string file_digest_hex() const { return digest_.Hex(); }
  uint16_t version_major() const { return major_; }
  uint16_t version_minor() const { return minor_; }
  const BaseRef& base() const { return base_; }
  // The opened base snapshot, when this one has ref sections.
  const SnapshotReader* base_reader() const { return base_reader_.get(); }
  // Chunk hashes, root and signatures, checked by Open (cheap: hashes the
  // manifest, the index and the hash list, verifies at most 16 signatures).
  // Every chunk read through this reader is checked against its SHA-256
  // before it is decoded. A trust policy: CheckTrust in hotboot/signing.h.
  const TrustInfo& trust() const { return trust_; }

  // Every chunk (stored hash, decoding, raw hash), every section's content
  // hash and the whole-file digest; the first problem names section, chunk
  // and file offset. Ref sections are checked in the base.
  Status Verify(int threads = 0, ProgressFn progress = nullptr) const;
  // Sections whose name starts with prefix, into dir (prefix stripped); each
  // chunk is verified before its bytes are written, each section's content
  // hash as its bytes complete. Files are written as temporaries and renamed
  // into place only when every section passed: on failure none is left.
  Status ExtractTo(const std::string& dir, const std::string& prefix, int threads = 0,
                   ProgressFn progress = nullptr) const;
  // One section's bytes into a file (replaced), checked as by ExtractTo; on
  // failure out_path is untouched.
  Status ExtractSection(std::string_view name, const std::string& out_path, int threads = 0,
                        ProgressFn progress = nullptr) const;
  // One section's bytes into `fd`, an empty regular file open read-write
  // (sized here; zero chunks stay holes), checked as by ExtractTo. On failure
  // the file may hold part of the section: the caller discards it.
  Status ExtractSectionToFd(std::string_view name, int fd, int threads = 0, ProgressFn progress = nullptr) const;
  // A whole section in memory; refuses sections larger than max_bytes.
  Result<std::string> ReadSection(std::string_view name, uint64_t max_bytes = 1ull << 30) const;
  // One chunk's decoded bytes, checked (random access).
  Result<std::string> ReadChunk(std::string_view section, size_t chunk) const;

  // Decoding a section chunk by chunk into the caller's memory (a weights
  // upload into pinned staging buffers, hotboot/gpu_memory.h UploadSection).
  // Where each chunk's bytes go in the section; a ref section's chunks are
  // the base snapshot's.
  struct ChunkSpan {
    uint64_t raw_offset = 0;
    uint64_t raw_size = 0;
  };
  struct SectionLayout {
    uint64_t raw_size = 0;
    uint64_t max_chunk_raw = 0;  // the largest chunk's raw size (<= kMaxChunkRaw)
    std::vector<ChunkSpan> chunks;
  };
  Result<SectionLayout> SectionChunks(std::string_view section) const;
  // Per-thread state of DecodeChunkTo (a read buffer and a zstd decoder):
  // one per thread, reused across chunks and sections.
  struct ChunkScratch {
    ChunkScratch();
    ~ChunkScratch();
    ChunkScratch(ChunkScratch&&) noexcept;
    ChunkScratch& operator=(ChunkScratch&&) noexcept;
    std::string bytes;
    std::unique_ptr<ChunkDecoder> decoder;
  };
  // Chunk `chunk` of `section` decoded into out (its raw_size bytes; a zero
  // chunk fills zeros), checked as ReadChunk checks it: the stored bytes'
  // SHA-256 against the trust record when the file has one, the chunk's
  // stored and raw XXH3. A single chunk has no section content hash to fall
  // back on, so the raw XXH3 is always checked. Thread-safe with distinct
  // scratches.
  Status DecodeChunkTo(std::string_view section, size_t chunk, char* out, ChunkScratch& scratch) const;

 private:
  using Sink = std::function<Status(const SectionInfo&, const ChunkInfo&, uint64_t raw_offset, std::string_view)>;
  // Both check every chunk and every section's content hash. kOrdered: the
  // sink runs on the calling thread in file order. kParallel (extraction at
  // full speed): the sink runs on the workers in any order (it must be
  // thread-safe) and zero chunks reach it undecoded (empty bytes); the content
  // hash is streamed in order behind it, so a section's bytes have all reached
  // the sink before its mismatch is reported, and the caller must discard them.
  enum class Order { kOrdered, kParallel };
  SnapshotReader() = default;
  static Result<std::unique_ptr<SnapshotReader>> OpenAt(std::shared_ptr<ByteSource> src, const OpenOptions& opts,
                                                        int depth, bool local_file);
  void OpenBase(const OpenOptions& opts);
  // `xxh3_after_sha`: also check the chunk's XXH3s when its SHA-256 was
  // checked (verify does; extraction, whose sections' content hashes are
  // checked anyway, does not: SPEC.md "Trust record", what readers check).
  Status ReadChunkInto(const SectionInfo& s, size_t index, std::string* scratch, ChunkDecoder* dec, char* out,
                       bool xxh3_after_sha = true) const;
  // Decodes the sections in `which` over `threads` workers and hands each
  // chunk's checked bytes to `sink` (see Order).
  Status DecodeSections(const std::vector<const SectionInfo*>& which, int threads, const ProgressFn& progress,
                        Order order, const Sink& sink) const;
  // Decodes sections into files that exist and have their sizes already,
  // each worker writing its own chunks.
  Status DecodeIntoFiles(const std::vector<const SectionInfo*>& which, const std::vector<int>& fds, int threads,
                         const ProgressFn& progress) const;
  const SectionInfo* ResolveRef(const SectionInfo& s) const;
  Status CheckSectionRecords(const SectionInfo& s) const;
  Status ReadTrustRecord(uint64_t at, uint64_t size, const std::string& manifest_record, const std::string& index);

  std::string path_;
  std::shared_ptr<ByteSource> src_;
  bool local_file_ = false;  // src_ is a file: a base is looked for next to it
  uint64_t file_size_ = 0;
  uint16_t major_ = 0, minor_ = 0;
  Digest128 digest_;
  uint64_t digest_begin_ = 0, digest_end_ = 0;  // the digested byte range
  std::string manifest_;
  BaseRef base_;
  std::unique_ptr<SnapshotReader> base_reader_;
  Status base_error_;  // why the base could not be used, when it could not
  std::vector<SectionInfo> sections_;
  int depth_ = 0;
  TrustInfo trust_;
  bool check_hashes_ = true;
};

// What a StreamDecoder reports, in file order. Any callback may return an
// error to stop decoding. on_data gets each chunk's bytes once checked.
struct StreamEvents {
  std::function<Status(const std::string& manifest_json, const BaseRef& base)> on_manifest;
  std::function<Status(const SectionInfo& section)> on_section;  // chunks not filled in yet
  std::function<Status(const SectionInfo& section, uint64_t raw_offset, const std::string& bytes)> on_data;
  // After the content hash matched (for a ref section: the recorded hash).
  std::function<Status(const SectionInfo& section)> on_section_end;
  // Format 1.1: once the trust record arrived and every chunk's SHA-256 (taken
  // as it was decoded) matched it; signatures are checked, a policy is the
  // caller's (CheckTrust). The list comes last, so a stream reader cannot
  // check a chunk before its bytes are delivered: the seekable reader can.
  std::function<Status(const TrustInfo& trust)> on_trust;
};

// Decodes a snapshot front to back from bytes fed in any pieces; chunks are
// decoded on `threads` workers (bounded: a few chunks in flight), events are
// delivered in order on the caller's thread. Memory stays bounded by the
// format's caps whatever the input claims: buffers grow only with bytes fed.
class StreamDecoder {
 public:
  explicit StreamDecoder(StreamEvents events, int threads = 0, std::string name = "<stream>");
  ~StreamDecoder();
  StreamDecoder(const StreamDecoder&) = delete;
  StreamDecoder& operator=(const StreamDecoder&) = delete;

  // kNeedMore: everything fed was taken, more is needed. OK: the snapshot is
  // complete and checked (feeding more is then an error). Anything else: the
  // input is bad, and stays so.
  Status Feed(const char* data, size_t n);
  // The input ended: OK when complete, Truncated (saying where) otherwise.
  Status Finish();
  uint64_t consumed() const;
  bool done() const;
  // Refuse input that decodes to more than n bytes (a guard for untrusted
  // input; 0: no limit).
  void set_max_raw_bytes(uint64_t n);
  // The trust record's findings, once done (has_chunk_hashes false for 1.0).
  const TrustInfo& trust() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads fd to its end through a StreamDecoder.
Status DecodeStream(int fd, const StreamEvents& events, int threads = 0, const std::string& name = "<stream>",
                    ProgressFn progress = nullptr);

}  // namespace hotboot::snapfile
