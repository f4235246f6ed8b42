// Constants and field codecs of the snapshot container, version 1.1. Every
// number here is defined in formats/SPEC.md, section named in the comment;
// change the spec first. Fields are encoded and decoded one by one,
// little-endian, never by copying structs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace hotboot::snapfile {

// SPEC.md "Versions".
inline constexpr uint16_t kVersionMajor = 1;
inline constexpr uint16_t kVersionMinor = 1;  // 1.1: the trust record; 1.0 files still read

// SPEC.md "Header".
inline constexpr char kMagic[8] = {'H', 'O', 'T', 'B', 'O', 'O', 'T', '\0'};
inline constexpr size_t kHeaderSize = 64;
inline constexpr size_t kHeaderHashAt = 56;  // XXH3-64 of bytes 0..55
// Header flags: bits 0-15 may be ignored by a reader that does not know
// them; a set bit in 16-31 that a reader does not know makes it refuse.
inline constexpr uint32_t kFlagsCompatibleMask = 0x0000ffffu;
// SPEC.md "Header" flags, bit 16 (required, 1.1): a trust record sits between
// the index and the trailer, and the file digest ends where it starts.
inline constexpr uint32_t kFlagTrustRecord = 0x00010000u;
inline constexpr uint32_t kFlagsKnown = kFlagTrustRecord;

// SPEC.md "Records": every record starts with a 4-byte tag.
inline constexpr char kTagManifest[4] = {'H', 'B', 'M', 'F'};
inline constexpr char kTagSection[4] = {'H', 'B', 'S', 'C'};
inline constexpr char kTagChunk[4] = {'H', 'B', 'C', 'K'};
inline constexpr char kTagSectionEnd[4] = {'H', 'B', 'S', 'E'};
inline constexpr char kTagIndex[4] = {'H', 'B', 'I', 'X'};
inline constexpr char kTagTrust[4] = {'H', 'B', 'T', 'S'};  // 1.1
inline constexpr char kTrailerMagic[8] = {'H', 'B', 'T', 'R', 'A', 'I', 'L', 'R'};

// Fixed parts of the records (SPEC.md, one table each).
inline constexpr size_t kManifestFixed = 48;    // then base name, record hash, manifest
inline constexpr size_t kSectionFixed = 32;     // then name, record hash
inline constexpr size_t kChunkHeaderSize = 40;  // then the stored bytes
inline constexpr size_t kSectionEndSize = 32;
inline constexpr size_t kIndexFixed = 16;       // then the index body
inline constexpr size_t kTrailerSize = 64;
inline constexpr size_t kIndexSectionFixed = 48;  // then name, chunk entries
inline constexpr size_t kIndexChunkSize = 36;

// SPEC.md "Trust record (1.1)": a fixed part, 32 bytes per chunk hash, 100
// bytes per signature, then the 8-byte record hash.
inline constexpr size_t kTrustFixed = 48;
inline constexpr size_t kTrustSignatureSize = 100;
inline constexpr uint32_t kMaxSignatures = 16;
inline constexpr uint8_t kHashSha256 = 1;
inline constexpr uint8_t kSignatureEd25519 = 1;
// SPEC.md "Root and signatures": domain strings, their final NUL included.
inline constexpr char kRootDomain[] = "hotboot snapshot root v1";
inline constexpr char kSignatureDomain[] = "hotboot snapshot signature v1";

// Section flags (SPEC.md "Section record").
inline constexpr uint8_t kSectionRef = 0x01;

// Caps that bound every allocation a reader makes (SPEC.md "Limits").
inline constexpr uint64_t kMaxChunkRaw = 64u << 20;
inline constexpr uint64_t kMaxManifestSize = 16u << 20;
inline constexpr uint64_t kMaxIndexBody = 256u << 20;
inline constexpr uint32_t kMaxSections = 1u << 20;
inline constexpr uint32_t kMaxNameLen = 4096;
inline constexpr uint32_t kMaxBaseNameLen = 4096;
inline constexpr int kMaxBaseDepth = 8;
// Stored bytes of one chunk: zstd's bound for the largest raw chunk.
inline constexpr uint64_t kMaxChunkStored = kMaxChunkRaw + (kMaxChunkRaw >> 8) + (128u << 10);

inline void PutU8(std::string& b, uint8_t v) { b.push_back(static_cast<char>(v)); }
inline void PutU16(std::string& b, uint16_t v) {
  for (int i = 0; i < 2; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
}
inline void PutU32(std::string& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
}
inline void PutU64(std::string& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
}
inline void PutZeros(std::string& b, size_t n) { b.append(n, '\0'); }
inline uint64_t GetLE(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A bounds-checked cursor over a byte range: every read either succeeds or
// sets `bad` and returns zero; callers check `bad` once per record.
class Cursor {
 public:
  Cursor(const char* p, size_t n) : p_(reinterpret_cast<const unsigned char*>(p)), n_(n) {}
  bool bad = false;
  size_t pos() const { return pos_; }
  size_t left() const { return n_ - pos_; }
  uint64_t U(int bytes) {
    if (bad || left() < static_cast<size_t>(bytes)) {
      bad = true;
      return 0;
    }
    uint64_t v = GetLE(p_ + pos_, bytes);
    pos_ += bytes;
    return v;
  }
  std::string Bytes(size_t len) {
    if (bad || left() < len) {
      bad = true;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }
  // True (and advances) when the next bytes are `tag`.
  bool Tag(const char* tag, size_t n) {
    if (bad || left() < n) {
      bad = true;
      return false;
    }
    for (size_t i = 0; i < n; ++i) {
      if (p_[pos_ + i] != static_cast<unsigned char>(tag[i])) return false;
    }
    pos_ += n;
    return true;
  }

 private:
  const unsigned char* p_;
  size_t n_;
  size_t pos_ = 0;
};

}  // namespace hotboot::snapfile
