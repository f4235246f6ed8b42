// SnapshotReader::SectionChunks + DecodeChunkTo, the chunk-at-a-time decode
// that the weights upload runs into pinned staging buffers: the same bytes
// as extraction, zero chunks as zeros, ref sections through the base, and
// damaged chunks refused naming section and chunk.
#include "container_util.h"

namespace hotboot::snapfile {
namespace {

using namespace testutil;

class DecodeChunk : public TempDirTest {
 protected:
  // Chunk-at-a-time into one buffer laid out like the device image.
  static Result<std::string> DecodeAll(const SnapshotReader& r, std::string_view name) {
    HB_ASSIGN_OR_RETURN(auto layout, r.SectionChunks(name));
    std::string out(layout.raw_size, '\x5a');  // not zeros: zero chunks must write theirs
    SnapshotReader::ChunkScratch scratch;
    for (size_t k = 0; k < layout.chunks.size(); ++k) {
      HB_RETURN_IF_ERROR(r.DecodeChunkTo(name, k, out.data() + layout.chunks[k].raw_offset, scratch));
    }
    return out;
  }
};

TEST_F(DecodeChunk, EveryChunkDecodesToWhatExtractionWrites) {
  auto secs = EveryKind();
  ASSERT_TRUE(WriteSnapshot(P("s.hbsnap"), "{}", secs, SmallChunks()).ok());
  auto r = SnapshotReader::Open(P("s.hbsnap"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE((*r)->trust().has_chunk_hashes);
  for (const auto& s : secs) {
    auto layout = (*r)->SectionChunks(s.name);
    ASSERT_TRUE(layout.ok()) << s.name;
    EXPECT_EQ(layout->raw_size, s.bytes.size()) << s.name;
    uint64_t off = 0, max = 0;
    for (const auto& c : layout->chunks) {
      EXPECT_EQ(c.raw_offset, off);
      off += c.raw_size;
      max = std::max(max, c.raw_size);
    }
    EXPECT_EQ(layout->max_chunk_raw, max) << s.name;
    EXPECT_LE(max, 64u << 10) << s.name;
    ASSERT_TRUE((*r)->ExtractSection(s.name, P("x.bin")).ok()) << s.name;
    auto got = DecodeAll(**r, s.name);
    ASSERT_TRUE(got.ok()) << s.name << ": " << got.status().ToString();
    EXPECT_TRUE(*got == Slurp(P("x.bin"))) << s.name;
    EXPECT_TRUE(*got == s.bytes) << s.name;
  }
  // The zero section really went through zero chunks.
  const SectionInfo* z = (*r)->FindSection("criu/zeros.img");
  ASSERT_TRUE(z && !z->chunks.empty());
  EXPECT_EQ(z->chunks[0].method, Method::kZero);
}

TEST_F(DecodeChunk, UnknownSectionsAndChunksAreNotFound) {
  ASSERT_TRUE(WriteSnapshot(P("s.hbsnap"), "{}", EveryKind(), SmallChunks()).ok());
  auto r = SnapshotReader::Open(P("s.hbsnap"));
  ASSERT_TRUE(r.ok());
  SnapshotReader::ChunkScratch scratch;
  char b[1];
  EXPECT_EQ((*r)->SectionChunks("nope").status().code(), Code::kNotFound);
  EXPECT_EQ((*r)->DecodeChunkTo("nope", 0, b, scratch).code(), Code::kNotFound);
  const size_t n = (*r)->FindSection("weights/bf16")->chunks.size();
  Status s = (*r)->DecodeChunkTo("weights/bf16", n, b, scratch);
  EXPECT_EQ(s.code(), Code::kNotFound);
  EXPECT_NE(s.message().find("has no chunk " + std::to_string(n)), std::string::npos) << s.message();
}

TEST_F(DecodeChunk, AFlippedStoredByteIsRefusedNamingTheChunk) {
  auto secs = EveryKind();
  ASSERT_TRUE(WriteSnapshot(P("s.hbsnap"), "{}", secs, SmallChunks()).ok());
  size_t chunk = 0;
  uint64_t at = 0;
  {
    auto r = SnapshotReader::Open(P("s.hbsnap"));
    ASSERT_TRUE(r.ok());
    const SectionInfo* w = (*r)->FindSection("weights/bf16");
    ASSERT_GE(w->chunks.size(), 2u);
    chunk = 1;
    const ChunkInfo& c = w->chunks[chunk];
    ASSERT_GT(c.stored_size, 10u);
    at = c.offset + kChunkHeaderSize + c.stored_size / 2;
  }
  std::string f = Slurp(P("s.hbsnap"));
  f[at] ^= 0x10;
  Spit(P("s.hbsnap"), f);
  auto r = SnapshotReader::Open(P("s.hbsnap"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  SnapshotReader::ChunkScratch scratch;
  std::string out(64 << 10, '\0');
  EXPECT_TRUE((*r)->DecodeChunkTo("weights/bf16", 0, out.data(), scratch).ok());
  Status s = (*r)->DecodeChunkTo("weights/bf16", chunk, out.data(), scratch);
  EXPECT_EQ(s.code(), Code::kCorrupt) << s.ToString();
  EXPECT_NE(s.message().find("weights/bf16"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("SHA-256"), std::string::npos) << s.message();
  // The scratch is still good for the next chunk.
  EXPECT_TRUE((*r)->DecodeChunkTo("weights/bf16", 0, out.data(), scratch).ok());
}

TEST_F(DecodeChunk, AChunkWhoseSha256WasRecomputedIsStillCaughtByItsXxh3) {
  // A single chunk has no section content hash behind it (extraction has):
  // with the trust record's SHA-256 rewritten to match damaged bytes (an
  // unsigned file rewritten whole), the chunk's own XXH3 still refuses them.
  ASSERT_TRUE(WriteSnapshot(P("s.hbsnap"), "{}", EveryKind(), SmallChunks()).ok());
  std::string f = Slurp(P("s.hbsnap"));
  ChunkInfo c;
  {
    auto r0 = SnapshotReader::Open(P("s.hbsnap"));
    ASSERT_TRUE(r0.ok());
    c = (*r0)->FindSection("criu/random.img")->chunks[0];
  }
  ASSERT_EQ(c.method, Method::kRaw);
  f[c.offset + kChunkHeaderSize + 3] ^= 0x01;
  FixChecksums(f, /*fix_chunk_sha256=*/true);
  Spit(P("s.hbsnap"), f);
  auto r = SnapshotReader::Open(P("s.hbsnap"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  SnapshotReader::ChunkScratch scratch;
  std::string out(c.raw_size, '\0');
  Status s = (*r)->DecodeChunkTo("criu/random.img", 0, out.data(), scratch);
  EXPECT_EQ(s.code(), Code::kCorrupt) << s.ToString();
  EXPECT_NE(s.message().find("checksum mismatch"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("criu/random.img"), std::string::npos) << s.message();
}

TEST_F(DecodeChunk, RefSectionsDecodeFromTheBase) {
  const std::string weights = RandomFloats(300000, ElemType::kBf16, 9);
  std::vector<SectionSource> base(1), next(2);
  base[0] = {"weights/model", "", weights, 0644, ElemType::kBf16};
  ASSERT_TRUE(WriteSnapshot(P("base.hbsnap"), "{}", base, SmallChunks()).ok());
  next[0] = {"weights/again", "", weights, 0644, ElemType::kBf16};
  next[1] = {"criu/pages.img", "", RandomBytes(1000, 3)};
  WriteOptions o = SmallChunks();
  o.base_path = P("base.hbsnap");
  ASSERT_TRUE(WriteSnapshot(P("next.hbsnap"), "{}", next, o).ok());
  auto r = SnapshotReader::Open(P("next.hbsnap"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE((*r)->FindSection("weights/again")->is_ref);
  auto layout = (*r)->SectionChunks("weights/again");
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_GT(layout->chunks.size(), 1u);
  auto got = DecodeAll(**r, "weights/again");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(*got == weights);
}

}  // namespace
}  // namespace hotboot::snapfile
