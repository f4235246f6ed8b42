// Helpers shared by the container suites: temp dirs, files, a snapshot with
// every kind of section, and decoding through the stream decoder.
#pragma once

#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "hotboot/snapshot_file.h"
#include "hotboot/snapshot_format.h"
#include "crypto.h"
#include "records.h"
#include <xxhash.h>

namespace hotboot::snapfile::testutil {

namespace fs = std::filesystem;

inline std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void Spit(const std::string& p, const std::string& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(b.data(), static_cast<std::streamsize>(b.size()));
}

inline std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Random-normal weights as bf16, fp16 or fp32 words (little-endian).
inline std::string RandomFloats(size_t count, ElemType e, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::string out;
  for (size_t i = 0; i < count; ++i) {
    float f = d(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (e == ElemType::kFp32) {
      out.append(reinterpret_cast<const char*>(&u), 4);
    } else {
      uint16_t h;
      if (e == ElemType::kBf16) {
        h = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
      } else {  // fp16 for |f| well inside the normal range, subnormals flushed
        const uint32_t sign = (u >> 16) & 0x8000;
        const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
        h = exp <= 0 ? static_cast<uint16_t>(sign)
                     : static_cast<uint16_t>(sign | (exp << 10) | ((u >> 13) & 0x3ff));
      }
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
  return out;
}

// A temp directory per test.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-formats-test." + std::to_string(::getpid()) + "." +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& n) const { return (dir_ / n).string(); }
  fs::path dir_;
};

// Every section kind: text, zeros, incompressible, empty, multi-chunk,
// bf16/fp16/fp32 weights, and a file-backed one.
inline std::vector<SectionSource> EveryKind() {
  std::vector<SectionSource> secs(8);
  secs[0].name = "meta/text";
  for (int i = 0; i < 20000; ++i) secs[0].bytes += "line " + std::to_string(i % 97) + "\n";
  secs[1].name = "criu/zeros.img";
  secs[1].bytes = std::string(300000, '\0');
  secs[2].name = "criu/random.img";
  secs[2].bytes = RandomBytes(150000, 7);
  secs[3].name = "criu/empty.img";
  secs[4].name = "criu/many.img";
  secs[4].bytes = RandomBytes(1000, 1);
  for (int i = 0; i < 10; ++i) secs[4].bytes += secs[4].bytes.substr(0, 70000) + std::string(5000, '\0');
  secs[5].name = "weights/bf16";
  secs[5].elem = ElemType::kBf16;
  secs[5].bytes = RandomFloats(150001, ElemType::kBf16, 3) + "t";  // odd tail
  secs[6].name = "weights/fp16";
  secs[6].elem = ElemType::kFp16;
  secs[6].bytes = RandomFloats(150000, ElemType::kFp16, 4);
  secs[7].name = "weights/fp32";
  secs[7].elem = ElemType::kFp32;
  secs[7].bytes = RandomFloats(70001, ElemType::kFp32, 5) + "ab";
  return secs;
}

inline WriteOptions SmallChunks() {
  WriteOptions o;
  o.chunk_size = 64 << 10;
  return o;
}

struct Decoded {
  Status status;
  std::string manifest;
  BaseRef base;
  std::map<std::string, std::string> sections;
  std::map<std::string, bool> refs;
};

// Feeds `bytes` to a StreamDecoder in pieces of the sizes rng picks.
inline Decoded StreamDecode(const std::string& bytes, uint32_t seed, int threads = 2) {
  Decoded d;
  StreamEvents ev;
  ev.on_manifest = [&](const std::string& m, const BaseRef& b) {
    d.manifest = m;
    d.base = b;
    return Status::Ok();
  };
  ev.on_section = [&](const SectionInfo& s) {
    d.sections[s.name];
    d.refs[s.name] = s.is_ref;
    return Status::Ok();
  };
  ev.on_data = [&](const SectionInfo& s, uint64_t off, const std::string& b) {
    std::string& out = d.sections[s.name];
    EXPECT_EQ(off, out.size());
    out += b;
    return Status::Ok();
  };
  StreamDecoder dec(ev, threads, "test-stream");
  std::mt19937 rng(seed);
  size_t at = 0;
  Status s(Code::kNeedMore, "");
  while (at < bytes.size()) {
    size_t n = std::min<size_t>(bytes.size() - at, 1 + rng() % 70000);
    s = dec.Feed(bytes.data() + at, n);
    at += n;
    if (s.code() != Code::kNeedMore) break;
  }
  d.status = s.code() == Code::kNeedMore ? dec.Finish() : s;
  if (d.status.ok() && at < bytes.size()) d.status = dec.Feed(bytes.data() + at, bytes.size() - at);
  return d;
}

inline void PutAt(std::string& f, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) f[at + i] = static_cast<char>(v >> (8 * i));
}
inline uint64_t GetAt(const std::string& f, size_t at, int n) {
  return GetLE(reinterpret_cast<const unsigned char*>(f.data()) + at, n);
}

// Re-derives every checksum that covers structure from the records as they
// now are: chunk record hashes, section record hashes, the index, the trailer,
// and (format 1.1) the trust record's hash and, unless told not to, its
// SHA-256 list. What a damaged payload then fails on is what the reader
// checks last. (Re-hashing the list changes the root: signatures go bad.)
inline void FixChecksums(std::string& f, bool fix_chunk_sha256 = true) {
  Header h;
  if (!DecodeHeader(f.data(), f.size(), &h).ok()) {
      ADD_FAILURE() << "FixChecksums: cannot parse";
      return;
    }
  ManifestFixed m;
  if (!DecodeManifestFixed(f.data() + 64, &m).ok()) {
      ADD_FAILURE() << "FixChecksums: cannot parse";
      return;
    }
  size_t at = 64 + kManifestFixed + m.base_name_len + 8 + m.manifest_len;
  std::vector<SectionInfo> secs;
  while (std::memcmp(f.data() + at, kTagIndex, 4) != 0) {
    SectionInfo s;
    s.offset = at;
    uint16_t name_len;
    uint32_t chunks;
    if (!DecodeSectionFixed(f.data() + at, &s, &name_len, &chunks).ok()) {
      ADD_FAILURE() << "FixChecksums: cannot parse";
      return;
    }
    s.name = f.substr(at + kSectionFixed, name_len);
    PutAt(f, at + kSectionFixed + name_len, XXH3_64bits(f.data() + at, kSectionFixed + name_len), 8);
    at += kSectionFixed + name_len + 8;
    for (uint32_t k = 0; k < chunks; ++k) {
      PutAt(f, at + 32, XXH3_64bits(f.data() + at, 32), 8);
      ChunkInfo c;
      if (!DecodeChunkHeader(f.data() + at, h.max_chunk_raw, &c).ok()) {
      ADD_FAILURE() << "FixChecksums: cannot parse";
      return;
    }
      c.offset = at;
      s.chunks.push_back(c);
      at += kChunkHeaderSize + c.stored_size;
    }
    PutAt(f, at + 24, XXH3_64bits(f.data() + at, 24), 8);
    if (!DecodeSectionEnd(f.data() + at, &s.content_hash).ok()) {
      ADD_FAILURE() << "FixChecksums: cannot parse";
      return;
    }
    at += kSectionEndSize;
    secs.push_back(s);
  }
  const std::string index = EncodeIndex(secs);
  // Format 1.1: the trust record between index and trailer stays as it is
  // (its own hash is refreshed); the digest ends where it starts.
  const size_t trust = (h.flags & kFlagTrustRecord) ? f.size() - kTrailerSize - at - index.size() : 0;
  if (at + index.size() + trust + kTrailerSize != f.size()) {
    ADD_FAILURE() << "FixChecksums: the index changed size";
    return;
  }
  f.replace(at, index.size(), index);
  if (trust >= kTrustFixed + 8 && fix_chunk_sha256) {
    size_t k = at + index.size() + kTrustFixed;
    for (const auto& s : secs) {
      for (const auto& c : s.chunks) {
        const Hash256 h = crypto::Sha256(f.data() + c.offset + kChunkHeaderSize, c.stored_size);
        if (k + 32 <= f.size()) f.replace(k, 32, reinterpret_cast<const char*>(h.data()), 32);
        k += 32;
      }
    }
  }
  if (trust >= kTrustFixed + 8) {
    const size_t end = at + index.size() + trust - 8;
    PutAt(f, end, XXH3_64bits(f.data() + at + index.size(), trust - 8), 8);
  }
  XXH128_hash_t d = XXH3_128bits(f.data() + 64, at + index.size() - 64);
  Trailer t{at, index.size(), XXH3_64bits(index.data(), index.size()), {d.high64, d.low64}};
  f.replace(at + index.size() + trust, kTrailerSize, EncodeTrailer(t));
}

// Where the trust record of a 1.1 file is: [first, second).
inline std::pair<size_t, size_t> TrustRange(const std::string& f) {
  Trailer t;
  if (!DecodeTrailer(f.data() + f.size() - kTrailerSize, &t).ok()) return {0, 0};
  return {t.index_offset + t.index_size, f.size() - kTrailerSize};
}

}  // namespace hotboot::snapfile::testutil
