// Golden files (tests/formats/golden/, described in its README.md): files
// that must decode to known bytes, and damaged files that must fail with a
// given outcome and message, read both seekable and streamed. They pin the
// format: a change that alters how existing files decode fails here.
//
// HOTBOOT_REGEN_GOLDEN=1 formats_test --gtest_filter='Golden.*' rewrites them
// (only for a deliberate format change; say so in the commit).
#include <cstdlib>

#include "container_util.h"

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

void Regenerate() {
  for (const auto& e : fs::directory_iterator(kDir)) {
    if (e.path().extension() != ".md") fs::remove(e.path());
  }
  std::vector<SectionSource> small(1);
  small[0] = {"meta/a", "", "0123456789"};
  WriteGood("ok-small", "{}", small);
  WriteOptions o;
  o.chunk_size = 128u << 10;
  WriteGood("ok-kinds", R"({"format":"hotboot-snapshot-manifest","golden":true})", GoldenKinds(), o);
  std::vector<SectionSource> base(1), delta(2);
  base[0] = {"weights/w", "", RandomFloats(1000, ElemType::kBf16, 8), 0644, ElemType::kBf16};
  delta[0] = base[0];
  delta[1] = {"criu/x.img", "", "new"};
  WriteGood("ok-base", "{}", base);
  o = {};
  o.base_path = (kDir / "ok-base.hbsnap").string();
  WriteGood("ok-delta", "{}", delta, o);

  const std::string good = Slurp((kDir / "ok-small.hbsnap").string());
  auto r = SnapshotReader::Open((kDir / "ok-small.hbsnap").string());
  ASSERT_TRUE(r.ok());
  const ChunkInfo& rc = (*r)->FindSection("meta/a")->chunks[0];
  auto header = [](std::string b, size_t at, uint64_t v, int n) {
    PutAt(b, at, v, n);
    PutAt(b, kHeaderHashAt, XXH3_64bits(b.data(), kHeaderHashAt), 8);
    return b;
  };
  std::string b = good;
  b[0] = 'X';
  WriteBad("bad-magic", b, "corrupt", "not a hotboot snapshot (bad magic)");
  WriteBad("bad-newer-major", header(good, 8, 2, 2), "unsupported",
           "snapshot format version 2.0 is newer than this hotboot reads (1.0, any 1.x); upgrade hotboot");
  WriteBad("bad-required-flag", header(good, 12, 0x10000, 4), "unsupported", "header flags 0x00010000");
  WriteBad("bad-header-reserved", header(good, 30, 1, 1), "corrupt", "header reserved bytes 28-55 must be zero");
  b = good;
  b[20] ^= 1;
  WriteBad("bad-header-checksum", b, "corrupt", "header checksum mismatch");
  WriteBad("bad-truncated-in-chunk", good.substr(0, rc.offset + 45), "truncated", "truncated");
  WriteBad("bad-trailing-bytes", good + "\n", "corrupt", "unexpected bytes after the end");
  b = good;
  b[rc.offset + kChunkHeaderSize + 5] ^= 4;
  WriteBad("bad-stored-checksum", b, "corrupt",
           "section 'meta/a' chunk 0 (file offset " + std::to_string(rc.offset) + "): stored checksum mismatch");
  b = good;  // a raw byte changed and its stored hash fixed: the decoded hash catches it
  b[rc.offset + kChunkHeaderSize + 3] ^= 4;
  PutAt(b, rc.offset + 16, XXH3_64bits(b.data() + rc.offset + kChunkHeaderSize, rc.stored_size), 8);
  FixChecksums(b);
  WriteBad("bad-decoded-checksum", b, "corrupt", "section 'meta/a' chunk 0 (file offset " + std::to_string(rc.offset) + "): decoded checksum mismatch");
  PutAt(b, rc.offset + 24, XXH3_64bits(b.data() + rc.offset + kChunkHeaderSize, rc.stored_size), 8);
  FixChecksums(b);  // ... and with the decoded hash fixed too: the content hash
  WriteBad("bad-content-hash", b, "corrupt", "section 'meta/a': content hash mismatch");
  b = good;
  b[good.size() - 64 - 10] ^= 1;
  WriteBad("bad-index-checksum", b, "corrupt", "index checksum mismatch");
  b = good;
  b[good.size() - 1] = 'X';
  WriteBad("bad-trailer-magic", b, "corrupt", "bad trailer magic");
  b = good;  // the section renamed to an escaping path, every checksum fixed
  const size_t name_at = 64 + kManifestFixed + 8 + 2 + kSectionFixed;
  b.replace(name_at, 6, "../../");
  FixChecksums(b);
  WriteBad("bad-unsafe-name", b, "corrupt", "unsafe section name '../../'");
  // A delta whose base is nowhere to be found.
  const fs::path gone = fs::temp_directory_path() / "gone-base.hbsnap";
  ASSERT_TRUE(WriteSnapshot(gone.string(), "{}", base).ok());
  o.base_path = gone.string();
  ASSERT_TRUE(WriteSnapshot((kDir / "bad-ref-without-base.hbsnap").string(), "{}", delta, o).ok());
  fs::remove(gone);
  Spit((kDir / "bad-ref-without-base.expect").string(), "failed precondition\nbase snapshot 'gone-base.hbsnap'\n");
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
