// Format 1.1 trust (issue 12): chunk SHA-256s, the root, Ed25519 signatures,
// keys, SignSnapshot and trust policies. Every tampered file here has valid
// XXH3 checksums everywhere, so what catches it is the trust machinery.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "container_util.h"
#include "hotboot/signing.h"

namespace hotboot::snapfile {
namespace {

using namespace testutil;

const fs::path kGolden = fs::path(HOTBOOT_SOURCE_DIR) / "tests/formats/golden";

// Two sections of incompressible bytes, stored raw: chunks of two such
// snapshots have the same sizes, so one's chunk fits in the other.
std::vector<SectionSource> RawSections(uint32_t seed) {
  std::vector<SectionSource> s(2);
  s[0] = {"criu/pages.img", "", RandomBytes(200000, seed)};
  s[1] = {"weights/w.bin", "", RandomBytes(100000, seed + 1), 0644, ElemType::kBytes};
  return s;
}

WriteOptions Chunks64K() {
  WriteOptions o;
  o.chunk_size = 64u << 10;
  return o;
}

class Trust : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    auto a = GenerateKeyPair(P("a.key"));
    auto b = GenerateKeyPair(P("b.key"));
    ASSERT_TRUE(a.ok() && b.ok());
    key_a_ = *LoadPrivateKey(P("a.key"));
    key_b_ = *LoadPrivateKey(P("b.key"));
    ASSERT_TRUE(WriteSnapshot(P("s.hbsnap"), R"({"format":"test","n":1})", RawSections(1), Chunks64K()).ok());
  }
  std::unique_ptr<SnapshotReader> Open(const std::string& name, OpenOptions o = {}) {
    auto r = SnapshotReader::Open(P(name), o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  TrustPolicy PolicyOf(const std::vector<std::string>& pubs) {
    auto p = LoadTrustPolicy(pubs, "");
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? *p : TrustPolicy{};
  }
  // Decodes the trust record of b, lets fn change it, writes it back with its
  // record hash (and every other checksum) fixed.
  template <typename Fn>
  std::string EditTrust(std::string b, Fn fn) {
    auto [at, end] = TrustRange(b);
    TrustRecord t;
    Status s = DecodeTrustRecord(b.data() + at, end - at, GetAt(b, at + 8, 8), &t);
    EXPECT_TRUE(s.ok()) << s.ToString();
    fn(t);
    const std::string rec = EncodeTrustRecord(t);
    b.replace(at, end - at, rec);
    PutAt(b, 16, b.size(), 8);  // the header's file size
    PutAt(b, kHeaderHashAt, XXH3_64bits(b.data(), kHeaderHashAt), 8);
    FixChecksums(b, /*fix_chunk_sha256=*/false);
    return b;
  }
  PrivateKey key_a_, key_b_;
};

TEST_F(Trust, RoundTripUnsignedThenSignedOnceThenReplacedThenTwoKeys) {
  auto r = Open("s.hbsnap");
  ASSERT_TRUE(r);
  const TrustInfo t0 = r->trust();
  EXPECT_EQ(r->version_minor(), 1);
  EXPECT_TRUE(t0.has_chunk_hashes);
  EXPECT_EQ(t0.chunk_count, 4u + 2u);
  EXPECT_TRUE(t0.signatures.empty());
  EXPECT_FALSE(IsZero(t0.root));
  for (const auto& s : r->sections()) {
    for (const auto& c : s.chunks) EXPECT_FALSE(IsZero(c.sha256)) << s.name;
  }
  const Digest128 digest = r->file_digest();
  r.reset();

  auto signed1 = SignSnapshot(P("s.hbsnap"), key_a_);
  ASSERT_TRUE(signed1.ok()) << signed1.status().ToString();
  EXPECT_EQ(signed1->root, t0.root);
  EXPECT_FALSE(signed1->replaced);
  EXPECT_EQ(signed1->signatures, 1u);
  r = Open("s.hbsnap");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->file_digest(), digest) << "signing keeps the snapshot's identity";
  EXPECT_EQ(r->trust().root, t0.root);
  ASSERT_EQ(r->trust().signatures.size(), 1u);
  EXPECT_TRUE(r->trust().signatures[0].valid);
  EXPECT_EQ(r->trust().signatures[0].fingerprint, key_a_.public_key().fingerprint());
  EXPECT_TRUE(r->Verify(2).ok());
  r.reset();

  auto again = SignSnapshot(P("s.hbsnap"), key_a_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->replaced);
  EXPECT_EQ(again->signatures, 1u) << "the same key signs once";
  auto two = SignSnapshot(P("s.hbsnap"), key_b_);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->signatures, 2u);
  r = Open("s.hbsnap");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->trust().signatures.size(), 2u);
  EXPECT_TRUE(r->trust().signatures[0].valid && r->trust().signatures[1].valid);
  EXPECT_TRUE(r->Verify(2).ok());
  EXPECT_TRUE(CheckTrust(*r, PolicyOf({P("b.key.pub")})).ok());
  // Streamed: the same root and signatures, reported before OK.
  TrustInfo streamed;
  StreamEvents ev;
  ev.on_trust = [&](const TrustInfo& t) {
    streamed = t;
    return Status::Ok();
  };
  StreamDecoder dec(ev, 2, "s");
  const std::string bytes = Slurp(P("s.hbsnap"));
  EXPECT_TRUE(dec.Feed(bytes.data(), bytes.size()).ok());
  EXPECT_EQ(streamed.root, t0.root);
  ASSERT_EQ(streamed.signatures.size(), 2u);
  EXPECT_TRUE(streamed.signatures[1].valid);
  EXPECT_TRUE(CheckTrust("s", dec.trust(), PolicyOf({P("a.key.pub")})).ok());
}

TEST_F(Trust, SignedAtWriteTimeEqualsSignedLater) {
  WriteOptions o = Chunks64K();
  o.signing_key = &key_a_;
  ASSERT_TRUE(WriteSnapshot(P("w.hbsnap"), R"({"format":"test","n":1})", RawSections(1), o).ok());
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_a_).ok());
  EXPECT_EQ(Slurp(P("w.hbsnap")), Slurp(P("s.hbsnap"))) << "Ed25519 is deterministic; both paths write the same bytes";
}

TEST_F(Trust, ChunkSwappedInFromAnotherSignedSnapshotIsCaughtByItsHashWhileTheSignatureStaysValid) {
  ASSERT_TRUE(WriteSnapshot(P("other.hbsnap"), R"({"format":"test","n":2})", RawSections(7), Chunks64K()).ok());
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_a_).ok());
  ASSERT_TRUE(SignSnapshot(P("other.hbsnap"), key_a_).ok());
  auto mine = Open("s.hbsnap");
  auto theirs = Open("other.hbsnap");
  ASSERT_TRUE(mine && theirs);
  const ChunkInfo c = mine->FindSection("criu/pages.img")->chunks[2];
  const ChunkInfo o = theirs->FindSection("criu/pages.img")->chunks[2];
  ASSERT_EQ(c.method, Method::kRaw);
  ASSERT_EQ(c.stored_size, o.stored_size);
  const std::string good = Slurp(P("s.hbsnap"));
  const std::string other = Slurp(P("other.hbsnap"));
  // Their whole chunk record (stored bytes, and a header whose XXH3s and
  // record hash are right for them) in place of ours; the index, the hash
  // list and so the root stay ours.
  std::string b = good;
  b.replace(c.offset, kChunkHeaderSize + c.stored_size, other, o.offset, kChunkHeaderSize + o.stored_size);
  Spit(P("bad.hbsnap"), b);
  auto r = Open("bad.hbsnap");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->trust().signatures.size(), 1u);
  EXPECT_TRUE(r->trust().signatures[0].valid) << "the root is untouched: the chunk must be caught by its hash";
  EXPECT_TRUE(CheckTrust(*r, PolicyOf({P("a.key.pub")})).ok());
  const std::string want = "section 'criu/pages.img' chunk 2 (file offset " + std::to_string(c.offset) +
                           "): stored checksum mismatch: the stored bytes have SHA-256";
  Result<std::string> got = r->ReadChunk("criu/pages.img", 2);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Code::kCorrupt);
  EXPECT_NE(got.status().message().find(want), std::string::npos) << got.status().message();
  EXPECT_NE(got.status().message().find("signed hash list"), std::string::npos);
  Status x = r->ExtractTo(P("out"), "criu/", 2);
  EXPECT_NE(x.message().find(want), std::string::npos) << x.message();
  EXPECT_FALSE(fs::exists(P("out/pages.img")));
  EXPECT_NE(r->Verify(2).message().find(want), std::string::npos);
  EXPECT_FALSE(r->ReadSection("criu/pages.img").ok());
  Decoded d = StreamDecode(b, 3);
  EXPECT_EQ(d.status.code(), Code::kCorrupt) << d.status.ToString();

  // The index updated to their XXH3s too (valid XXH3 everywhere): the index
  // is in the root, so the signature no longer holds -- and the chunk still
  // fails its SHA-256.
  FixChecksums(b, /*fix_chunk_sha256=*/false);
  Spit(P("bad2.hbsnap"), b);
  auto r2 = Open("bad2.hbsnap");
  ASSERT_TRUE(r2);
  EXPECT_FALSE(r2->trust().signatures[0].valid);
  EXPECT_NE(r2->ReadChunk("criu/pages.img", 2).status().message().find(want), std::string::npos);
  // check_chunk_hashes off (measurement only): XXH3 alone is satisfied.
  OpenOptions no_sha;
  no_sha.check_chunk_hashes = false;
  auto unchecked = SnapshotReader::Open(P("bad2.hbsnap"), no_sha);
  ASSERT_TRUE(unchecked.ok());
  EXPECT_TRUE((*unchecked)->ReadChunk("criu/pages.img", 2).ok());
}

TEST_F(Trust, ChunkBytesSwappedWithTheSignedListRewrittenToMatchLeaveTheSignatureInvalid) {
  // The attacker's other route: keep XXH3 valid and rewrite the SHA-256 list
  // to the new bytes. Chunks then pass, but the root changed: no signature holds.
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_a_).ok());
  auto r0 = Open("s.hbsnap");
  const ChunkInfo c = r0->FindSection("weights/w.bin")->chunks[0];
  std::string b = Slurp(P("s.hbsnap"));
  const std::string evil = RandomBytes(c.stored_size, 1234);
  b.replace(c.offset + kChunkHeaderSize, c.stored_size, evil);
  PutAt(b, c.offset + 16, XXH3_64bits(evil.data(), evil.size()), 8);
  PutAt(b, c.offset + 24, XXH3_64bits(evil.data(), evil.size()), 8);
  FixChecksums(b, /*fix_chunk_sha256=*/true);
  Spit(P("bad.hbsnap"), b);
  auto r = Open("bad.hbsnap");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->ReadChunk("weights/w.bin", 0).ok());
  ASSERT_EQ(r->trust().signatures.size(), 1u);
  EXPECT_FALSE(r->trust().signatures[0].valid);
  Status s = CheckTrust(*r, PolicyOf({P("a.key.pub")}));
  EXPECT_EQ(s.code(), Code::kUntrusted);
  EXPECT_NE(s.message().find("the signature by " + key_a_.public_key().fingerprint() +
                             " does not match this snapshot's contents (made over other bytes)"),
            std::string::npos)
      << s.message();
}

TEST_F(Trust, SignatureCopiedFromAnotherSnapshotIsInvalid) {
  ASSERT_TRUE(WriteSnapshot(P("other.hbsnap"), R"({"format":"test","n":2})", RawSections(7), Chunks64K()).ok());
  ASSERT_TRUE(SignSnapshot(P("other.hbsnap"), key_a_).ok());
  TrustSignature stolen;
  {
    const std::string o = Slurp(P("other.hbsnap"));
    auto [at, end] = TrustRange(o);
    TrustRecord t;
    ASSERT_TRUE(DecodeTrustRecord(o.data() + at, end - at, GetAt(o, at + 8, 8), &t).ok());
    stolen = t.signatures.at(0);
  }
  const std::string b = EditTrust(Slurp(P("s.hbsnap")), [&](TrustRecord& t) { t.signatures.push_back(stolen); });
  Spit(P("bad.hbsnap"), b);
  auto r = Open("bad.hbsnap");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->trust().signatures.size(), 1u);
  EXPECT_FALSE(r->trust().signatures[0].valid);
  EXPECT_TRUE(r->Verify(2).ok()) << "every byte is intact; only the signature is not this snapshot's";
  Status s = CheckTrust(*r, PolicyOf({P("a.key.pub")}));
  EXPECT_EQ(s.code(), Code::kUntrusted);
  EXPECT_NE(s.message().find("made over other bytes"), std::string::npos) << s.message();
}

TEST_F(Trust, ManifestByteChangedWithItsHashesFixedInvalidatesTheSignature) {
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_a_).ok());
  std::string b = Slurp(P("s.hbsnap"));
  ManifestFixed m;
  ASSERT_TRUE(DecodeManifestFixed(b.data() + 64, &m).ok());
  const size_t json_at = 64 + kManifestFixed + m.base_name_len + 8;
  const size_t n_at = b.find("\"n\":1", json_at);
  ASSERT_NE(n_at, std::string::npos);
  b[n_at + 4] = '2';
  PutAt(b, 64 + 16, XXH3_64bits(b.data() + json_at, m.manifest_len), 8);
  PutAt(b, 64 + kManifestFixed + m.base_name_len, XXH3_64bits(b.data() + 64, kManifestFixed + m.base_name_len), 8);
  FixChecksums(b, false);
  Spit(P("bad.hbsnap"), b);
  auto r = Open("bad.hbsnap");
  ASSERT_TRUE(r);
  EXPECT_NE(r->manifest_json().find("\"n\":2"), std::string::npos);
  EXPECT_TRUE(r->Verify(2).ok()) << "XXH3 is satisfied everywhere";
  ASSERT_EQ(r->trust().signatures.size(), 1u);
  EXPECT_FALSE(r->trust().signatures[0].valid);
  EXPECT_EQ(CheckTrust(*r, PolicyOf({P("a.key.pub")})).code(), Code::kUntrusted);
}

TEST_F(Trust, HashListEntryChangedWithTheRecordHashFixedInvalidatesTheSignature) {
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_a_).ok());
  const std::string b = EditTrust(Slurp(P("s.hbsnap")), [](TrustRecord& t) { t.chunk_hashes[3][0] ^= 1; });
  Spit(P("bad.hbsnap"), b);
  auto r = Open("bad.hbsnap");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->trust().signatures.size(), 1u);
  EXPECT_FALSE(r->trust().signatures[0].valid);
  Status s = r->Verify(2);
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_NE(s.message().find("section 'criu/pages.img' chunk 3 (file offset"), std::string::npos) << s.message();
}

TEST_F(Trust, UnsignedAndUnknownKeyAreRefusedUnderAPolicyAndAcceptedWithout) {
  auto r = Open("s.hbsnap");
  ASSERT_TRUE(r);
  EXPECT_TRUE(CheckTrust(*r, TrustPolicy{}).ok()) << "no policy in force";
  Status s = CheckTrust(*r, PolicyOf({P("a.key.pub"), P("b.key.pub")}));
  EXPECT_EQ(s.code(), Code::kUntrusted);
  EXPECT_NE(s.message().find("snapshot " + P("s.hbsnap") + " is not signed; the trust policy (2 keys: " +
                             key_a_.public_key().fingerprint() + ", " + key_b_.public_key().fingerprint()),
            std::string::npos)
      << s.message();
  r.reset();
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_b_).ok());
  r = Open("s.hbsnap");
  s = CheckTrust(*r, PolicyOf({P("a.key.pub")}));
  EXPECT_EQ(s.code(), Code::kUntrusted);
  EXPECT_NE(s.message().find("signed by " + key_b_.public_key().fingerprint() + ", which the trust policy does not trust"),
            std::string::npos)
      << s.message();
}

TEST_F(Trust, Format10GoldenReadsAsUnsignedAndIsRefusedUnderAPolicy) {
  auto r = SnapshotReader::Open((kGolden / "ok-small.hbsnap").string());
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE((*r)->trust().has_chunk_hashes);
  EXPECT_TRUE((*r)->trust().signatures.empty());
  EXPECT_TRUE((*r)->Verify(1).ok());
  EXPECT_TRUE(CheckTrust(**r, TrustPolicy{}).ok());
  Status s = CheckTrust(**r, PolicyOf({P("a.key.pub")}));
  EXPECT_EQ(s.code(), Code::kUntrusted);
  EXPECT_NE(s.message().find("format 1.0, no chunk hashes: cannot be verified"), std::string::npos) << s.message();
  fs::copy_file(kGolden / "ok-small.hbsnap", P("old.hbsnap"));
  auto signed10 = SignSnapshot(P("old.hbsnap"), key_a_);
  ASSERT_FALSE(signed10.ok());
  EXPECT_NE(signed10.status().message().find("format 1.0 has no chunk hashes: rebuild it with this hotboot"),
            std::string::npos)
      << signed10.status().message();
}

TEST_F(Trust, GoldenSignedFileVerifiesWithTheTestKey) {
  auto r = SnapshotReader::Open((kGolden / "ok-signed.hbsnap").string());
  ASSERT_TRUE(r.ok());
  auto pub = LoadPublicKey((kGolden / "test-signing-key.pem.pub").string());
  ASSERT_TRUE(pub.ok());
  ASSERT_EQ((*r)->trust().signatures.size(), 1u);
  EXPECT_TRUE((*r)->trust().signatures[0].valid);
  EXPECT_EQ((*r)->trust().signatures[0].public_key, pub->raw);
  EXPECT_TRUE(CheckTrust(**r, PolicyOf({(kGolden / "test-signing-key.pem.pub").string()})).ok());
}

TEST_F(Trust, BaseIsCoveredByItsRoot) {
  ASSERT_TRUE(WriteSnapshot(P("base.hbsnap"), "{}", RawSections(3), Chunks64K()).ok());
  auto delta_src = RawSections(3);
  delta_src[0].bytes = "changed";
  WriteOptions o = Chunks64K();
  o.base_path = P("base.hbsnap");
  o.signing_key = &key_a_;
  ASSERT_TRUE(WriteSnapshot(P("delta.hbsnap"), "{}", delta_src, o).ok());
  auto base = Open("base.hbsnap");
  auto delta = Open("delta.hbsnap");
  ASSERT_TRUE(base && delta);
  EXPECT_TRUE(delta->FindSection("weights/w.bin")->is_ref);
  EXPECT_EQ(delta->trust().base_root, base->trust().root);
  EXPECT_EQ(delta->trust().base_check, TrustInfo::BaseCheck::kMatched);
  EXPECT_TRUE(CheckTrust(*delta, PolicyOf({P("a.key.pub")})).ok());
  EXPECT_TRUE(delta->ReadSection("weights/w.bin").ok());
  delta.reset();
  // The base's hash list rewritten (its XXH3 digest, which excludes the trust
  // record, is unchanged): its root no longer matches the delta's record.
  Spit(P("base.hbsnap"), EditTrust(Slurp(P("base.hbsnap")), [](TrustRecord& t) { t.chunk_hashes[0][5] ^= 1; }));
  delta = Open("delta.hbsnap");
  ASSERT_TRUE(delta);
  EXPECT_EQ(delta->trust().base_check, TrustInfo::BaseCheck::kMismatched);
  Result<std::string> ref = delta->ReadSection("weights/w.bin");
  ASSERT_FALSE(ref.ok());
  EXPECT_NE(ref.status().message().find("base snapshot 'base.hbsnap'"), std::string::npos) << ref.status().message();
  EXPECT_NE(ref.status().message().find("with root"), std::string::npos) << ref.status().message();
  Status s = CheckTrust(*delta, PolicyOf({P("a.key.pub")}));
  EXPECT_EQ(s.code(), Code::kUntrusted);
  EXPECT_NE(s.message().find("not the one it was signed with"), std::string::npos) << s.message();
}

TEST_F(Trust, DeltaOnAFormat10BaseIsNotCovered) {
  WriteOptions o;
  o.base_path = (kGolden / "ok-base.hbsnap").string();
  o.signing_key = &key_a_;
  auto base = SnapshotReader::Open(o.base_path);
  ASSERT_TRUE(base.ok());
  std::vector<SectionSource> s(1);
  s[0] = {"weights/w", "", *(*base)->ReadSection("weights/w"), 0644, ElemType::kBf16};
  ASSERT_TRUE(WriteSnapshot(P("d.hbsnap"), "{}", s, o).ok());
  OpenOptions oo;
  oo.base_path = o.base_path;
  auto d = Open("d.hbsnap", oo);
  ASSERT_TRUE(d);
  EXPECT_TRUE(IsZero(d->trust().base_root));
  Status st = CheckTrust(*d, PolicyOf({P("a.key.pub")}));
  EXPECT_EQ(st.code(), Code::kUntrusted);
  EXPECT_NE(st.message().find("base snapshot is a format 1.0 file"), std::string::npos) << st.message();
}

// ---- Keys ----

TEST_F(Trust, KeygenWritesModes0600And0644AndRefusesToOverwrite) {
  struct stat st{};
  ASSERT_EQ(::stat(P("a.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(P("a.key.pub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  const std::string before = Slurp(P("a.key"));
  auto again = GenerateKeyPair(P("a.key"));
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("already exists"), std::string::npos);
  EXPECT_EQ(Slurp(P("a.key")), before);
  // Only the .pub is there: still refused, and no private key is left.
  Spit(P("c.key.pub"), "x");
  EXPECT_FALSE(GenerateKeyPair(P("c.key")).ok());
  EXPECT_FALSE(fs::exists(P("c.key")));
  // A symlink planted at the key's path is not followed.
  fs::create_symlink(P("elsewhere"), P("d.key"));
  EXPECT_FALSE(GenerateKeyPair(P("d.key")).ok());
  EXPECT_FALSE(fs::exists(P("elsewhere")));
  EXPECT_EQ(Slurp(P("a.key")).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  EXPECT_EQ(Slurp(P("a.key.pub")).rfind("-----BEGIN PUBLIC KEY-----", 0), 0u);
}

TEST_F(Trust, KeysAreTheFilesOpenSslWrites) {
  if (std::system("command -v openssl >/dev/null") != 0) GTEST_SKIP() << "no openssl command";
  // openssl derives the same public key from our private key...
  ASSERT_EQ(std::system(("openssl pkey -in " + P("a.key") + " -pubout -out " + P("derived.pub")).c_str()), 0);
  EXPECT_EQ(Slurp(P("derived.pub")), Slurp(P("a.key.pub")));
  // ... and a key openssl made loads and signs.
  ASSERT_EQ(std::system(("openssl genpkey -algorithm ed25519 -out " + P("o.key") + " 2>/dev/null").c_str()), 0);
  auto k = LoadPrivateKey(P("o.key"));
  ASSERT_TRUE(k.ok()) << k.status().ToString();
  EXPECT_TRUE(SignSnapshot(P("s.hbsnap"), *k).ok());
  // Not Ed25519, not PEM: clear errors.
  ASSERT_EQ(std::system(("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + P("ec.key") +
                         " 2>/dev/null")
                            .c_str()),
            0);
  auto ec = LoadPrivateKey(P("ec.key"));
  ASSERT_FALSE(ec.ok());
  EXPECT_NE(ec.status().message().find("not Ed25519"), std::string::npos) << ec.status().message();
  Spit(P("junk.pub"), "hello");
  auto junk = LoadPublicKey(P("junk.pub"));
  ASSERT_FALSE(junk.ok());
  EXPECT_NE(junk.status().message().find("is not a PEM public key"), std::string::npos);
}

// ---- Trust directory ----

TEST_F(Trust, TrustDirectoryLoadsItsKeysAndRefusesWhatCouldBePlanted) {
  const std::string dir = P("trust.d");
  fs::create_directory(dir);
  ::chmod(dir.c_str(), 0755);
  fs::copy_file(P("a.key.pub"), dir + "/a.pub");
  Spit(dir + "/README", "not a key, not *.pub: ignored");
  auto p = LoadTrustPolicy({}, dir);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->keys.size(), 1u);
  EXPECT_TRUE(p->in_force());
  EXPECT_EQ(p->keys[0].raw, key_a_.public_key().raw);
  EXPECT_NE(p->Describe().find("from " + dir), std::string::npos) << p->Describe();

  auto missing = LoadTrustPolicy({}, P("nonexistent"));
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->in_force());

  ::chmod(dir.c_str(), 0775);
  auto gw = LoadTrustPolicy({}, dir);
  ASSERT_FALSE(gw.ok());
  EXPECT_EQ(gw.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(gw.status().message().find("anyone who can write it can add keys"), std::string::npos)
      << gw.status().message();
  ::chmod(dir.c_str(), 0755);

  Spit(dir + "/bad.pub", "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n");
  auto bad = LoadTrustPolicy({}, dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir + "/bad.pub is not a PEM public key"), std::string::npos)
      << bad.status().message();
  fs::remove(dir + "/bad.pub");

  // A symlink named *.pub pointing at a key elsewhere: refused (O_NOFOLLOW),
  // a planted link must not add a key.
  fs::create_symlink(P("b.key.pub"), dir + "/b.pub");
  auto link = LoadTrustPolicy({}, dir);
  ASSERT_FALSE(link.ok());
  EXPECT_NE(link.status().message().find(dir + "/b.pub is a symbolic link"), std::string::npos)
      << link.status().message();
  fs::remove(dir + "/b.pub");

  // A parent others can write (and not sticky): they could swap the directory.
  fs::create_directories(P("open/sub"));
  ::chmod(P("open").c_str(), 0777);
  ::chmod(P("open/sub").c_str(), 0755);
  auto parent = LoadTrustPolicy({}, P("open/sub"));
  ASSERT_FALSE(parent.ok());
  EXPECT_NE(parent.status().message().find("its parent " + P("open")), std::string::npos) << parent.status().message();
  ::chmod(P("open").c_str(), 01777);  // sticky, as /tmp: accepted
  EXPECT_TRUE(LoadTrustPolicy({}, P("open/sub")).ok());

  // Named on the command line, a key may be a symlink (mounted secrets are).
  fs::create_symlink(P("b.key.pub"), P("named-link.pub"));
  EXPECT_TRUE(LoadTrustPolicy({P("named-link.pub")}, "").ok());

  // The directory itself as a symlink: refused.
  fs::create_directory_symlink(dir, P("trust-link"));
  EXPECT_FALSE(LoadTrustPolicy({}, P("trust-link")).ok());

  // An empty directory is a policy in force that trusts nobody.
  fs::create_directory(P("empty.d"));
  ::chmod(P("empty.d").c_str(), 0755);
  auto empty = LoadTrustPolicy({}, P("empty.d"));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->in_force());
  auto r = Open("s.hbsnap");
  EXPECT_EQ(CheckTrust(*r, *empty).code(), Code::kUntrusted);
}

// ---- Signing atomically ----

TEST_F(Trust, SigningLeavesTheOriginalIntactWhenTheTemporaryCannotBeWritten) {
  const std::string mnt = P("small-fs");
  fs::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=512k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root): " << std::strerror(errno);
  }
  // 330 KB of snapshot fits once in 512 KiB, not twice.
  const std::string snap = mnt + "/s.hbsnap";
  fs::copy_file(P("s.hbsnap"), snap);
  const std::string before = Slurp(snap);
  auto s = SignSnapshot(snap, key_a_);
  EXPECT_FALSE(s.ok());
  if (!s.ok()) {
    EXPECT_NE(s.status().message().find("No space left"), std::string::npos) << s.status().ToString();
  }
  EXPECT_EQ(Slurp(snap), before) << "the original is untouched";
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(mnt)) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"s.hbsnap"}) << "no temporary left";
  ::umount2(mnt.c_str(), MNT_DETACH);
}

TEST_F(Trust, AStaleTemporaryOfADeadSignerIsRemovedByTheNextSign) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ::waitpid(child, nullptr, 0);  // a pid that no longer runs
  const std::string stale = P("s.hbsnap.tmp." + std::to_string(child));
  const std::string live = P("s.hbsnap.tmp.1");  // init: alive, not ours to remove
  Spit(stale, "half a snapshot");
  Spit(live, "someone else's");
  ASSERT_TRUE(SignSnapshot(P("s.hbsnap"), key_a_).ok());
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_FALSE(fs::exists(P("s.hbsnap.tmp." + std::to_string(::getpid()))));
}

}  // namespace
}  // namespace hotboot::snapfile
