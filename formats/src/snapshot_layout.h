// Constants and field codecs of the v0 snapshot container; the normative
// description is formats/SPEC.md. Every field is encoded and decoded byte by
// byte, little-endian, never by copying structs.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace hotboot::snapfile {

inline constexpr char kMagic[8] = {'H', 'O', 'T', 'B', 'O', 'O', 'T', '\0'};
inline constexpr char kTrailerMagic[8] = {'H', 'B', 'T', 'R', 'A', 'I', 'L', 'R'};
inline constexpr uint16_t kVersionMajor = 0;
inline constexpr uint16_t kVersionMinor = 1;
inline constexpr size_t kHeaderSize = 40;   // SPEC.md "Header"
inline constexpr size_t kTrailerSize = 48;  // SPEC.md "Trailer"

inline constexpr uint8_t kMethodRaw = 0;
inline constexpr uint8_t kMethodZstd = 1;
inline constexpr uint8_t kMethodZero = 2;  // all-zero raw bytes; nothing stored

// Caps that bound every allocation a reader makes (SPEC.md "Limits").
inline constexpr uint64_t kMaxChunkRaw = 64u << 20;
inline constexpr uint64_t kMaxIndexSize = 256u << 20;
inline constexpr uint64_t kMaxManifestSize = 16u << 20;
inline constexpr uint32_t kMaxSections = 1u << 20;
inline constexpr uint32_t kMaxNameLen = 4096;

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

 private:
  const unsigned char* p_;
  size_t n_;
  size_t pos_ = 0;
};

}  // namespace hotboot::snapfile
