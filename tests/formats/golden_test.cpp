// Golden files (tests/formats/golden/, described in its README.md): files
// that must decode to known bytes, and damaged files that must fail with a
// given outcome and message, read both seekable and streamed. They pin the
// format: a change that alters how existing files decode fails here.
//
// HOTBOOT_REGEN_GOLDEN=1 formats_test --gtest_filter='Golden.*' rewrites them
// (only for a deliberate format change; say so in the commit).
#include <cstdlib>

#include "container_util.h"
#include "hotboot/signing.h"

namespace hotboot::snapfile {
namespace {

using namespace testutil;

const fs::path kDir = fs::path(HOTBOOT_SOURCE_DIR) / "tests/formats/golden";

std::string Hex128(const std::string& b) {
  XXH128_hash_t h = XXH3_128bits(b.data(), b.size());
  return Digest128{h.high64, h.low64}.Hex();
}

// Small sections of every kind: raw, zstd, zero, empty, bf16 and fp32 planes.
std::vector<SectionSource> GoldenKinds() {
  std::vector<SectionSource> s(6);
  s[0] = {"meta/text", "", ""};
  for (int i = 0; i < 2000; ++i) s[0].bytes += "line " + std::to_string(i % 37) + "\n";
  s[1] = {"criu/zeros.img", "", std::string(256u << 10, '\0')};
  s[2] = {"criu/random.img", "", RandomBytes(3000, 5)};
  s[3] = {"criu/empty.img", "", ""};
  s[4] = {"weights/bf16", "", RandomFloats(64u << 10, ElemType::kBf16, 6), 0600, ElemType::kBf16};
  s[5] = {"weights/fp32", "", RandomFloats(32u << 10, ElemType::kFp32, 7), 0600, ElemType::kFp32};
  return s;
}

// What a good golden file must decode to: "name size xxh3-128" per line.
std::string Expectation(const std::vector<SectionSource>& secs) {
  std::string e;
  for (const auto& s : secs) e += s.name + " " + std::to_string(s.bytes.size()) + " " + Hex128(s.bytes) + "\n";
  return e;
}

void WriteGood(const std::string& name, const std::string& manifest, const std::vector<SectionSource>& secs,
               WriteOptions o = {}) {
  ASSERT_TRUE(WriteSnapshot((kDir / (name + ".hbsnap")).string(), manifest, secs, o).ok());
  Spit((kDir / (name + ".expect")).string(), Expectation(secs));
}

void WriteBad(const std::string& name, const std::string& bytes, const char* outcome, const std::string& message) {
  Spit((kDir / (name + ".hbsnap")).string(), bytes);
  Spit((kDir / (name + ".expect")).string(), std::string(outcome) + "\n" + message + "\n");
}

// The 1.0 files (ok-small, ok-kinds, ok-base, ok-delta and the bad-* made
// from them) were written by hotboot's 1.0 writer and are frozen: a 1.1
// writer cannot make them again, and they must keep decoding. What this
// regenerates: the 1.1 files, and bad-required-flag (from the frozen
// ok-small, with bit 17: bit 16 is the trust record since 1.1).
const fs::path kTestKey = kDir / "test-signing-key.pem";  // a test key, public in this repository

void Regenerate() {
  auto header = [](std::string b, size_t at, uint64_t v, int n) {
    PutAt(b, at, v, n);
    PutAt(b, kHeaderHashAt, XXH3_64bits(b.data(), kHeaderHashAt), 8);
    return b;
  };
  const std::string small10 = Slurp((kDir / "ok-small.hbsnap").string());
  WriteBad("bad-required-flag", header(small10, 12, 0x20000, 4), "unsupported", "header flags 0x00020000");

  // ok-signed: every kind of chunk, signed at write time by the test key.
  auto key = LoadPrivateKey(kTestKey.string());
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  WriteOptions o;
  o.chunk_size = 128u << 10;
  o.signing_key = &*key;
  WriteGood("ok-signed", R"({"format":"hotboot-snapshot-manifest","golden":"1.1"})", GoldenKinds(), o);
  const std::string good = Slurp((kDir / "ok-signed.hbsnap").string());
  auto r = SnapshotReader::Open((kDir / "ok-signed.hbsnap").string());
  ASSERT_TRUE(r.ok());
  // A chunk's stored bytes replaced by other bytes of the same size, every
  // XXH3 fixed, the signed SHA-256 list left alone: only the list catches it.
  const SectionInfo& rnd = *(*r)->FindSection("criu/random.img");
  const ChunkInfo& c = rnd.chunks[0];
  ASSERT_EQ(c.method, Method::kRaw);
  std::string b = good;
  const std::string other = RandomBytes(c.stored_size, 99);
  b.replace(c.offset + kChunkHeaderSize, c.stored_size, other);
  PutAt(b, c.offset + 16, XXH3_64bits(other.data(), other.size()), 8);
  PutAt(b, c.offset + 24, XXH3_64bits(other.data(), other.size()), 8);
  FixChecksums(b, /*fix_chunk_sha256=*/false);
  WriteBad("bad-swapped-chunk", b, "corrupt",
           "section 'criu/random.img' chunk 0 (file offset " + std::to_string(c.offset) +
               "): stored checksum mismatch: the stored bytes have SHA-256");
  b = good;
  b[TrustRange(good).first + kTrustFixed + 7] ^= 1;  // a byte of the hash list, record hash not fixed
  WriteBad("bad-trust-checksum", b, "corrupt", "trust record checksum mismatch");
}

struct Golden {
  std::string name;
  std::vector<std::string> lines;
};

std::vector<Golden> Load(const char* prefix) {
  std::vector<Golden> out;
  for (const auto& e : fs::directory_iterator(kDir)) {
    if (e.path().extension() != ".hbsnap" || e.path().filename().string().rfind(prefix, 0) != 0) continue;
    Golden g{e.path().stem().string(), {}};
    std::istringstream in(Slurp(fs::path(e.path()).replace_extension(".expect").string()));
    for (std::string l; std::getline(in, l);) g.lines.push_back(l);
    out.push_back(g);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

TEST(Golden, GoodFilesDecodeToTheirBytesSeekableAndStreamed) {
  if (std::getenv("HOTBOOT_REGEN_GOLDEN")) Regenerate();
  auto goods = Load("ok-");
  ASSERT_GE(goods.size(), 4u);
  for (const auto& g : goods) {
    const std::string path = (kDir / (g.name + ".hbsnap")).string();
    auto r = SnapshotReader::Open(path);
    ASSERT_TRUE(r.ok()) << g.name << ": " << r.status().ToString();
    Status v = (*r)->Verify(2);
    EXPECT_TRUE(v.ok()) << g.name << ": " << v.ToString();
    Decoded d = StreamDecode(Slurp(path), 1);
    EXPECT_TRUE(d.status.ok()) << g.name << ": " << d.status.ToString();
    std::vector<SectionSource> got;
    for (const auto& s : (*r)->sections()) {
      auto bytes = (*r)->ReadSection(s.name);
      ASSERT_TRUE(bytes.ok()) << g.name << ": " << bytes.status().ToString();
      got.push_back({s.name, "", *bytes});
      if (!s.is_ref) {
        EXPECT_EQ(d.sections[s.name], *bytes) << g.name << " " << s.name << " streamed";
      }
    }
    std::string want;
    for (const auto& l : g.lines) want += l + "\n";
    EXPECT_EQ(Expectation(got), want) << g.name;
  }
}

TEST(Golden, StreamsFedOneByteAtATime) {
  for (const char* name : {"ok-small", "ok-delta"}) {
    const std::string b = Slurp((kDir / (std::string(name) + ".hbsnap")).string());
    StreamDecoder dec(StreamEvents{}, 1);
    for (size_t i = 0; i + 1 < b.size(); ++i) ASSERT_EQ(dec.Feed(&b[i], 1).code(), Code::kNeedMore) << name << " byte " << i;
    EXPECT_TRUE(dec.Feed(&b.back(), 1).ok()) << name;
    EXPECT_TRUE(dec.done());
    EXPECT_EQ(dec.consumed(), b.size());
    EXPECT_EQ(dec.Feed("x", 1).code(), Code::kCorrupt);
  }
}

TEST(Golden, BadFilesFailWithTheirMessage) {
  auto bads = Load("bad-");
  ASSERT_GE(bads.size(), 10u);
  for (const auto& g : bads) {
    ASSERT_EQ(g.lines.size(), 2u) << g.name;
    const std::string path = (kDir / (g.name + ".hbsnap")).string();
    auto r = SnapshotReader::Open(path);
    Status s = r.ok() ? (*r)->Verify(2) : r.status();
    EXPECT_EQ(CodeName(s.code()), g.lines[0]) << g.name << ": " << s.ToString();
    EXPECT_NE(s.message().find(g.lines[1]), std::string::npos) << g.name << ": " << s.message();
    if (g.lines[0] != "failed precondition") {  // a stream reports refs; its reader resolves them
      Status st = StreamDecode(Slurp(path), 2).status;
      EXPECT_EQ(CodeName(st.code()), g.lines[0]) << g.name << " streamed: " << st.ToString();
    }
  }
}

}  // namespace
}  // namespace hotboot::snapfile
