// Issue 11: extraction checked each chunk's hash but not the section's content
// hash, so a snapshot whose chunks are each intact but whose section is not
// the bytes its content hash names was extracted and restored. Every
// extraction path (one thread and many; ExtractTo, which restore uses, and
// ExtractSection, which `hotboot inspect --extract` uses) must refuse it and
// leave no file behind.
#include <xxhash.h>

#include <set>

#include "container_util.h"
#include "records.h"

namespace hotboot::snapfile {
namespace {

using namespace testutil;

// Text, zero and random 64 KiB chunks in turn: zstd, zero and raw chunks.
std::string MixedChunks(int chunks) {
  std::string out;
  for (int i = 0; i < chunks; ++i) {
    std::string c;
    if (i % 3 == 0) {
      c.assign(64 << 10, '\0');
    } else if (i % 3 == 1) {
      c = RandomBytes(64 << 10, 100 + i);
    } else {
      while (c.size() < (64u << 10)) c += "page " + std::to_string(i * 1000 + c.size() % 977) + "\n";
      c.resize(64 << 10);
    }
    out += c;
  }
  return out + "tail";
}

class Issue11ExtractContentHash : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    std::vector<SectionSource> secs(4);
    secs[0].name = "criu/small.img";
    secs[0].bytes = "small";
    secs[1].name = "criu/big.img";
    secs[1].bytes = MixedChunks(24);
    secs[2].name = "criu/empty.img";
    secs[3].name = "weights/w";
    secs[3].bytes = RandomBytes(3000, 9);
    sources_ = secs;
    ASSERT_TRUE(WriteSnapshot(P("good.hbsnap"), "{}", secs, SmallChunks()).ok());
    good_ = Slurp(P("good.hbsnap"));
    auto r = SnapshotReader::Open(P("good.hbsnap"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    big_ = *(*r)->FindSection("criu/big.img");
    ASSERT_GT(big_.chunks.size(), 20u);
    std::set<Method> methods;
    for (const auto& c : big_.chunks) methods.insert(c.method);
    ASSERT_EQ(methods.size(), 3u) << "zstd, zero and raw chunks";
  }

  // The recorded content hash changed (end record, index and digest fixed):
  // every chunk is intact, the bytes are not what the hash names.
  std::string WrongRecordedHash(Digest128* recorded) {
    std::string b = good_;
    const ChunkInfo& last = big_.chunks.back();
    const size_t end_at = last.offset + kChunkHeaderSize + last.stored_size;
    b[end_at + 8 + 5] ^= 0x40;
    FixChecksums(b);
    EXPECT_TRUE(DecodeSectionEnd(b.data() + end_at, recorded).ok());
    EXPECT_FALSE(*recorded == big_.content_hash);
    return b;
  }

  // One raw chunk's bytes changed with its stored and raw hashes fixed: the
  // recorded hash is right, the bytes are not.
  std::string ChangedBytes() {
    std::string b = good_;
    const ChunkInfo* c = nullptr;
    for (size_t i = big_.chunks.size() / 2; i < big_.chunks.size() && !c; ++i) {
      if (big_.chunks[i].method == Method::kRaw) c = &big_.chunks[i];
    }
    EXPECT_NE(c, nullptr);
    if (!c) return b;
    b[c->offset + kChunkHeaderSize + 1234] ^= 1;
    const uint64_t h = XXH3_64bits(b.data() + c->offset + kChunkHeaderSize, c->stored_size);
    PutAt(b, c->offset + 16, h, 8);
    PutAt(b, c->offset + 24, h, 8);
    FixChecksums(b);
    return b;
  }

  // Regular files under d, recursively (temporaries included).
  std::vector<std::string> FilesUnder(const std::string& d) {
    std::vector<std::string> out;
    std::error_code ec;
    if (!fs::exists(d, ec)) return out;
    for (const auto& e : fs::recursive_directory_iterator(d)) {
      if (!e.is_directory()) out.push_back(e.path().string());
    }
    return out;
  }

  std::vector<SectionSource> sources_;
  std::string good_;
  SectionInfo big_;
};

TEST_F(Issue11ExtractContentHash, DamagedFilesHaveIntactChunks) {
  Digest128 recorded;
  for (const std::string& b : {WrongRecordedHash(&recorded), ChangedBytes()}) {
    Spit(P("bad.hbsnap"), b);
    auto r = SnapshotReader::Open(P("bad.hbsnap"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    for (size_t i = 0; i < big_.chunks.size(); ++i) {
      EXPECT_TRUE((*r)->ReadChunk("criu/big.img", i).ok()) << "chunk " << i;
    }
    Status v = (*r)->Verify(2);
    EXPECT_EQ(v.code(), Code::kCorrupt);
    EXPECT_NE(v.message().find("section 'criu/big.img': content hash mismatch"), std::string::npos) << v.message();
  }
}

TEST_F(Issue11ExtractContentHash, ExtractToRefusesOnEveryPathAndLeavesNoFile) {
  Digest128 recorded;
  const std::string wrong_hash = WrongRecordedHash(&recorded);
  const std::string changed = ChangedBytes();
  struct Case {
    const char* what;
    const std::string* bytes;
    Digest128 index_says;
  } cases[] = {{"wrong recorded hash", &wrong_hash, recorded}, {"changed bytes", &changed, big_.content_hash}};
  for (const Case& c : cases) {
    Spit(P("bad.hbsnap"), *c.bytes);
    auto r = SnapshotReader::Open(P("bad.hbsnap"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    for (int threads : {1, 2, 4, 8}) {
      SCOPED_TRACE(std::string(c.what) + ", threads " + std::to_string(threads));
      const std::string out = P("out-" + std::to_string(threads));
      fs::remove_all(out);
      Status s = (*r)->ExtractTo(out, "criu/", threads);
      EXPECT_EQ(s.code(), Code::kCorrupt) << s.ToString();
      EXPECT_NE(s.message().find("section 'criu/big.img': content hash mismatch: the index records " +
                                 c.index_says.Hex() + ", the decoded bytes hash to "),
                std::string::npos)
          << s.message();
      EXPECT_EQ(FilesUnder(out), std::vector<std::string>{}) << "no file, no temporary";
    }
  }
}

TEST_F(Issue11ExtractContentHash, ExtractToLeavesFilesAlreadyThereUntouched) {
  Digest128 recorded;
  Spit(P("bad.hbsnap"), WrongRecordedHash(&recorded));
  auto r = SnapshotReader::Open(P("bad.hbsnap"));
  ASSERT_TRUE(r.ok());
  fs::create_directories(P("out"));
  Spit(P("out/big.img"), "old big");
  Spit(P("out/small.img"), "old small");
  EXPECT_EQ((*r)->ExtractTo(P("out"), "criu/", 4).code(), Code::kCorrupt);
  EXPECT_EQ(Slurp(P("out/big.img")), "old big");
  EXPECT_EQ(Slurp(P("out/small.img")), "old small") << "nothing is published when any section fails";
  EXPECT_EQ(FilesUnder(P("out")).size(), 2u) << "no temporary left";
}

TEST_F(Issue11ExtractContentHash, ExtractSectionRefusesOnEveryPathAndLeavesNoFile) {
  Digest128 recorded;
  Spit(P("bad.hbsnap"), WrongRecordedHash(&recorded));
  auto r = SnapshotReader::Open(P("bad.hbsnap"));
  ASSERT_TRUE(r.ok());
  for (int threads : {1, 4}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    fs::create_directories(P("x"));
    Status s = (*r)->ExtractSection("criu/big.img", P("x/big.bin"), threads);
    EXPECT_EQ(s.code(), Code::kCorrupt) << s.ToString();
    EXPECT_NE(s.message().find("section 'criu/big.img': content hash mismatch"), std::string::npos) << s.message();
    EXPECT_EQ(FilesUnder(P("x")), std::vector<std::string>{});
  }
  // The other sections are still extracted.
  EXPECT_TRUE((*r)->ExtractSection("criu/small.img", P("x/small.bin"), 4).ok());
  EXPECT_EQ(Slurp(P("x/small.bin")), "small");
}

TEST_F(Issue11ExtractContentHash, TheGoldenBadContentHashFileIsNotExtracted) {
  const std::string golden = std::string(HOTBOOT_SOURCE_DIR) + "/tests/formats/golden/bad-content-hash.hbsnap";
  auto r = SnapshotReader::Open(golden);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (int threads : {1, 2}) {
    Status s = (*r)->ExtractTo(P("out"), "", threads);
    EXPECT_NE(s.message().find("section 'meta/a': content hash mismatch"), std::string::npos) << s.message();
    s = (*r)->ExtractSection("meta/a", P("a.bin"), threads);
    EXPECT_NE(s.message().find("section 'meta/a': content hash mismatch"), std::string::npos) << s.message();
    EXPECT_FALSE(fs::exists(P("a.bin")));
    EXPECT_EQ(FilesUnder(P("out")), std::vector<std::string>{});
  }
}

TEST_F(Issue11ExtractContentHash, AnEmptySectionsHashIsCheckedToo) {
  auto r = SnapshotReader::Open(P("good.hbsnap"));
  ASSERT_TRUE(r.ok());
  const SectionInfo& e = *(*r)->FindSection("criu/empty.img");
  ASSERT_TRUE(e.chunks.empty());
  // No chunks: the end record follows the section record.
  const size_t end_at = e.offset + kSectionFixed + e.name.size() + 8;
  std::string b = good_;
  ASSERT_EQ(b.compare(end_at, 4, "HBSE"), 0);
  b[end_at + 20] ^= 1;
  FixChecksums(b);
  Spit(P("bad.hbsnap"), b);
  auto bad = SnapshotReader::Open(P("bad.hbsnap"));
  ASSERT_TRUE(bad.ok());
  for (int threads : {1, 4}) {
    Status s = (*bad)->ExtractTo(P("out"), "criu/", threads);
    EXPECT_NE(s.message().find("section 'criu/empty.img': content hash mismatch"), std::string::npos) << s.message();
    EXPECT_EQ(FilesUnder(P("out")), std::vector<std::string>{});
  }
}

TEST_F(Issue11ExtractContentHash, AChunkErrorIsStillReportedAsSuch) {
  // Workers waiting behind a failed chunk stop; the report names that chunk.
  const ChunkInfo& c = big_.chunks[7];
  std::string b = good_;
  b[c.offset + kChunkHeaderSize + 3] ^= 0x10;
  Spit(P("bad.hbsnap"), b);
  auto r = SnapshotReader::Open(P("bad.hbsnap"));
  ASSERT_TRUE(r.ok());
  for (int threads : {1, 4, 8}) {
    Status s = (*r)->ExtractTo(P("out"), "criu/", threads);
    EXPECT_NE(s.message().find("section 'criu/big.img' chunk 7 (file offset " + std::to_string(c.offset) +
                               "): stored checksum mismatch"),
              std::string::npos)
        << s.message();
    EXPECT_EQ(FilesUnder(P("out")), std::vector<std::string>{});
  }
}

TEST_F(Issue11ExtractContentHash, GoodSnapshotsExtractOnAnyNumberOfThreads) {
  auto r = SnapshotReader::Open(P("good.hbsnap"));
  ASSERT_TRUE(r.ok());
  for (int threads : {1, 2, 3, 8, 32}) {
    const std::string out = P("ok-" + std::to_string(threads));
    ASSERT_TRUE((*r)->ExtractTo(out, "", threads).ok()) << threads;
    for (const auto& s : sources_) EXPECT_TRUE(Slurp(out + "/" + s.name) == s.bytes) << s.name << ", threads " << threads;
    EXPECT_EQ(FilesUnder(out).size(), sources_.size()) << "no temporary left";
  }
  // Every kind of section and chunk, in small chunks.
  ASSERT_TRUE(WriteSnapshot(P("kinds.hbsnap"), "{}", EveryKind(), SmallChunks()).ok());
  auto k = SnapshotReader::Open(P("kinds.hbsnap"));
  ASSERT_TRUE(k.ok());
  for (int threads : {1, 5}) {
    const std::string out = P("kinds-" + std::to_string(threads));
    ASSERT_TRUE((*k)->ExtractTo(out, "", threads).ok());
    for (const auto& s : EveryKind()) EXPECT_TRUE(Slurp(out + "/" + s.name) == s.bytes) << s.name;
  }
}

}  // namespace
}  // namespace hotboot::snapfile
