// Damage, each with the message it must give: flipped bytes (also with every
// checksum that would catch them first fixed up), truncation at every
// structural boundary, versions and flags, random damage.
#include <xxhash.h>

#include "container_util.h"
#include "records.h"

namespace hotboot::snapfile {
namespace {

using namespace testutil;

class Damage : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    ASSERT_TRUE(WriteSnapshot(P("good.hbsnap"), R"({"format":"test"})", EveryKind(), SmallChunks()).ok());
    good_ = Slurp(P("good.hbsnap"));
    auto r = SnapshotReader::Open(P("good.hbsnap"));
    ASSERT_TRUE(r.ok());
    sections_ = (*r)->sections();
  }
  // Open + Verify of the damaged bytes, and the streamed decode of them:
  // both must fail with `code` and a message containing `want`.
  void ExpectBoth(const std::string& b, Code code, const std::string& want, const std::string& stream_want = "") {
    Spit(P("bad.hbsnap"), b);
    auto r = SnapshotReader::Open(P("bad.hbsnap"));
    Status s = r.ok() ? (*r)->Verify(2) : r.status();
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_NE(s.message().find(want), std::string::npos) << "seekable: " << s.message();
    Decoded d = StreamDecode(b, 1);
    EXPECT_EQ(d.status.code(), code) << d.status.ToString();
    const std::string& sw = stream_want.empty() ? want : stream_want;
    EXPECT_NE(d.status.message().find(sw), std::string::npos) << "streamed: " << d.status.message();
  }
  const SectionInfo& S(const std::string& name) {
    for (const auto& s : sections_) {
      if (s.name == name) return s;
    }
    throw std::runtime_error("no section " + name);
  }
  std::string good_;
  std::vector<SectionInfo> sections_;
};

TEST_F(Damage, FlippedStoredByteNamesSectionChunkAndOffset) {
  const ChunkInfo c = S("criu/many.img").chunks[5];
  std::string b = good_;
  b[c.offset + kChunkHeaderSize + 10] ^= 0x20;
  ExpectBoth(b, Code::kCorrupt, "section 'criu/many.img' chunk 5 (file offset " + std::to_string(c.offset) + "): stored checksum mismatch",
             "stored checksum mismatch");
  Spit(P("bad.hbsnap"), b);
  auto r = SnapshotReader::Open(P("bad.hbsnap"));
  ASSERT_TRUE(r.ok()) << "Open reads no chunk";
  EXPECT_FALSE((*r)->ReadSection("criu/many.img").ok());
  EXPECT_TRUE((*r)->ReadSection("criu/random.img").ok()) << "other sections stay readable";
  EXPECT_FALSE((*r)->ExtractTo(P("x"), "criu/").ok());
}

TEST_F(Damage, FlippedZstdByteWithFixedChecksumsFailsToDecode) {
  const ChunkInfo c = S("meta/text").chunks[0];
  ASSERT_EQ(c.method, Method::kZstd);
  std::string b = good_;
  b[c.offset + kChunkHeaderSize + c.stored_size / 2] ^= 0x55;
  PutAt(b, c.offset + 16, XXH3_64bits(b.data() + c.offset + kChunkHeaderSize, c.stored_size), 8);
  FixChecksums(b);
  Spit(P("bad.hbsnap"), b);
  auto r = SnapshotReader::Open(P("bad.hbsnap"));
  ASSERT_TRUE(r.ok());
  Status s = (*r)->Verify();
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_TRUE(s.message().find("zstd data does not decode") != std::string::npos ||
              s.message().find("decoded checksum mismatch") != std::string::npos)
      << s.message();
}

TEST_F(Damage, FlippedRawByteWithFixedStoredHashIsCaughtByDecodedHash) {
  const ChunkInfo c = S("criu/random.img").chunks[1];
  ASSERT_EQ(c.method, Method::kRaw);
  std::string b = good_;
  b[c.offset + kChunkHeaderSize + 7] ^= 1;
  PutAt(b, c.offset + 16, XXH3_64bits(b.data() + c.offset + kChunkHeaderSize, c.stored_size), 8);
  FixChecksums(b);
  ExpectBoth(b, Code::kCorrupt, "section 'criu/random.img' chunk 1", "decoded checksum mismatch");
}

TEST_F(Damage, ChangedBytesWithEveryChunkHashFixedAreCaughtByTheContentHash) {
  const ChunkInfo c = S("criu/random.img").chunks[0];
  std::string b = good_;
  b[c.offset + kChunkHeaderSize] ^= 1;
  const uint64_t h = XXH3_64bits(b.data() + c.offset + kChunkHeaderSize, c.stored_size);
  PutAt(b, c.offset + 16, h, 8);
  PutAt(b, c.offset + 24, h, 8);
  FixChecksums(b);
  ExpectBoth(b, Code::kCorrupt, "section 'criu/random.img': content hash mismatch");
}

TEST_F(Damage, RecordsThatDisagreeWithTheIndexAreCaught) {
  // A section record renamed (its own hash fixed): the streamed index no
  // longer matches; verify compares the records with the index.
  const SectionInfo& s = S("criu/many.img");
  std::string b = good_;
  b[s.offset + kSectionFixed] = 'C';
  PutAt(b, s.offset + kSectionFixed + s.name.size(), XXH3_64bits(b.data() + s.offset, kSectionFixed + s.name.size()), 8);
  ExpectBoth(b, Code::kCorrupt, "disagrees with the index", "index disagrees");
  // The same with the digest fixed too: only the comparison with the index catches it.
  std::string idx = good_;
  idx[s.offset + kSectionFixed] = 'C';
  PutAt(idx, s.offset + kSectionFixed + s.name.size(), XXH3_64bits(idx.data() + s.offset, kSectionFixed + s.name.size()), 8);
  const size_t index_at = GetAt(good_, good_.size() - 64, 8), index_size = GetAt(good_, good_.size() - 56, 8);
  XXH128_hash_t d = XXH3_128bits(idx.data() + 64, index_at + index_size - 64);
  PutAt(idx, idx.size() - 40, d.high64, 8);
  PutAt(idx, idx.size() - 32, d.low64, 8);
  ExpectBoth(idx, Code::kCorrupt, "section record at byte " + std::to_string(s.offset) + " disagrees with the index",
             "index disagrees");
}

TEST_F(Damage, EveryRegionIsChecked) {
  const size_t n = good_.size();
  const SectionInfo& s = S("criu/many.img");
  struct Case {
    size_t off;
    const char* want;
  } cases[] = {
      {0, "bad magic"},
      {13, "header checksum"},
      {30, "header checksum"},
      {64, "expected the manifest record"},
      {64 + 20, "manifest record checksum"},
      {64 + kManifestFixed + 8 + 3, "manifest checksum"},
      {s.offset + 1, "expected a section record"},
      {s.chunks[2].offset + 2, "expected a chunk record"},
      {s.chunks[2].offset + 9, "chunk record checksum"},
      {TrustRange(good_).first - 20, "index checksum"},
      {TrustRange(good_).first + 5, "trust record checksum"},
      {TrustRange(good_).second - 3, "trust record checksum"},
      {n - 40, "digest"},
      {n - 3, "trailer magic"},
  };
  for (const auto& k : cases) {
    std::string b = good_;
    b[k.off] ^= 0x10;
    Spit(P("bad.hbsnap"), b);
    auto r = SnapshotReader::Open(P("bad.hbsnap"));
    Status st = r.ok() ? (*r)->Verify() : r.status();
    EXPECT_EQ(st.code(), Code::kCorrupt) << "byte " << k.off << ": " << st.ToString();
    Decoded d = StreamDecode(b, 2);
    EXPECT_EQ(d.status.code(), Code::kCorrupt) << "byte " << k.off << " streamed: " << d.status.ToString();
    EXPECT_TRUE(st.message().find(k.want) != std::string::npos || d.status.message().find(k.want) != std::string::npos)
        << "byte " << k.off << ": " << st.message() << " | " << d.status.message();
  }
}

TEST_F(Damage, TruncationAtEveryBoundaryIsTruncatedAndStreamsNeedMore) {
  std::vector<size_t> cuts = {8, 63, 64, 65, 64 + kManifestFixed, good_.size() - kTrailerSize, good_.size() - 1};
  for (const auto& s : sections_) {
    cuts.push_back(s.offset);
    cuts.push_back(s.offset + kSectionFixed);
    for (const auto& c : s.chunks) {
      cuts.push_back(c.offset);
      cuts.push_back(c.offset + kChunkHeaderSize);
      cuts.push_back(c.offset + kChunkHeaderSize + c.stored_size / 2);
    }
  }
  cuts.push_back(GetAt(good_, good_.size() - 64, 8));  // the index
  for (size_t cut : cuts) {
    const std::string b = good_.substr(0, cut);
    Spit(P("cut.hbsnap"), b);
    auto r = SnapshotReader::Open(P("cut.hbsnap"));
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_EQ(r.status().code(), Code::kTruncated) << "cut at " << cut << ": " << r.status().message();
    // A stream that stops there needs more; once it ends, it is truncated.
    StreamDecoder dec(StreamEvents{}, 1);
    Status fed = dec.Feed(b.data(), b.size());
    EXPECT_EQ(fed.code(), Code::kNeedMore) << "cut at " << cut << ": " << fed.ToString();
    Status fin = dec.Finish();
    EXPECT_EQ(fin.code(), Code::kTruncated) << "cut at " << cut;
    EXPECT_NE(fin.message().find("truncated: the stream ended at byte " + std::to_string(cut)), std::string::npos)
        << fin.message();
  }
  Spit(P("long.hbsnap"), good_ + "x");
  auto r = SnapshotReader::Open(P("long.hbsnap"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_NE(r.status().message().find("unexpected bytes after the end"), std::string::npos);
  EXPECT_NE(StreamDecode(good_ + "x", 3).status.message().find("unexpected bytes after the end"), std::string::npos);
}

// Header fields rewritten with a valid header checksum.
std::string WithHeader(std::string b, size_t at, uint64_t v, int n) {
  PutAt(b, at, v, n);
  PutAt(b, kHeaderHashAt, XXH3_64bits(b.data(), kHeaderHashAt), 8);
  return b;
}

TEST_F(Damage, VersionsAndFlagsFollowTheCompatibilityRules) {
  auto open = [&](const std::string& b) {
    Spit(P("v.hbsnap"), b);
    auto r = SnapshotReader::Open(P("v.hbsnap"));
    return r.ok() ? (*r)->Verify() : r.status();
  };
  Status s = open(WithHeader(good_, 8, 2, 2));
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("version 2.1 is newer than this hotboot reads (1.1, any 1.x); upgrade hotboot"),
            std::string::npos) << s.message();
  EXPECT_EQ(StreamDecode(WithHeader(good_, 8, 2, 2), 1).status.code(), Code::kUnsupported);
  s = open(WithHeader(good_, 8, 0, 2));
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("older"), std::string::npos) << s.message();
  EXPECT_TRUE(open(WithHeader(good_, 10, 7, 2)).ok()) << "a newer minor is readable";
  EXPECT_TRUE(open(WithHeader(good_, 12, kFlagTrustRecord | 0x0004, 4)).ok()) << "unknown compatible flags are ignored";
  s = open(WithHeader(good_, 12, 0x00040000, 4));
  EXPECT_EQ(s.code(), Code::kUnsupported);
  EXPECT_NE(s.message().find("header flags 0x00040000"), std::string::npos) << s.message();
  s = open(WithHeader(good_, 40, 1, 1));
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_NE(s.message().find("reserved bytes 28-55 must be zero"), std::string::npos) << s.message();
  s = open(WithHeader(good_, 24, 0, 4));
  EXPECT_NE(s.message().find("max chunk size 0 is out of bounds"), std::string::npos) << s.message();
  s = open(std::string(1000, 'j'));
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_NE(s.message().find("not a hotboot snapshot"), std::string::npos);
  EXPECT_EQ(open("HOT").code(), Code::kCorrupt);
}

TEST_F(Damage, RandomDamageNeverCrashes) {
  std::mt19937 rng(42);
  for (int i = 0; i < 300; ++i) {
    std::string b = good_;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] ^= static_cast<char>(1 + rng() % 255);
    if (rng() % 5 == 0) b.resize(rng() % b.size());
    Spit(P("fuzz"), b);
    auto r = SnapshotReader::Open(P("fuzz"));
    if (r.ok()) {
      EXPECT_FALSE((*r)->Verify(1).ok() && b != good_);
    }
    EXPECT_FALSE(StreamDecode(b, i).status.ok());
  }
}

}  // namespace
}  // namespace hotboot::snapfile
