// The v0 snapshot container: round trips, atomic writes, and every kind of
// damage a file can suffer, each with the message it must give.
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "hotboot/snapshot_file.h"

namespace hotboot::snapfile {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Spit(const std::string& p, const std::string& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(b.data(), static_cast<std::streamsize>(b.size()));
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class Container : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-container-test." + std::to_string(::getpid()) + "." +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& n) { return (dir_ / n).string(); }

  // A snapshot with text, zeros, random (incompressible) and multi-chunk data.
  std::string Good(WriteOptions o = {}) {
    std::vector<SectionSource> secs(5);
    secs[0].name = "meta/text";
    for (int i = 0; i < 20000; ++i) secs[0].bytes += "line " + std::to_string(i % 97) + "\n";
    secs[1].name = "criu/zeros.img";
    secs[1].bytes = std::string(3u << 20, '\0');
    secs[2].name = "criu/random.img";
    secs[2].bytes = RandomBytes(300000, 7);
    secs[3].name = "criu/empty.img";
    secs[4].name = "criu/many.img";
    secs[4].bytes = RandomBytes(1000, 1);
    for (int i = 0; i < 10; ++i) secs[4].bytes += secs[4].bytes.substr(0, 70000);
    o.chunk_size = 64 << 10;
    std::string p = P("good.hbsnap");
    Status s = WriteSnapshot(p, R"({"format":"test"})", secs, o);
    EXPECT_TRUE(s.ok()) << s.ToString();
    sources_ = secs;
    return p;
  }

  fs::path dir_;
  std::vector<SectionSource> sources_;
};

TEST_F(Container, RoundTripsEverySectionKind) {
  for (int threads : {1, 4}) {
    WriteOptions o;
    o.threads = threads;
    std::string p = Good(o);
    auto r = SnapshotReader::Open(p);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ((*r)->manifest_json(), R"({"format":"test"})");
    EXPECT_EQ((*r)->version_major(), 0);
    ASSERT_EQ((*r)->sections().size(), sources_.size());
    for (const auto& src : sources_) {
      auto got = (*r)->ReadSection(src.name);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, src.bytes) << src.name;
    }
    EXPECT_TRUE((*r)->Verify().ok());
    // Zeros cost nothing; random data is stored raw, not grown.
    const SectionInfo* z = (*r)->FindSection("criu/zeros.img");
    EXPECT_EQ(z->stored_size, 0u);
    const SectionInfo* rnd = (*r)->FindSection("criu/random.img");
    EXPECT_EQ(rnd->stored_size, rnd->raw_size);
    EXPECT_LT((*r)->FindSection("meta/text")->stored_size, sources_[0].bytes.size() / 4);
    EXPECT_EQ((*r)->FindSection("criu/many.img")->chunks.size(), (sources_[4].bytes.size() + 65535) / 65536);
  }
}

TEST_F(Container, SameInputSameBytesWhateverTheThreads) {
  WriteOptions one, four;
  one.threads = 1;
  four.threads = 4;
  std::string a = Slurp(Good(one));
  std::string b = Slurp(Good(four));
  EXPECT_EQ(a, b);
}

TEST_F(Container, ExtractsFilesWithPrefixStripped) {
  std::string p = Good();
  auto r = SnapshotReader::Open(p);
  ASSERT_TRUE(r.ok());
  fs::create_directories(P("out"));
  uint64_t last = 0;
  ASSERT_TRUE((*r)->ExtractTo(P("out"), "criu/", 2, [&](uint64_t d, uint64_t) { last = d; }).ok());
  EXPECT_EQ(Slurp(P("out/random.img")), sources_[2].bytes);
  EXPECT_EQ(Slurp(P("out/zeros.img")), sources_[1].bytes);
  EXPECT_TRUE(fs::exists(P("out/empty.img")));
  EXPECT_FALSE(fs::exists(P("out/text")));
  EXPECT_EQ(last, sources_[1].bytes.size() + sources_[2].bytes.size() + sources_[4].bytes.size());
}

TEST_F(Container, SectionsFromDirectory) {
  fs::create_directories(P("imgs/sub"));
  Spit(P("imgs/a.img"), "aaa");
  Spit(P("imgs/sub/b.img"), "bbbb");
  auto secs = SectionsFromDirectory(P("imgs"), "criu");
  ASSERT_TRUE(secs.ok());
  ASSERT_EQ(secs->size(), 2u);
  EXPECT_EQ((*secs)[0].name, "criu/a.img");
  EXPECT_EQ((*secs)[1].name, "criu/sub/b.img");
  ASSERT_TRUE(WriteSnapshot(P("d.hbsnap"), "{}", *secs).ok());
  auto r = SnapshotReader::Open(P("d.hbsnap"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*(*r)->ReadSection("criu/sub/b.img"), "bbbb");
  EXPECT_FALSE(SectionsFromDirectory(P("nope"), "x").ok());
}

TEST_F(Container, FailedWriteLeavesNothing) {
  std::vector<SectionSource> secs(1);
  secs[0].name = "criu/x";
  secs[0].file_path = P("missing-source");
  Status s = WriteSnapshot(P("out.hbsnap"), "{}", secs);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing-source"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir_)) << "a temporary or partial file was left";
  secs[0].file_path.clear();
  secs.push_back(secs[0]);
  EXPECT_FALSE(WriteSnapshot(P("out.hbsnap"), "{}", secs).ok());  // duplicate names
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(Container, FlippedChunkByteNamesSectionChunkAndOffset) {
  std::string p = Good();
  auto r0 = SnapshotReader::Open(p);
  const SectionInfo* s = (*r0)->FindSection("criu/many.img");
  const ChunkInfo c = s->chunks[5];
  std::string b = Slurp(p);
  b[c.offset + 10] ^= 0x20;
  Spit(p, b);
  auto r = SnapshotReader::Open(p);
  ASSERT_TRUE(r.ok());  // the index is intact: Open does not read chunks
  Status v = (*r)->Verify();
  EXPECT_EQ(v.code(), Code::kCorrupt);
  EXPECT_NE(v.message().find("section 'criu/many.img' chunk 5 (file offset " + std::to_string(c.offset) + ")"),
            std::string::npos)
      << v.message();
  EXPECT_NE(v.message().find("checksum mismatch"), std::string::npos);
  EXPECT_FALSE((*r)->ReadSection("criu/many.img").ok());
  EXPECT_TRUE((*r)->ReadSection("criu/random.img").ok());
  fs::create_directories(P("x"));
  EXPECT_FALSE((*r)->ExtractTo(P("x"), "criu/").ok());
}

TEST_F(Container, CorruptChunkWithFixedChecksumStillCaughtByDecodedHash) {
  // Rewrite a raw chunk's byte and its stored hash: the raw hash still differs.
  std::string p = Good();
  auto r0 = SnapshotReader::Open(p);
  const ChunkInfo c = (*r0)->FindSection("criu/random.img")->chunks[0];
  ASSERT_EQ(c.method, 0);
  std::string b = Slurp(p);
  b[c.offset] ^= 1;
  Spit(p, b);
  auto r = SnapshotReader::Open(p);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE((*r)->Verify().ok());
}

TEST_F(Container, EveryRegionIsChecked) {
  std::string good = Slurp(Good());
  const size_t n = good.size();
  struct Case {
    size_t off;
    const char* want;
  } cases[] = {{0, "bad magic"},     {9, "version"},          {13, "header checksum"},
               {20, "header checksum"}, {n - 60, "index checksum"}, {n - 20, "digest"},
               {n - 3, "trailer magic"}};
  for (const auto& k : cases) {
    std::string b = good;
    b[k.off] ^= 0x10;
    Spit(P("bad.hbsnap"), b);
    auto r = SnapshotReader::Open(P("bad.hbsnap"));
    Status s = r.ok() ? (*r)->Verify() : r.status();
    EXPECT_FALSE(s.ok()) << "byte " << k.off;
    EXPECT_NE(s.message().find(k.want), std::string::npos) << "byte " << k.off << ": " << s.message();
  }
}

TEST_F(Container, TruncationAtEveryBoundaryIsTruncated) {
  std::string good = Slurp(Good());
  auto r0 = SnapshotReader::Open(P("good.hbsnap"));
  std::vector<size_t> cuts = {10, 40, 41, good.size() / 2, good.size() - 49, good.size() - 1};
  for (const auto& s : (*r0)->sections()) {
    for (const auto& c : s.chunks) cuts.push_back(c.offset);
  }
  for (size_t cut : cuts) {
    if (cut < 8) continue;
    Spit(P("cut.hbsnap"), good.substr(0, cut));
    auto r = SnapshotReader::Open(P("cut.hbsnap"));
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_EQ(r.status().code(), Code::kTruncated) << "cut at " << cut << ": " << r.status().message();
  }
  Spit(P("long.hbsnap"), good + "x");
  auto r = SnapshotReader::Open(P("long.hbsnap"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
}

TEST_F(Container, NotASnapshotAndNewerVersions) {
  Spit(P("junk"), std::string(1000, 'j'));
  auto r = SnapshotReader::Open(P("junk"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a hotboot snapshot"), std::string::npos);
  Spit(P("tiny"), "HOT");
  EXPECT_FALSE(SnapshotReader::Open(P("tiny")).ok());
  EXPECT_FALSE(SnapshotReader::Open(P("does-not-exist")).ok());
  std::string b = Slurp(Good());
  b[8] = 3;  // major version 3
  Spit(P("v3"), b);
  r = SnapshotReader::Open(P("v3"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnsupported);
  EXPECT_NE(r.status().message().find("version 3.1 is newer"), std::string::npos) << r.status().message();
}

TEST_F(Container, RandomDamageNeverCrashes) {
  std::string good = Slurp(Good());
  std::mt19937 rng(42);
  for (int i = 0; i < 300; ++i) {
    std::string b = good;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= static_cast<char>(1 + rng() % 255);
    if (rng() % 5 == 0) b.resize(rng() % b.size());
    Spit(P("fuzz"), b);
    auto r = SnapshotReader::Open(P("fuzz"));
    if (r.ok()) (void)(*r)->Verify(1);
  }
  SUCCEED();
}

}  // namespace
}  // namespace hotboot::snapfile
