// Record codecs and chunk payload codecs of the container (formats/SPEC.md).
#include "records.h"

#include <emmintrin.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "xxh3_fast.h"

namespace hotboot::snapfile {

namespace {

const unsigned char* U(const char* p) { return reinterpret_cast<const unsigned char*>(p); }
uint64_t Get(const char* p, size_t at, int n) { return GetLE(U(p) + at, n); }
uint64_t Hash64(const char* p, size_t n) { return XXH3_64bits(p, n); }
bool AllZero(const char* p, size_t n) {
  return std::all_of(p, p + n, [](char c) { return c == 0; });
}
std::string VersionString(uint64_t major, uint64_t minor) {
  return std::to_string(major) + "." + std::to_string(minor);
}

}  // namespace

std::string Digest128::Hex() const {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016" PRIx64 "%016" PRIx64, hi, lo);
  return buf;
}

const char* ElemTypeName(ElemType e) {
  switch (e) {
    case ElemType::kBytes: return "bytes";
    case ElemType::kBf16: return "bf16";
    case ElemType::kFp16: return "fp16";
    case ElemType::kFp32: return "fp32";
  }
  return "?";
}
const char* MethodName(Method m) {
  switch (m) {
    case Method::kRaw: return "raw";
    case Method::kZstd: return "zstd";
    case Method::kZero: return "zero";
  }
  return "?";
}
const char* TransformName(Transform t) {
  switch (t) {
    case Transform::kNone: return "none";
    case Transform::kBytePlanes2: return "planes2";
    case Transform::kBytePlanes4: return "planes4";
  }
  return "?";
}

// ---- Header (SPEC.md "Header") ----

std::string EncodeHeader(const Header& h) {
  std::string b(kMagic, 8);
  PutU16(b, h.major);
  PutU16(b, h.minor);
  PutU32(b, h.flags);
  PutU64(b, h.file_size);
  PutU32(b, h.max_chunk_raw);
  PutZeros(b, kHeaderHashAt - b.size());
  PutU64(b, Hash64(b.data(), b.size()));
  return b;
}

Status DecodeHeader(const char* p, size_t n, Header* h) {
  if (n < 8 || std::memcmp(p, kMagic, 8) != 0) return Corrupt("not a hotboot snapshot (bad magic)");
  if (n < kHeaderSize) return Truncated("the input ends inside the header (" + std::to_string(n) + " of 64 bytes)");
  h->major = static_cast<uint16_t>(Get(p, 8, 2));
  h->minor = static_cast<uint16_t>(Get(p, 10, 2));
  // The version is judged before the hash: a newer major may lay out its
  // header differently, and "upgrade hotboot" is the useful answer.
  if (h->major != kVersionMajor) {
    return Unsupported("snapshot format version " + VersionString(h->major, h->minor) +
                       (h->major > kVersionMajor ? " is newer than" : " is older than") +
                       " this hotboot reads (" + VersionString(kVersionMajor, kVersionMinor) + ", any " +
                       std::to_string(kVersionMajor) + ".x)" +
                       (h->major > kVersionMajor ? "; upgrade hotboot" : "; rebuild the snapshot"));
  }
  if (Get(p, kHeaderHashAt, 8) != Hash64(p, kHeaderHashAt)) return Corrupt("header checksum mismatch (bytes 0-55)");
  h->flags = static_cast<uint32_t>(Get(p, 12, 4));
  h->file_size = Get(p, 16, 8);
  h->max_chunk_raw = static_cast<uint32_t>(Get(p, 24, 4));
  const uint32_t unknown_required = h->flags & ~kFlagsCompatibleMask & ~kFlagsKnown;
  if (unknown_required) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", unknown_required);
    return Unsupported(std::string("the snapshot needs features this hotboot does not know (header flags ") + buf +
                       ", version " + VersionString(h->major, h->minor) + "); upgrade hotboot");
  }
  if (!AllZero(p + 28, kHeaderHashAt - 28)) return Corrupt("header reserved bytes 28-55 must be zero");
  if (h->max_chunk_raw == 0 || h->max_chunk_raw > kMaxChunkRaw) {
    return Corrupt("header max chunk size " + std::to_string(h->max_chunk_raw) + " is out of bounds (1.." +
                   std::to_string(kMaxChunkRaw) + ")");
  }
  if (h->file_size != 0 && h->file_size < kHeaderSize + kManifestFixed + 8 + kIndexFixed + 8 + kTrailerSize) {
    return Corrupt("header file size " + std::to_string(h->file_size) + " is too small for a snapshot");
  }
  return Status::Ok();
}

// ---- Manifest record ----

std::string EncodeManifestRecord(const std::string& manifest, const BaseRef& base) {
  std::string b(kTagManifest, 4);
  PutU32(b, 0);
  PutU64(b, manifest.size());
  PutU64(b, Hash64(manifest.data(), manifest.size()));
  PutU64(b, base.digest.hi);
  PutU64(b, base.digest.lo);
  PutU16(b, static_cast<uint16_t>(base.name.size()));
  PutZeros(b, 6);
  b += base.name;
  PutU64(b, Hash64(b.data(), b.size()));
  b += manifest;
  return b;
}

Status DecodeManifestFixed(const char* p, ManifestFixed* m) {
  if (std::memcmp(p, kTagManifest, 4) != 0) return Corrupt("expected the manifest record (tag HBMF)");
  if (Get(p, 4, 4) != 0) return Corrupt("manifest record flags must be zero");
  if (!AllZero(p + 42, 6)) return Corrupt("manifest record reserved bytes must be zero");
  m->manifest_len = Get(p, 8, 8);
  m->manifest_hash = Get(p, 16, 8);
  m->base.digest = {Get(p, 24, 8), Get(p, 32, 8)};
  m->base_name_len = static_cast<uint16_t>(Get(p, 40, 2));
  if (m->manifest_len > kMaxManifestSize) {
    return Corrupt("manifest length " + std::to_string(m->manifest_len) + " exceeds the 16 MiB limit");
  }
  if (m->base_name_len > kMaxBaseNameLen) return Corrupt("base name length out of bounds");
  if (m->base.digest.zero() != (m->base_name_len == 0)) {
    return Corrupt("manifest record: a base digest needs a base name and the other way round");
  }
  return Status::Ok();
}

Status CheckManifestTail(const char* record, size_t fixed_and_name_len, const char* hash_at, ManifestFixed* m) {
  if (Get(hash_at, 0, 8) != Hash64(record, fixed_and_name_len)) return Corrupt("manifest record checksum mismatch");
  m->base.name.assign(record + kManifestFixed, fixed_and_name_len - kManifestFixed);
  if (m->base.name.find('\0') != std::string::npos || m->base.name.find('/') != std::string::npos) {
    return Corrupt("base name must be a plain file name");
  }
  return Status::Ok();
}

// ---- Section record ----

std::string EncodeSectionRecord(const SectionInfo& s, uint32_t chunk_count) {
  std::string b(kTagSection, 4);
  PutU8(b, static_cast<uint8_t>(s.elem));
  PutU8(b, s.is_ref ? kSectionRef : 0);
  PutU16(b, static_cast<uint16_t>(s.name.size()));
  PutU32(b, s.mode);
  PutU32(b, chunk_count);
  PutU64(b, s.raw_size);
  PutU64(b, 0);
  b += s.name;
  PutU64(b, Hash64(b.data(), b.size()));
  return b;
}

namespace {
Status CheckSectionFields(uint8_t elem, uint8_t flags, uint64_t name_len, uint32_t mode) {
  if (elem > static_cast<uint8_t>(ElemType::kFp32)) return Corrupt("unknown element type " + std::to_string(elem));
  if (flags & ~kSectionRef) return Corrupt("unknown section flags " + std::to_string(flags));
  if (name_len == 0 || name_len > kMaxNameLen) return Corrupt("section name length out of bounds");
  if (mode & ~07777u) return Corrupt("section mode has bits beyond 07777");
  return Status::Ok();
}
}  // namespace

Status DecodeSectionFixed(const char* p, SectionInfo* s, uint16_t* name_len, uint32_t* chunk_count) {
  if (std::memcmp(p, kTagSection, 4) != 0) return Corrupt("expected a section record (tag HBSC)");
  const auto elem = static_cast<uint8_t>(Get(p, 4, 1)), flags = static_cast<uint8_t>(Get(p, 5, 1));
  *name_len = static_cast<uint16_t>(Get(p, 6, 2));
  s->mode = static_cast<uint32_t>(Get(p, 8, 4));
  *chunk_count = static_cast<uint32_t>(Get(p, 12, 4));
  s->raw_size = Get(p, 16, 8);
  HB_RETURN_IF_ERROR(CheckSectionFields(elem, flags, *name_len, s->mode));
  if (Get(p, 24, 8) != 0) return Corrupt("section record reserved bytes must be zero");
  s->elem = static_cast<ElemType>(elem);
  s->is_ref = flags & kSectionRef;
  if (s->is_ref && *chunk_count != 0) return Corrupt("a ref section has no chunks of its own");
  return Status::Ok();
}

Status CheckSectionName(const std::string& name) {
  bool bad = name.empty() || name.size() > kMaxNameLen || name.find('\0') != std::string::npos || name[0] == '/';
  // No ".." path component: names become paths when extracted.
  for (size_t at = 0; !bad && at <= name.size();) {
    size_t end = name.find('/', at);
    if (end == std::string::npos) end = name.size();
    std::string_view part(name.data() + at, end - at);
    bad = part == ".." || part == "." || part.empty();
    at = end + 1;
  }
  return bad ? Corrupt("unsafe section name '" + name + "'") : Status::Ok();
}

// ---- Chunk record header ----

std::string EncodeChunkHeader(const ChunkInfo& c) {
  std::string b(kTagChunk, 4);
  PutU8(b, static_cast<uint8_t>(c.method));
  PutU8(b, static_cast<uint8_t>(c.transform));
  PutU16(b, 0);
  PutU32(b, static_cast<uint32_t>(c.stored_size));
  PutU32(b, static_cast<uint32_t>(c.raw_size));
  PutU64(b, c.stored_hash);
  PutU64(b, c.raw_hash);
  PutU64(b, Hash64(b.data(), b.size()));
  return b;
}

namespace {
Status CheckChunkFields(uint64_t method, uint64_t transform, uint64_t stored, uint64_t raw, uint32_t max_raw) {
  if (method > static_cast<uint8_t>(Method::kZero)) return Corrupt("unknown chunk method " + std::to_string(method));
  if (transform > static_cast<uint8_t>(Transform::kBytePlanes4)) {
    return Corrupt("unknown chunk transform " + std::to_string(transform));
  }
  if (raw == 0 || raw > max_raw) {
    return Corrupt("chunk raw size " + std::to_string(raw) + " out of bounds (1.." + std::to_string(max_raw) + ")");
  }
  const auto m = static_cast<Method>(method);
  if ((m == Method::kRaw && stored != raw) || (m == Method::kZero && stored != 0) ||
      (m == Method::kZstd && (stored == 0 || stored > kMaxChunkStored))) {
    return Corrupt("chunk stored size " + std::to_string(stored) + " does not fit method " + MethodName(m));
  }
  if (m != Method::kZstd && transform != 0) return Corrupt("only zstd chunks carry a transform");
  return Status::Ok();
}
}  // namespace

Status DecodeChunkHeader(const char* p, uint32_t max_chunk_raw, ChunkInfo* c) {
  if (std::memcmp(p, kTagChunk, 4) != 0) return Corrupt("expected a chunk record (tag HBCK)");
  if (Get(p, 32, 8) != Hash64(p, 32)) return Corrupt("chunk record checksum mismatch");
  if (Get(p, 6, 2) != 0) return Corrupt("chunk record reserved bytes must be zero");
  const uint64_t method = Get(p, 4, 1), transform = Get(p, 5, 1);
  c->stored_size = Get(p, 8, 4);
  c->raw_size = Get(p, 12, 4);
  HB_RETURN_IF_ERROR(CheckChunkFields(method, transform, c->stored_size, c->raw_size, max_chunk_raw));
  c->method = static_cast<Method>(method);
  c->transform = static_cast<Transform>(transform);
  c->stored_hash = Get(p, 16, 8);
  c->raw_hash = Get(p, 24, 8);
  return Status::Ok();
}

// ---- Section end ----

std::string EncodeSectionEnd(const Digest128& content) {
  std::string b(kTagSectionEnd, 4);
  PutU32(b, 0);
  PutU64(b, content.hi);
  PutU64(b, content.lo);
  PutU64(b, Hash64(b.data(), b.size()));
  return b;
}

Status DecodeSectionEnd(const char* p, Digest128* content) {
  if (std::memcmp(p, kTagSectionEnd, 4) != 0) return Corrupt("expected a section end record (tag HBSE)");
  if (Get(p, 24, 8) != Hash64(p, 24)) return Corrupt("section end record checksum mismatch");
  if (Get(p, 4, 4) != 0) return Corrupt("section end record reserved bytes must be zero");
  *content = {Get(p, 8, 8), Get(p, 16, 8)};
  return Status::Ok();
}

// ---- Index ----

std::string EncodeIndex(const std::vector<SectionInfo>& sections) {
  std::string body;
  PutU32(body, static_cast<uint32_t>(sections.size()));
  PutU32(body, 0);
  for (const auto& s : sections) {
    PutU64(body, s.offset);
    PutU8(body, static_cast<uint8_t>(s.elem));
    PutU8(body, s.is_ref ? kSectionRef : 0);
    PutU16(body, static_cast<uint16_t>(s.name.size()));
    PutU32(body, s.mode);
    PutU64(body, s.raw_size);
    PutU64(body, s.content_hash.hi);
    PutU64(body, s.content_hash.lo);
    PutU32(body, static_cast<uint32_t>(s.chunks.size()));
    PutU32(body, 0);
    body += s.name;
    for (const auto& c : s.chunks) {
      PutU64(body, c.offset);
      PutU32(body, static_cast<uint32_t>(c.stored_size));
      PutU32(body, static_cast<uint32_t>(c.raw_size));
      PutU8(body, static_cast<uint8_t>(c.method));
      PutU8(body, static_cast<uint8_t>(c.transform));
      PutU16(body, 0);
      PutU64(body, c.stored_hash);
      PutU64(body, c.raw_hash);
    }
  }
  std::string b(kTagIndex, 4);
  PutU32(b, 0);
  PutU64(b, body.size());
  return b + body;
}

Status DecodeIndexBody(const char* p, size_t n, uint64_t first_record, uint64_t index_offset,
                       uint32_t max_chunk_raw, std::vector<SectionInfo>* sections) {
  Cursor c(p, n);
  auto bad = [&](const std::string& what) {
    return Corrupt("index: " + what + " (index body byte " + std::to_string(c.pos()) + ")");
  };
  const uint64_t nsec = c.U(4);
  if (c.U(4) != 0) return bad("reserved bytes must be zero");
  // Each section takes at least 49 bytes: bounds the reservation.
  if (c.bad || nsec > kMaxSections || nsec > c.left() / (kIndexSectionFixed + 1)) {
    return bad("section count out of bounds");
  }
  sections->clear();
  sections->reserve(nsec);
  uint64_t expect = first_record;
  for (uint64_t i = 0; i < nsec; ++i) {
    SectionInfo s;
    s.offset = c.U(8);
    const auto elem = static_cast<uint8_t>(c.U(1)), flags = static_cast<uint8_t>(c.U(1));
    const uint64_t name_len = c.U(2);
    s.mode = static_cast<uint32_t>(c.U(4));
    s.raw_size = c.U(8);
    s.content_hash.hi = c.U(8);
    s.content_hash.lo = c.U(8);
    const uint64_t nchunks = c.U(4);
    const uint64_t reserved = c.U(4);
    if (c.bad) return bad("section entry cut short");
    Status fs = CheckSectionFields(elem, flags, name_len, s.mode);
    if (!fs.ok()) return bad("section " + std::to_string(i) + ": " + fs.message());
    if (reserved != 0) return bad("section " + std::to_string(i) + ": reserved bytes must be zero");
    s.name = c.Bytes(name_len);
    if (c.bad) return bad("section name cut short");
    Status ns = CheckSectionName(s.name);
    if (!ns.ok()) return bad(ns.message());
    s.elem = static_cast<ElemType>(elem);
    s.is_ref = flags & kSectionRef;
    const std::string who = "section '" + s.name + "'";
    if (nchunks > c.left() / kIndexChunkSize) return bad(who + ": chunk count out of bounds");
    if (s.is_ref && nchunks != 0) return bad(who + ": a ref section has no chunks of its own");
    if (s.offset != expect) {
      return bad(who + ": its record is at " + std::to_string(s.offset) + ", not where the one before it ends (" +
                 std::to_string(expect) + ")");
    }
    expect += kSectionFixed + name_len + 8;
    uint64_t raw_sum = 0;
    s.chunks.reserve(nchunks);
    for (uint64_t k = 0; k < nchunks; ++k) {
      ChunkInfo ch;
      ch.offset = c.U(8);
      ch.stored_size = c.U(4);
      ch.raw_size = c.U(4);
      const uint64_t method = c.U(1), transform = c.U(1), res = c.U(2);
      ch.stored_hash = c.U(8);
      ch.raw_hash = c.U(8);
      if (c.bad) return bad(who + ": chunk table cut short");
      const std::string where = who + " chunk " + std::to_string(k);
      Status cs = CheckChunkFields(method, transform, ch.stored_size, ch.raw_size, max_chunk_raw);
      if (!cs.ok()) return bad(where + ": " + cs.message());
      if (res != 0) return bad(where + ": reserved bytes must be zero");
      ch.method = static_cast<Method>(method);
      ch.transform = static_cast<Transform>(transform);
      if (ch.offset != expect) {
        return bad(where + ": its record is at " + std::to_string(ch.offset) + ", not where the one before it ends (" +
                   std::to_string(expect) + ")");
      }
      expect += kChunkHeaderSize + ch.stored_size;
      raw_sum += ch.raw_size;
      s.stored_size += kChunkHeaderSize + ch.stored_size;
      s.chunks.push_back(ch);
    }
    if (!s.is_ref && raw_sum != s.raw_size) return bad(who + ": its chunks do not add up to its size");
    if (s.is_ref && s.raw_size == 0) return bad(who + ": an empty section cannot be a ref");
    expect += kSectionEndSize;
    if (expect > index_offset) return bad(who + ": its records run past the index");
    sections->push_back(std::move(s));
  }
  if (c.left() != 0) return bad(std::to_string(c.left()) + " unexpected bytes at the end");
  if (expect != index_offset) return bad("the records it lists do not end where the index starts");
  std::unordered_set<std::string_view> names;
  for (const auto& s : *sections) {
    if (!names.insert(s.name).second) return bad("duplicate section '" + s.name + "'");
  }
  return Status::Ok();
}

// ---- Trailer ----

std::string EncodeTrailer(const Trailer& t) {
  std::string b;
  PutU64(b, t.index_offset);
  PutU64(b, t.index_size);
  PutU64(b, t.index_hash);
  PutU64(b, t.digest.hi);
  PutU64(b, t.digest.lo);
  PutZeros(b, 16);
  b.append(kTrailerMagic, 8);
  return b;
}

Status DecodeTrailer(const char* p, Trailer* t) {
  if (std::memcmp(p + 56, kTrailerMagic, 8) != 0) return Corrupt("bad trailer magic");
  if (!AllZero(p + 40, 16)) return Corrupt("trailer reserved bytes must be zero");
  t->index_offset = Get(p, 0, 8);
  t->index_size = Get(p, 8, 8);
  t->index_hash = Get(p, 16, 8);
  t->digest = {Get(p, 24, 8), Get(p, 32, 8)};
  return Status::Ok();
}

// ---- Trust record (format 1.1) ----

uint64_t TrustRecordSize(uint64_t chunks, uint64_t signatures) {
  return kTrustFixed + 32 * chunks + kTrustSignatureSize * signatures + 8;
}

std::string EncodeTrustRecord(const TrustRecord& t) {
  std::string b(kTagTrust, 4);
  PutU8(b, t.hash_alg);
  PutU8(b, static_cast<uint8_t>(t.signatures.size()));
  PutU16(b, 0);
  PutU64(b, t.chunk_hashes.size());
  b.append(reinterpret_cast<const char*>(t.base_root.data()), 32);
  b.reserve(TrustRecordSize(t.chunk_hashes.size(), t.signatures.size()));
  for (const auto& h : t.chunk_hashes) b.append(reinterpret_cast<const char*>(h.data()), 32);
  for (const auto& s : t.signatures) {
    PutU8(b, s.alg);
    PutZeros(b, 3);
    b.append(reinterpret_cast<const char*>(s.public_key.data()), 32);
    b.append(reinterpret_cast<const char*>(s.signature.data()), 64);
  }
  PutU64(b, Hash64(b.data(), b.size()));
  return b;
}

Status DecodeTrustRecord(const char* p, size_t n, uint64_t expect_chunks, TrustRecord* t) {
  if (n < kTrustFixed + 8) return Corrupt("trust record: " + std::to_string(n) + " bytes is too short");
  if (std::memcmp(p, kTagTrust, 4) != 0) return Corrupt("expected the trust record (tag HBTS)");
  if (Get(p, n - 8, 8) != Hash64(p, n - 8)) return Corrupt("trust record checksum mismatch");
  t->hash_alg = static_cast<uint8_t>(Get(p, 4, 1));
  const uint64_t sigs = Get(p, 5, 1), chunks = Get(p, 8, 8);
  if (t->hash_alg != kHashSha256) return Corrupt("trust record: unknown hash algorithm " + std::to_string(t->hash_alg));
  if (Get(p, 6, 2) != 0) return Corrupt("trust record reserved bytes must be zero");
  if (sigs > kMaxSignatures) {
    return Corrupt("trust record: " + std::to_string(sigs) + " signatures, more than " + std::to_string(kMaxSignatures));
  }
  if (chunks != expect_chunks) {
    return Corrupt("trust record lists " + std::to_string(chunks) + " chunk hashes, the index " +
                   std::to_string(expect_chunks) + " chunks");
  }
  // chunks is bounded by the index (at most 256 MiB / 36 entries): no overflow.
  if (TrustRecordSize(chunks, sigs) != n) {
    return Corrupt("trust record is " + std::to_string(n) + " bytes, its counts make it " +
                   std::to_string(TrustRecordSize(chunks, sigs)));
  }
  std::memcpy(t->base_root.data(), p + 16, 32);
  const char* at = p + kTrustFixed;
  t->chunk_hashes.resize(chunks);
  for (auto& h : t->chunk_hashes) {
    std::memcpy(h.data(), at, 32);
    at += 32;
  }
  t->signatures.resize(sigs);
  for (uint64_t i = 0; i < sigs; ++i) {
    TrustSignature& s = t->signatures[i];
    s.alg = static_cast<uint8_t>(Get(at, 0, 1));
    if (s.alg != kSignatureEd25519) {
      return Corrupt("trust record: signature " + std::to_string(i) + " has unknown algorithm " + std::to_string(s.alg));
    }
    if (!AllZero(at + 1, 3)) return Corrupt("trust record reserved bytes must be zero");
    std::memcpy(s.public_key.data(), at + 4, 32);
    std::memcpy(s.signature.data(), at + 36, 64);
    for (uint64_t k = 0; k < i; ++k) {
      if (t->signatures[k].public_key == s.public_key) return Corrupt("trust record: two signatures by one key");
    }
    at += kTrustSignatureSize;
  }
  return Status::Ok();
}

// ---- Byte planes (SPEC.md "Byte planes") ----

int PlaneWidth(Transform t) {
  switch (t) {
    case Transform::kBytePlanes2: return 2;
    case Transform::kBytePlanes4: return 4;
    default: return 1;
  }
}

namespace {
// Even bytes of in[0, 2*words) to even[], odd bytes to odd[].
void Split2(const char* in, size_t words, char* even, char* odd) {
  size_t i = 0;
  const __m128i lo_mask = _mm_set1_epi16(0x00ff);
  for (; i + 16 <= words; i += 16) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i + 16));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(even + i),
                     _mm_packus_epi16(_mm_and_si128(a, lo_mask), _mm_and_si128(b, lo_mask)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(odd + i), _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8)));
  }
  for (; i < words; ++i) {
    even[i] = in[2 * i];
    odd[i] = in[2 * i + 1];
  }
}
// The inverse: interleaves even[] and odd[] into out[0, 2*words).
void Join2(const char* even, const char* odd, size_t words, char* out) {
  size_t i = 0;
  for (; i + 16 <= words; i += 16) {
    __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(even + i));
    __m128i o = _mm_loadu_si128(reinterpret_cast<const __m128i*>(odd + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), _mm_unpacklo_epi8(e, o));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16), _mm_unpackhi_epi8(e, o));
  }
  for (; i < words; ++i) {
    out[2 * i] = even[i];
    out[2 * i + 1] = odd[i];
  }
}
}  // namespace

void SplitPlanes(const char* in, size_t n, int w, char* out) {
  const size_t words = n / w, body = words * w;
  if (w == 2) {
    Split2(in, words, out, out + words);
  } else if (w == 4) {
    // Bytes 0,2 of each word, then bytes 1,3 (as 16-bit pairs), then split again.
    std::string tmp(body, '\0');
    Split2(in, 2 * words, tmp.data(), tmp.data() + 2 * words);
    Split2(tmp.data(), words, out, out + 2 * words);                  // planes 0 and 2
    Split2(tmp.data() + 2 * words, words, out + words, out + 3 * words);  // planes 1 and 3
  } else {
    std::memcpy(out, in, body);
  }
  std::memcpy(out + body, in + body, n - body);
}

void JoinPlanes(const char* in, size_t n, int w, char* out) {
  const size_t words = n / w, body = words * w;
  if (w == 2) {
    Join2(in, in + words, words, out);
  } else if (w == 4) {
    std::string tmp(body, '\0');
    Join2(in, in + 2 * words, words, tmp.data());                  // bytes 0,2 of each word
    Join2(in + words, in + 3 * words, words, tmp.data() + 2 * words);  // bytes 1,3
    Join2(tmp.data(), tmp.data() + 2 * words, 2 * words, out);
  } else {
    std::memcpy(out, in, body);
  }
  std::memcpy(out + body, in + body, n - body);
}

// ---- Chunk payloads ----

ChunkEncoder::ChunkEncoder() : cctx_(ZSTD_createCCtx()) {}
ChunkEncoder::~ChunkEncoder() { ZSTD_freeCCtx(cctx_); }

namespace {
// Order-0 entropy, in bits, of the bytes counted in `h`.
double EntropyBits(const uint32_t* h) {
  double total = 0, bits = 0;
  for (int i = 0; i < 256; ++i) total += h[i];
  for (int i = 0; i < 256; ++i) {
    if (h[i]) bits -= h[i] * std::log2(h[i] / total);
  }
  return bits;
}
}  // namespace

// Estimates what each transform leaves for zstd's entropy stage from byte
// histograms of a sample (by position in a 4-byte word), and keeps the
// transform that wins clearly. Float data has no long matches, so its size
// after zstd follows the order-0 entropy of what zstd sees in each block, and
// byte planes put bytes of like distribution into the same blocks.
Transform ChunkEncoder::Choose(const char* raw, size_t n, ElemType elem) {
  constexpr size_t kPiece = 16u << 10, kPieces = 4;
  if (n < (128u << 10)) return Transform::kNone;  // planes smaller than a zstd block gain nothing
  uint32_t h[4][256] = {};
  for (size_t k = 0; k < kPieces; ++k) {
    const auto* p = reinterpret_cast<const unsigned char*>(raw) + ((n / kPieces) * k & ~size_t{15});
    for (size_t i = 0; i < kPiece; i += 4) {
      ++h[0][p[i]];
      ++h[1][p[i + 1]];
      ++h[2][p[i + 2]];
      ++h[3][p[i + 3]];
    }
  }
  uint32_t all[256], even[256], odd[256];
  for (int i = 0; i < 256; ++i) {
    even[i] = h[0][i] + h[2][i];
    odd[i] = h[1][i] + h[3][i];
    all[i] = even[i] + odd[i];
  }
  const double none = EntropyBits(all), planes2 = EntropyBits(even) + EntropyBits(odd),
               planes4 = EntropyBits(h[0]) + EntropyBits(h[1]) + EntropyBits(h[2]) + EntropyBits(h[3]);
  // A hinted element type needs a 1% win; a guess on untyped bytes 5%.
  const double keep = elem == ElemType::kBytes ? 0.95 : 0.99;
  const bool try2 = elem != ElemType::kFp32, try4 = elem == ElemType::kFp32 || elem == ElemType::kBytes;
  Transform best = Transform::kNone;
  double best_bits = none * keep;
  if (try2 && planes2 < best_bits) {
    best = Transform::kBytePlanes2;
    best_bits = planes2;
  }
  if (try4 && planes4 < best_bits * (best == Transform::kNone ? 1.0 : keep)) best = Transform::kBytePlanes4;
  return best;
}

Status ChunkEncoder::Compress(const char* raw, size_t n, Transform t, int level, std::string* out) {
  const char* src = raw;
  ZSTD_CCtx_reset(cctx_, ZSTD_reset_parameters);
  if (t != Transform::kNone) {
    planes_.resize(n);
    SplitPlanes(raw, n, PlaneWidth(t), planes_.data());
    src = planes_.data();
    // Float planes have no long matches: what pays is entropy coding of the
    // sign/exponent plane. A fast strategy with long minimum matches and a
    // tiny hash table yields mostly literals, which zstd Huffman-codes: on
    // bf16 that plane comes out ~20% smaller than at level 3, compresses ~3x
    // and decodes ~4x faster (the mantissa plane is stored as raw blocks).
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, 1);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_minMatch, 7);
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_hashLog, 6);
  } else {
    ZSTD_CCtx_setParameter(cctx_, ZSTD_c_compressionLevel, level);
  }
  out->resize(ZSTD_compressBound(n));
  size_t z = ZSTD_compress2(cctx_, out->data(), out->size(), src, n);
  if (ZSTD_isError(z)) return Internal(std::string("zstd compression failed: ") + ZSTD_getErrorName(z));
  out->resize(z);
  return Status::Ok();
}

Status ChunkEncoder::Encode(const char* raw, size_t n, ElemType elem, int level, bool transforms,
                            EncodedChunk* out) {
  out->raw_hash = XXH3_64bits(raw, n);
  out->transform = Transform::kNone;
  if (AllZero(raw, n)) {
    out->method = Method::kZero;
    out->stored.clear();
    out->stored_hash = XXH3_64bits(nullptr, 0);
    return Status::Ok();
  }
  Transform t = transforms ? Choose(raw, n, elem) : Transform::kNone;
  HB_RETURN_IF_ERROR(Compress(raw, n, t, level, &out->stored));
  // On untyped bytes the estimate is a guess (text and code keep long
  // matches that planes would break): the plain encoding is tried as well.
  if (t != Transform::kNone && elem == ElemType::kBytes) {
    HB_RETURN_IF_ERROR(Compress(raw, n, Transform::kNone, level, &alt_));
    if (alt_.size() <= out->stored.size()) {
      out->stored.swap(alt_);
      t = Transform::kNone;
    }
  }
  if (out->stored.size() < n) {
    out->method = Method::kZstd;
    out->transform = t;
  } else {
    out->stored.assign(raw, n);  // does not shrink: stored raw, untransformed
    out->method = Method::kRaw;
  }
  out->stored_hash = XXH3_64bits(out->stored.data(), out->stored.size());
  return Status::Ok();
}

ChunkDecoder::ChunkDecoder() : dctx_(ZSTD_createDCtx()) {}
ChunkDecoder::~ChunkDecoder() { ZSTD_freeDCtx(dctx_); }

Status ChunkDecoder::Decode(const ChunkInfo& c, const char* stored, char* out, bool check_xxh3) {
  if (check_xxh3 && XXH3_64bits(stored, c.stored_size) != c.stored_hash) return Corrupt("stored checksum mismatch");
  switch (c.method) {
    case Method::kZero: std::memset(out, 0, c.raw_size); break;
    case Method::kRaw: std::memcpy(out, stored, c.raw_size); break;
    case Method::kZstd: {
      const int w = PlaneWidth(c.transform);
      char* dst = out;
      if (w > 1) {
        planes_.resize(c.raw_size);
        dst = planes_.data();
      }
      size_t z = ZSTD_decompressDCtx(dctx_, dst, c.raw_size, stored, c.stored_size);
      if (ZSTD_isError(z) || z != c.raw_size) {
        return Corrupt("zstd data does not decode to " + std::to_string(c.raw_size) + " bytes" +
                       (ZSTD_isError(z) ? std::string(" (") + ZSTD_getErrorName(z) + ")" : ""));
      }
      if (w > 1) JoinPlanes(dst, c.raw_size, w, out);
      break;
    }
  }
  if (check_xxh3 && XXH3_64bits(out, c.raw_size) != c.raw_hash) return Corrupt("decoded checksum mismatch");
  return Status::Ok();
}

}  // namespace hotboot::snapfile
