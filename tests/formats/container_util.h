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

}  // namespace hotboot::snapfile::testutil
