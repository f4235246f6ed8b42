// Encoders and decoders of the container's records (formats/SPEC.md); shared
// by the writer, the seekable reader and the stream decoder so that the three
// agree byte for byte. Decoders take exactly the bytes of a record and return
// Corrupt naming the field; callers add where the record is.
#pragma once

#include <zstd.h>

#include <string>
#include <vector>

#include "hotboot/snapshot_file.h"
#include "hotboot/snapshot_format.h"

namespace hotboot::snapfile {

struct Header {
  uint16_t major = kVersionMajor, minor = kVersionMinor;
  uint32_t flags = 0;
  uint64_t file_size = 0;  // 0: not recorded
  uint32_t max_chunk_raw = 0;
};
std::string EncodeHeader(const Header& h);
// Checks magic, version, flags, reserved bytes and the header hash (in the
// order that gives the most useful message).
Status DecodeHeader(const char* p, size_t n, Header* h);

struct ManifestFixed {
  uint64_t manifest_len = 0;
  uint64_t manifest_hash = 0;
  BaseRef base;
  uint16_t base_name_len = 0;
};
std::string EncodeManifestRecord(const std::string& manifest, const BaseRef& base);
// The 48 fixed bytes; then the caller reads base_name_len + 8 more.
Status DecodeManifestFixed(const char* p, ManifestFixed* m);
// Checks the record hash over fixed + base name; fills m->base.name.
Status CheckManifestTail(const char* record, size_t fixed_and_name_len, const char* hash_at, ManifestFixed* m);

std::string EncodeSectionRecord(const SectionInfo& s, uint32_t chunk_count);
// The 32 fixed bytes: fills everything but the name; *name_len and *chunks out.
Status DecodeSectionFixed(const char* p, SectionInfo* s, uint16_t* name_len, uint32_t* chunk_count);
Status CheckSectionName(const std::string& name);

std::string EncodeChunkHeader(const ChunkInfo& c);
Status DecodeChunkHeader(const char* p, uint32_t max_chunk_raw, ChunkInfo* c);

std::string EncodeSectionEnd(const Digest128& content);
Status DecodeSectionEnd(const char* p, Digest128* content);

std::string EncodeIndex(const std::vector<SectionInfo>& sections);  // the whole record
// The index body (after the 16 fixed bytes); checks every bound and that the
// records it lists tile [first_record, index_offset) in order.
Status DecodeIndexBody(const char* p, size_t n, uint64_t first_record, uint64_t index_offset,
                       uint32_t max_chunk_raw, std::vector<SectionInfo>* sections);

struct Trailer {
  uint64_t index_offset = 0, index_size = 0, index_hash = 0;
  Digest128 digest;
};
std::string EncodeTrailer(const Trailer& t);
Status DecodeTrailer(const char* p, Trailer* t);

// Trust record (SPEC.md "Trust record", format 1.1).
struct TrustSignature {
  uint8_t alg = kSignatureEd25519;
  Hash256 public_key{};
  std::array<uint8_t, 64> signature{};
};
struct TrustRecord {
  uint8_t hash_alg = kHashSha256;
  Hash256 base_root{};
  std::vector<Hash256> chunk_hashes;  // index order
  std::vector<TrustSignature> signatures;
};
std::string EncodeTrustRecord(const TrustRecord& t);
// The record's size for these counts.
uint64_t TrustRecordSize(uint64_t chunks, uint64_t signatures);
// The whole record (n bytes, exactly the record): checks the record hash,
// the tag, reserved bytes, algorithms, counts (chunk hashes must number
// expect_chunks) and that the sizes add up to n.
Status DecodeTrustRecord(const char* p, size_t n, uint64_t expect_chunks, TrustRecord* t);

// Chunk payloads (SPEC.md "Chunk record", "Byte planes").
struct EncodedChunk {
  Method method = Method::kRaw;
  Transform transform = Transform::kNone;
  std::string stored;
  uint64_t stored_hash = 0;
  uint64_t raw_hash = 0;
};
class ChunkEncoder {
 public:
  ChunkEncoder();
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;
  Status Encode(const char* raw, size_t n, ElemType elem, int level, bool transforms, EncodedChunk* out);

 private:
  Transform Choose(const char* raw, size_t n, ElemType elem);
  Status Compress(const char* raw, size_t n, Transform t, int level, std::string* out);
  ZSTD_CCtx* cctx_;
  std::string planes_, alt_;
};

class ChunkDecoder {
 public:
  ChunkDecoder();
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;
  // Checks the stored hash, decodes into out (c.raw_size bytes), checks the
  // raw hash. Messages say which check failed. Without check_xxh3 only the
  // decoding itself is checked (the caller checked the stored bytes' SHA-256).
  Status Decode(const ChunkInfo& c, const char* stored, char* out, bool check_xxh3 = true);

 private:
  ZSTD_DCtx* dctx_;
  std::string planes_;
};

// Byte planes: plane k holds byte k of every w-byte word; a tail of n % w
// bytes follows the planes unchanged.
void SplitPlanes(const char* in, size_t n, int w, char* out);
void JoinPlanes(const char* in, size_t n, int w, char* out);
int PlaneWidth(Transform t);  // 1 for kNone

}  // namespace hotboot::snapfile
