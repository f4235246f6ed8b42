// The OCI client and HttpFile against real servers on 127.0.0.1:
// docker-registry (TLS + htpasswd), nginx (HTTPS, Range), a cutting proxy.
#include "hotboot/oci.h"

#include <fcntl.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "servers.h"

namespace hotboot::fetch {
namespace {

namespace fs = std::filesystem;
using hotboot::testing::CuttingProxy;
using hotboot::testing::FileServer;
using hotboot::testing::RegistryServer;
using ::testing::HasSubstr;

std::string MakeTempDir(const std::string& tag) {
  std::string t = (fs::temp_directory_path() / ("hotboot-" + tag + "-XXXXXX")).string();
  char* d = mkdtemp(t.data());
  return d != nullptr ? std::string(d) : std::string();
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return s;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string B64(const std::string& s) {
  std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(s.data()), static_cast<int>(s.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// Runs a shell command; returns its stdout and sets *rc.
std::string Shell(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

Sink AppendTo(std::string* out) {
  return [out](const char* d, size_t n) {
    out->append(d, n);
    return Status::Ok();
  };
}

// ---------------------------------------------------------------- references

TEST(OciRefTest, ParsesGoodForms) {
  auto r = ParseOciRef("oci://127.0.0.1:5000/models/manga-llm:v3");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->registry, "127.0.0.1:5000");
  EXPECT_EQ(r->repository, "models/manga-llm");
  EXPECT_EQ(r->tag, "v3");
  EXPECT_EQ(r->digest, "");
  EXPECT_EQ(r->reference(), "v3");
  EXPECT_EQ(r->str(), "oci://127.0.0.1:5000/models/manga-llm:v3");

  r = ParseOciRef("oci://registry.example/a/b.c/d_e/f__g/h--i");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->registry, "registry.example");
  EXPECT_EQ(r->repository, "a/b.c/d_e/f__g/h--i");
  EXPECT_EQ(r->tag, "latest");

  const std::string d = "sha256:" + std::string(64, 'a');
  r = ParseOciRef("oci://localhost:65535/repo@" + d);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tag, "");
  EXPECT_EQ(r->digest, d);
  EXPECT_EQ(r->reference(), d);
  EXPECT_EQ(r->str(), "oci://localhost:65535/repo@" + d);

  r = ParseOciRef("oci://host:1/repo:Tag_1.2-x@" + d);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tag, "Tag_1.2-x");
  EXPECT_EQ(r->reference(), d);  // the digest wins
  r = ParseOciRef("oci://host/repo:" + std::string(128, 'x'));
  EXPECT_TRUE(r.ok());

  EXPECT_TRUE(IsOciRef("oci://x/y"));
  EXPECT_FALSE(IsOciRef("https://x/y"));
  EXPECT_TRUE(IsHttpUrl("https://x/y"));
  EXPECT_TRUE(IsHttpUrl("http://x/y"));
  EXPECT_FALSE(IsHttpUrl("oci://x/y"));
  EXPECT_FALSE(IsHttpUrl("/tmp/x.hbsnap"));
}

TEST(OciRefTest, RejectsBadForms) {
  const std::string d = "sha256:" + std::string(64, 'a');
  for (const std::string& bad : std::vector<std::string>{
           "docker://host/repo", "oci://", "oci://host", "oci://host/", "oci:///repo", "oci://host/Repo",
           "oci://host:0/r", "oci://host:65536/r", "oci://host:abc/r", "oci://host:/r", "oci://ho_st/r",
           "oci://-host/r", "oci://host/r:", "oci://host/r:-bad", "oci://host/r:a b", "oci://host/r@sha256:abc",
           "oci://host/r@md5:" + std::string(32, 'a'), "oci://host/r@" + d.substr(0, 70) + "A", "oci://host//r",
           "oci://host/r/", "oci://host/a..b", "oci://host/a-", "oci://host/_a", "oci://host/r:" + std::string(129, 'x'),
           "oci://host/r@" + d + "x", "oci://host/r:t@", "oci://host/r\n:t"}) {
    auto r = ParseOciRef(bad);
    ASSERT_FALSE(r.ok()) << bad << " parsed as " << r->str();
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("expected oci://HOST[:PORT]/REPOSITORY")) << bad;
  }
}

// ---------------------------------------------------------------- manifests

OciManifest SampleManifest() {
  OciManifest m;
  m.artifact_type = "application/vnd.hotboot.snapshot.v1";
  m.config = {"application/vnd.hotboot.snapshot.config.v1+json", Sha256Digest("{}"), 2, {}};
  m.layers.push_back({"application/vnd.hotboot.section.v1", Sha256Digest("a"), 1, {{"org.hotboot.name", "a"}}});
  m.layers.push_back({"application/vnd.hotboot.section.v1", Sha256Digest("bb"), 2, {}});
  m.annotations["org.opencontainers.image.created"] = "2026-12-02T00:00:00Z";
  return m;
}

TEST(OciManifestTest, RoundTrips) {
  OciManifest m = SampleManifest();
  std::string j = m.ToJson();
  EXPECT_THAT(j, HasSubstr("\"schemaVersion\":2"));
  EXPECT_THAT(j, HasSubstr(std::string("\"mediaType\":\"") + kOciManifestType + "\""));
  auto p = OciManifest::Parse(j);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->artifact_type, m.artifact_type);
  EXPECT_EQ(p->config.digest, m.config.digest);
  ASSERT_EQ(p->layers.size(), 2u);
  EXPECT_EQ(p->layers[0].annotations.at("org.hotboot.name"), "a");
  EXPECT_EQ(p->layers[1].size, 2u);
  EXPECT_EQ(p->annotations, m.annotations);
  EXPECT_EQ(p->ToJson(), j);  // canonical
}

TEST(OciManifestTest, RejectsBadFieldsNamingThem) {
  const std::string good = SampleManifest().ToJson();
  auto expect_bad = [](const std::string& json, const std::string& field) {
    auto p = OciManifest::Parse(json);
    ASSERT_FALSE(p.ok()) << json;
    EXPECT_EQ(p.status().code(), Code::kCorrupt) << json;
    EXPECT_THAT(p.status().message(), HasSubstr(field)) << json;
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? s : s.replace(at, from.size(), to);
  };
  expect_bad("not json", "not valid JSON");
  expect_bad("[]", "not a JSON object");
  expect_bad(replace("\"schemaVersion\":2", "\"schemaVersion\":1"), "schemaVersion");
  expect_bad(replace("\"size\":2", "\"size\":-2"), "config.size");
  expect_bad(replace("\"size\":2", "\"size\":2.5"), "config.size");
  expect_bad(replace("\"size\":2", "\"size\":1125899906842624"), "config.size");  // 2^50
  expect_bad(replace("\"size\":2", "\"size\":\"2\""), "config.size");
  expect_bad(replace(Sha256Digest("a"), "sha256:" + std::string(64, 'A')), "layers[0].digest");
  expect_bad(replace("\"org.hotboot.name\":\"a\"", "\"org.hotboot.name\":1"), "layers[0].annotations");
  expect_bad(replace("\"layers\":[", "\"layers\":{\"x\":[") + "", "");  // not JSON any more, any message
  expect_bad(replace(kOciManifestType, "application/vnd.oci.image.index.v1+json"), "mediaType");
  std::string many = "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" + Sha256Digest("") +
                     "\",\"size\":0},\"layers\":[";
  for (int i = 0; i < 10001; ++i) {
    many += (i ? "," : "") + std::string("{\"mediaType\":\"x\",\"digest\":\"") + Sha256Digest("") + "\",\"size\":0}";
  }
  many += "]}";
  expect_bad(many, "more than 10000");
  expect_bad(std::string(4u << 20, ' ') + "{}", "4 MiB");
  EXPECT_EQ(Sha256Digest(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

// ---------------------------------------------------------------- registry

class RegistryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("oci-test"));
    auto r = RegistryServer::Start(*dir_ + "/registry");
    if (!r.ok()) {
      start_error_ = new Status(r.status());
      return;
    }
    server_ = std::move(r).value().release();
    authfile_ = new std::string(server_->WriteAuthFile(*dir_ + "/auth.json", server_->user(), server_->password()));
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    if (dir_ != nullptr) fs::remove_all(*dir_);
    delete dir_;
    delete authfile_;
    delete start_error_;
    dir_ = authfile_ = nullptr;
    start_error_ = nullptr;
  }
  void SetUp() override {
    if (start_error_ != nullptr) {
      if (start_error_->code() == Code::kNotFound) GTEST_SKIP() << start_error_->ToString();
      FAIL() << "registry did not start: " << start_error_->ToString();
    }
  }
  RemoteOptions Opts(const std::string& authfile = "") const {
    RemoteOptions o;
    o.tls.ca_cert = server_->ca_cert();
    o.authfile = authfile.empty() ? *authfile_ : authfile;
    o.low_speed_time_s = 10;
    return o;
  }
  std::unique_ptr<Registry> Connect(const std::string& repo_tag, const RemoteOptions& o,
                                    const std::string& host = "") const {
    auto ref = ParseOciRef("oci://" + (host.empty() ? server_->host() : host) + "/" + repo_tag);
    EXPECT_TRUE(ref.ok()) << ref.status().ToString();
    auto reg = Registry::Connect(*ref, o);
    EXPECT_TRUE(reg.ok()) << reg.status().ToString();
    return reg.ok() ? std::move(reg).value() : nullptr;
  }
  // Pushes a 5 MiB blob in 1 MiB chunks, a config and a manifest; once per suite.
  struct Pushed {
    std::string blob, blob_digest, config, config_digest, manifest, manifest_digest;
  };
  const Pushed& PushOnce() {
    if (pushed_ != nullptr) return *pushed_;
    auto p = std::make_unique<Pushed>();
    p->blob = RandomBytes(5 << 20, 7);
    p->blob_digest = Sha256Digest(p->blob);
    const std::string path = *dir_ + "/blob.bin";
    // The blob sits in the middle of a file: offset 1000.
    WriteFile(path, std::string(1000, 'x') + p->blob + "tail");
    auto reg = Connect("models/llm:v1", Opts());
    EXPECT_NE(reg, nullptr);
    if (reg == nullptr) return *p;
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    uint64_t last_sent = 0;
    int calls = 0;
    Status st = reg->PushBlob(p->blob_digest, fd, 1000, p->blob.size(), 1 << 20, [&](uint64_t s) {
      EXPECT_GE(s, last_sent);
      last_sent = s;
      ++calls;
    });
    close(fd);
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(last_sent, p->blob.size());
    EXPECT_GT(calls, 5);
    p->config = "{\"hotboot\":\"config\"}";
    p->config_digest = Sha256Digest(p->config);
    st = reg->PushBlobBytes(p->config_digest, p->config);
    EXPECT_TRUE(st.ok()) << st.ToString();
    OciManifest m;
    m.artifact_type = "application/vnd.hotboot.snapshot.v1";
    m.config = {"application/vnd.hotboot.snapshot.config.v1+json", p->config_digest, p->config.size(), {}};
    m.layers.push_back({"application/vnd.hotboot.section.v1", p->blob_digest, p->blob.size(),
                        {{"org.opencontainers.image.title", "weights"}}});
    m.annotations["org.hotboot.test"] = "oci_test";
    p->manifest = m.ToJson();
    auto d = reg->PutManifest("v1", kOciManifestType, p->manifest);
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    p->manifest_digest = Sha256Digest(p->manifest);
    if (d.ok()) {
      EXPECT_EQ(*d, p->manifest_digest);
    }
    pushed_ = p.release();
    return *pushed_;
  }

  static std::string* dir_;
  static std::string* authfile_;
  static RegistryServer* server_;
  static Status* start_error_;
  static Pushed* pushed_;
};
std::string* RegistryTest::dir_ = nullptr;
std::string* RegistryTest::authfile_ = nullptr;
RegistryServer* RegistryTest::server_ = nullptr;
Status* RegistryTest::start_error_ = nullptr;
RegistryTest::Pushed* RegistryTest::pushed_ = nullptr;

TEST_F(RegistryTest, PushChunkedThenReadManifestAndRanges) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  // The blob landed whole on the registry's disk.
  EXPECT_EQ(ReadFile(server_->BlobDataPath(p.blob_digest)), p.blob);

  auto reg = Connect("models/llm:v1", Opts());
  ASSERT_NE(reg, nullptr);
  auto by_tag = reg->GetManifest("v1");
  ASSERT_TRUE(by_tag.ok()) << by_tag.status().ToString();
  EXPECT_EQ(by_tag->bytes, p.manifest);
  EXPECT_EQ(by_tag->digest, p.manifest_digest);
  EXPECT_EQ(by_tag->media_type, kOciManifestType);
  auto by_digest = reg->GetManifest(p.manifest_digest);
  ASSERT_TRUE(by_digest.ok()) << by_digest.status().ToString();
  EXPECT_EQ(by_digest->bytes, p.manifest);
  auto parsed = OciManifest::Parse(by_tag->bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->layers.at(0).digest, p.blob_digest);

  auto has = reg->HasBlob(p.blob_digest);
  ASSERT_TRUE(has.ok()) << has.status().ToString();
  EXPECT_TRUE(*has);
  has = reg->HasBlob(Sha256Digest("never pushed"));
  ASSERT_TRUE(has.ok()) << has.status().ToString();
  EXPECT_FALSE(*has);

  const uint64_t n = p.blob.size();
  for (auto [off, len] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 1}, {0, 4096}, {n / 2 - 7, 300000}, {n - 1, 1}, {n - 100000, 100000}, {0, n}}) {
    std::string got;
    auto r = reg->GetBlob(p.blob_digest, off, len, AppendTo(&got));
    ASSERT_TRUE(r.ok()) << off << "+" << len << ": " << r.status().ToString();
    EXPECT_EQ(*r, len);
    EXPECT_TRUE(got == p.blob.substr(off, len)) << "bytes differ at " << off << "+" << len;
  }
  // Past the end.
  std::string got;
  auto r = reg->GetBlob(p.blob_digest, n, 10, AppendTo(&got));
  EXPECT_FALSE(r.ok());
  // The config, pushed monolithically.
  got.clear();
  r = reg->GetBlob(p.config_digest, 0, p.config.size(), AppendTo(&got));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(got, p.config);
}

TEST_F(RegistryTest, SinkErrorAbortsTheTransfer) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  auto reg = Connect("models/llm:v1", Opts());
  ASSERT_NE(reg, nullptr);
  uint64_t seen = 0;
  auto r = reg->GetBlob(p.blob_digest, 0, p.blob.size(), [&](const char*, size_t n) {
    seen += n;
    return seen > (1 << 20) ? IoError("disk full (test)") : Status::Ok();
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo);
  EXPECT_EQ(r.status().message(), "disk full (test)");
  EXPECT_LT(seen, p.blob.size());
}

TEST_F(RegistryTest, MountFromAnotherRepository) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  auto other = Connect("models/other:v1", Opts());
  ASSERT_NE(other, nullptr);
  auto m = other->MountBlob(p.blob_digest, "models/llm");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(*m);
  auto has = other->HasBlob(p.blob_digest);
  ASSERT_TRUE(has.ok());
  EXPECT_TRUE(*has);
  // A blob the source does not hold: an upload is opened (and cancelled).
  const std::string unknown = Sha256Digest("nobody pushed this");
  m = other->MountBlob(unknown, "models/llm");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_FALSE(*m);
  has = other->HasBlob(unknown);
  ASSERT_TRUE(has.ok());
  EXPECT_FALSE(*has);
}

TEST_F(RegistryTest, WrongDigestIsRefused) {
  auto reg = Connect("models/bad:v1", Opts());
  ASSERT_NE(reg, nullptr);
  Status st = reg->PushBlobBytes(Sha256Digest("other bytes"), "these bytes");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr(Sha256Digest("other bytes")));
}

TEST_F(RegistryTest, UnknownTagIsNotFound) {
  (void)PushOnce();
  auto reg = Connect("models/llm:v1", Opts());
  ASSERT_NE(reg, nullptr);
  auto r = reg->GetManifest("no-such-tag");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("no-such-tag"));
  auto b = reg->GetBlob(Sha256Digest("absent"), 0, 10, [](const char*, size_t) { return Status::Ok(); });
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kNotFound) << b.status().ToString();
  EXPECT_THAT(b.status().message(), HasSubstr(Sha256Digest("absent")));
  EXPECT_THAT(b.status().message(), HasSubstr("models/llm"));
}

TEST_F(RegistryTest, WrongCredentialsSayWhichAndWhere) {
  const std::string bad = server_->WriteAuthFile(*dir_ + "/wrong.json", server_->user(), "not-the-password");
  auto reg = Connect("models/llm:v1", Opts(bad));
  ASSERT_NE(reg, nullptr);
  auto r = reg->GetManifest("v1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("refused the credentials for user '" + server_->user() + "'"));
  EXPECT_THAT(r.status().message(), HasSubstr(bad));
  EXPECT_THAT(r.status().message(), HasSubstr("podman login " + server_->host()));
  // Pushing too.
  Status st = reg->PushBlobBytes(Sha256Digest("x"), "x");
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
}

TEST_F(RegistryTest, NoCredentialsSayWhereItLooked) {
  // An auth file that names another registry only, and default files that do not exist.
  const std::string home = *dir_ + "/home";
  fs::create_directories(home);
  const char* vars[] = {"REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG", "HOME"};
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  for (const char* v : vars) {
    const char* old = getenv(v);
    saved.emplace_back(v, old ? std::optional<std::string>(old) : std::nullopt);
    unsetenv(v);
  }
  setenv("HOME", home.c_str(), 1);
  RemoteOptions o = Opts();
  o.authfile.clear();
  auto reg = Connect("models/llm:v1", o);
  ASSERT_NE(reg, nullptr);
  auto r = reg->GetManifest("v1");
  for (auto& [k, v] : saved) {
    if (v) setenv(k.c_str(), v->c_str(), 1);
    else unsetenv(k.c_str());
  }
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("none were found"));
  EXPECT_THAT(r.status().message(), HasSubstr(home + "/.config/containers/auth.json"));
  EXPECT_THAT(r.status().message(), HasSubstr(home + "/.docker/config.json"));

  // An --authfile that does not exist is refused at Connect.
  auto ref = ParseOciRef("oci://" + server_->host() + "/models/llm:v1");
  ASSERT_TRUE(ref.ok());
  auto c = Registry::Connect(*ref, Opts(*dir_ + "/missing.json"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(*dir_ + "/missing.json"));
}

TEST_F(RegistryTest, AuthFileKeysAsDockerWritesThem) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  const std::string auth = B64(server_->user() + ":" + server_->password());
  for (const std::string& key : {"https://" + server_->host(), "https://" + server_->host() + "/v1/",
                                 server_->host() + "/models"}) {
    const std::string path = *dir_ + "/keyed.json";
    WriteFile(path, "{\"auths\":{\"other.example\":{\"auth\":\"" + B64("a:b") + "\"},\"" + key +
                        "\":{\"auth\":\"" + auth + "\"}}}");
    auto reg = Connect("models/llm:v1", Opts(path));
    ASSERT_NE(reg, nullptr);
    auto r = reg->GetManifest("v1");
    ASSERT_TRUE(r.ok()) << key << ": " << r.status().ToString();
    EXPECT_EQ(r->digest, p.manifest_digest);
  }
}

TEST_F(RegistryTest, AlteredBlobOnDiskIsStillServed) {
  // GetBlob does not check digests (the caller does, per chunk); a blob whose
  // bytes changed on the registry's disk still comes back, changed.
  auto reg = Connect("models/altered:v1", Opts());
  ASSERT_NE(reg, nullptr);
  const std::string blob = RandomBytes(300000, 11);
  const std::string digest = Sha256Digest(blob);
  ASSERT_TRUE(reg->PushBlobBytes(digest, blob).ok());
  const std::string data = server_->BlobDataPath(digest);
  std::string altered = ReadFile(data);
  ASSERT_EQ(altered, blob);
  altered[123456] = static_cast<char>(altered[123456] ^ 0x5a);
  WriteFile(data, altered);
  std::string got;
  auto r = reg->GetBlob(digest, 0, blob.size(), AppendTo(&got));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(got.size(), blob.size());
  EXPECT_TRUE(got == altered);
  EXPECT_NE(Sha256Digest(got), digest);
}

TEST_F(RegistryTest, DroppedConnectionMidBlobIsIoAfterTheBytesThatCame) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  // The first connection through the proxy is cut after 1 MiB went to us
  // (TLS records and headers included), later ones pass whole.
  auto proxy = CuttingProxy::Start(server_->port(), 1 << 20, 1);
  ASSERT_TRUE(proxy.ok()) << proxy.status().ToString();
  const std::string host = "127.0.0.1:" + std::to_string((*proxy)->port());
  const std::string path = *dir_ + "/proxy-auth.json";
  WriteFile(path, "{\"auths\":{\"" + host + "\":{\"auth\":\"" + B64(server_->user() + ":" + server_->password()) +
                      "\"}}}");
  auto reg = Connect("models/llm:v1", Opts(path), host);
  ASSERT_NE(reg, nullptr);
  std::string got;
  auto r = reg->GetBlob(p.blob_digest, 0, p.blob.size(), AppendTo(&got));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(p.blob_digest));
  EXPECT_THAT(r.status().message(), HasSubstr("after " + std::to_string(got.size()) + " bytes"));
  EXPECT_THAT(r.status().message(), HasSubstr("/models/llm/"));
  std::cout << "[dropped connection] " << r.status().ToString() << "\n";
  EXPECT_GT(got.size(), 0u);
  EXPECT_LT(got.size(), uint64_t{1} << 20);
  EXPECT_TRUE(got == p.blob.substr(0, got.size()));
  // Resume from where it broke: the next connection passes whole.
  auto rest = reg->GetBlob(p.blob_digest, got.size(), p.blob.size() - got.size(), AppendTo(&got));
  ASSERT_TRUE(rest.ok()) << rest.status().ToString();
  EXPECT_TRUE(got == p.blob);
  EXPECT_GE((*proxy)->connections(), 2);
}

TEST_F(RegistryTest, SkopeoReadsWhatWasPushed) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  if (access("/usr/bin/skopeo", X_OK) != 0) GTEST_SKIP() << "skopeo is missing";
  const std::string base = "/usr/bin/skopeo inspect --tls-verify=false --authfile " + *authfile_ + " docker://" +
                           server_->host() + "/models/llm:v1";
  int rc = 0;
  std::string raw = Shell(base.substr(0, 23) + " --raw" + base.substr(23) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << raw;
  EXPECT_EQ(raw, p.manifest);
  std::string full = Shell(base + " 2>&1", &rc);
  // For the lead: what skopeo 1.9.3 says about an artifact with a custom
  // config media type and artifactType.
  std::cout << "[skopeo inspect, rc=" << rc << "]\n" << full << "\n";
  RecordProperty("skopeo_inspect_rc", rc);
}

TEST_F(RegistryTest, PlainHttpRegistryWithoutAuth) {
  auto r = RegistryServer::Start(*dir_ + "/plain", /*tls=*/false, /*auth=*/false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  RemoteOptions o;
  o.plain_http = true;
  o.authfile = "";
  auto ref = ParseOciRef("oci://" + (*r)->host() + "/plain/repo:t");
  ASSERT_TRUE(ref.ok());
  auto reg = Registry::Connect(*ref, o);
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  const std::string blob = "hello plain registry";
  ASSERT_TRUE((*reg)->PushBlobBytes(Sha256Digest(blob), blob).ok());
  std::string got;
  auto g = (*reg)->GetBlob(Sha256Digest(blob), 6, 5, AppendTo(&got));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(got, "plain");
}

TEST_F(RegistryTest, ManyThreadsShareOneRegistry) {
  const Pushed& p = PushOnce();
  ASSERT_FALSE(HasFailure());
  auto reg = Connect("models/llm:v1", Opts());  // not yet authenticated: threads race to it
  ASSERT_NE(reg, nullptr);
  const uint64_t part = p.blob.size() / 8;
  std::vector<std::string> got(8);
  std::vector<Status> st(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto r = reg->GetBlob(p.blob_digest, i * part, part, AppendTo(&got[i]));
      st[i] = r.status();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(st[i].ok()) << i << ": " << st[i].ToString();
    EXPECT_TRUE(got[i] == p.blob.substr(i * part, part)) << i;
  }
}

// ---------------------------------------------------------------- Bearer

std::string B64Url(const std::string& s) {
  std::string b = B64(s);
  for (char& c : b) c = c == '+' ? '-' : c == '/' ? '_' : c;
  while (!b.empty() && b.back() == '=') b.pop_back();
  return b;
}

// An ES256 JWT as docker/distribution's token auth accepts it: the signing
// certificate rides in the x5c header and is the registry's root bundle.
std::string MakeJwt(const std::string& key_pem, const std::string& cert_pem, const std::string& claims) {
  FILE* kf = fopen(key_pem.c_str(), "r");
  FILE* cf = fopen(cert_pem.c_str(), "r");
  if (kf == nullptr || cf == nullptr) return "";
  EVP_PKEY* key = PEM_read_PrivateKey(kf, nullptr, nullptr, nullptr);
  X509* cert = PEM_read_X509(cf, nullptr, nullptr, nullptr);
  fclose(kf);
  fclose(cf);
  if (key == nullptr || cert == nullptr) return "";
  unsigned char* der = nullptr;
  int der_len = i2d_X509(cert, &der);
  std::string cert_der(reinterpret_cast<char*>(der), static_cast<size_t>(der_len));
  OPENSSL_free(der);
  X509_free(cert);
  const std::string header = "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"x5c\":[\"" + B64(cert_der) + "\"]}";
  const std::string signing_input = B64Url(header) + "." + B64Url(claims);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t sig_len = 0;
  std::string sig;
  if (EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
      EVP_DigestSign(ctx, nullptr, &sig_len, reinterpret_cast<const unsigned char*>(signing_input.data()),
                     signing_input.size()) == 1) {
    sig.resize(sig_len);
    if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &sig_len,
                       reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) != 1) {
      sig.clear();
    }
    sig.resize(sig_len);
  }
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  // DER ECDSA-Sig-Value -> JWS's raw r || s.
  const unsigned char* p = reinterpret_cast<const unsigned char*>(sig.data());
  ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
  if (es == nullptr) return "";
  unsigned char raw[64];
  BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
  ECDSA_SIG_free(es);
  return signing_input + "." + B64Url(std::string(reinterpret_cast<char*>(raw), 64));
}

TEST(BearerRegistryTest, TokenFromTheRealmIsUsed) {
  if (access("/usr/bin/docker-registry", X_OK) != 0 || access("/usr/sbin/nginx", X_OK) != 0 ||
      access("/usr/bin/openssl", X_OK) != 0) {
    GTEST_SKIP() << "docker-registry, nginx or openssl is missing";
  }
  const std::string dir = MakeTempDir("bearer-test");
  chmod(dir.c_str(), 0755);
  int rc = 0;
  std::string out = Shell("/usr/bin/openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                          "-keyout " + dir + "/signer.key -out " + dir + "/signer.pem -days 2 "
                          "-subj /CN=hotboot-token-signer 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  const long now = static_cast<long>(time(nullptr));
  const std::string claims =
      "{\"iss\":\"hotboot-issuer\",\"sub\":\"hotboot\",\"aud\":\"hotboot-registry\",\"exp\":" +
      std::to_string(now + 3600) + ",\"nbf\":" + std::to_string(now - 60) + ",\"iat\":" + std::to_string(now - 60) +
      ",\"jti\":\"t1\",\"access\":[{\"type\":\"repository\",\"name\":\"bearer/repo\","
      "\"actions\":[\"pull\",\"push\"]}]}";
  const std::string jwt = MakeJwt(dir + "/signer.key", dir + "/signer.pem", claims);
  ASSERT_FALSE(jwt.empty());
  // nginx is the realm: it answers every token request with this token,
  // under "access_token" (the OAuth2 name; docker's own is "token").
  fs::create_directories(dir + "/docroot");
  WriteFile(dir + "/docroot/token", "{\"access_token\":\"" + jwt + "\",\"expires_in\":3600}");
  auto realm = FileServer::Start(dir + "/nginx", dir + "/docroot");
  ASSERT_TRUE(realm.ok()) << realm.status().ToString();
  RegistryServer::TokenAuth ta{(*realm)->url("token"), "hotboot-registry", "hotboot-issuer", dir + "/signer.pem"};
  auto server = RegistryServer::StartWithTokenAuth(dir + "/registry", ta);
  ASSERT_TRUE(server.ok()) << server.status().ToString();

  // One CA file trusting both the registry and the realm.
  const std::string cas = dir + "/cas.pem";
  WriteFile(cas, ReadFile((*server)->ca_cert()) + ReadFile((*realm)->ca_cert()));
  RemoteOptions o;
  o.tls.ca_cert = cas;
  o.authfile = (*server)->WriteAuthFile(dir + "/auth.json", "anyone", "anything");
  auto ref = ParseOciRef("oci://" + (*server)->host() + "/bearer/repo:t");
  ASSERT_TRUE(ref.ok());
  auto reg = Registry::Connect(*ref, o);
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  const std::string blob = RandomBytes(100000, 9);
  Status st = (*reg)->PushBlobBytes(Sha256Digest(blob), blob);
  ASSERT_TRUE(st.ok()) << st.ToString();
  OciManifest m = SampleManifest();
  m.config = {"application/vnd.hotboot.snapshot.config.v1+json", Sha256Digest(blob), blob.size(), {}};
  m.layers = {m.config};
  auto d = (*reg)->PutManifest("t", kOciManifestType, m.ToJson());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto got_m = (*reg)->GetManifest("t");
  ASSERT_TRUE(got_m.ok()) << got_m.status().ToString();
  EXPECT_EQ(got_m->bytes, m.ToJson());
  std::string got;
  auto g = (*reg)->GetBlob(Sha256Digest(blob), 10, 1000, AppendTo(&got));
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(got, blob.substr(10, 1000));

  // A repository the token does not cover: the registry refuses the token
  // it just got; that is a credentials problem, said as one.
  auto other_ref = ParseOciRef("oci://" + (*server)->host() + "/bearer/other:t");
  ASSERT_TRUE(other_ref.ok());
  auto other = Registry::Connect(*other_ref, o);
  ASSERT_TRUE(other.ok());
  auto r = (*other)->GetManifest("t");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kFailedPrecondition) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("anyone"));
  std::cout << "[token for another repository] " << r.status().ToString() << "\n";
  server->reset();
  realm->reset();
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- HttpFile

TEST(HttpFileTest, RangesFromNginx) {
  const std::string dir = MakeTempDir("http-test");
  const std::string docroot = dir + "/docroot";
  fs::create_directories(docroot);
  chmod(dir.c_str(), 0755);
  const std::string bytes = RandomBytes(3 << 20, 3);
  WriteFile(docroot + "/snap.hbsnap", bytes);
  auto server = FileServer::Start(dir + "/nginx", docroot);
  if (!server.ok() && server.status().code() == Code::kNotFound) GTEST_SKIP() << server.status().ToString();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  RemoteOptions o;
  o.tls.ca_cert = (*server)->ca_cert();
  auto f = HttpFile::Open((*server)->url("snap.hbsnap"), o);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->size(), bytes.size());
  EXPECT_EQ((*f)->url(), (*server)->url("snap.hbsnap"));
  for (auto [off, len] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 10}, {1000000, 65537}, {bytes.size() - 1, 1}, {0, bytes.size()}}) {
    std::string got;
    auto r = (*f)->Get(off, len, AppendTo(&got));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, len);
    EXPECT_TRUE(got == bytes.substr(off, len)) << off << "+" << len;
  }
  std::string got;
  EXPECT_EQ((*f)->Get(bytes.size() - 1, 2, AppendTo(&got)).status().code(), Code::kInvalidArgument);

  auto missing = HttpFile::Open((*server)->url("nope.hbsnap"), o);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Code::kNotFound) << missing.status().ToString();

  // Without the CA: the peer is not trusted; with verify off it is read.
  RemoteOptions untrusted;
  auto u = HttpFile::Open((*server)->url("snap.hbsnap"), untrusted);
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.status().code(), Code::kIo) << u.status().ToString();
  untrusted.tls.verify = false;
  u = HttpFile::Open((*server)->url("snap.hbsnap"), untrusted);
  EXPECT_TRUE(u.ok()) << u.status().ToString();

  // Through a proxy that cuts the first connection: kIo after a prefix.
  auto proxy = CuttingProxy::Start((*server)->port(), 200000, 100);
  ASSERT_TRUE(proxy.ok());
  std::string url = "https://127.0.0.1:" + std::to_string((*proxy)->port()) + "/snap.hbsnap";
  auto pf = HttpFile::Open(url, o);
  ASSERT_TRUE(pf.ok()) << pf.status().ToString();
  got.clear();
  auto r = (*pf)->Get(0, bytes.size(), AppendTo(&got));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIo) << r.status().ToString();
  EXPECT_GT(got.size(), 0u);
  EXPECT_TRUE(got == bytes.substr(0, got.size()));
  proxy->reset();
  server->reset();
  fs::remove_all(dir);
}

TEST(HttpFileTest, ServerWithoutRangesIsUnsupported) {
  const std::string dir = MakeTempDir("http-norange");
  const std::string docroot = dir + "/docroot";
  fs::create_directories(docroot);
  chmod(dir.c_str(), 0755);
  WriteFile(docroot + "/snap.hbsnap", RandomBytes(100000, 5));
  auto server = FileServer::Start(dir + "/nginx", docroot, /*ranges=*/false);
  if (!server.ok() && server.status().code() == Code::kNotFound) GTEST_SKIP() << server.status().ToString();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  RemoteOptions o;
  o.tls.ca_cert = (*server)->ca_cert();
  auto f = HttpFile::Open((*server)->url("snap.hbsnap"), o);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kUnsupported) << f.status().ToString();
  EXPECT_THAT(f.status().message(), HasSubstr("Range"));
  server->reset();
  fs::remove_all(dir);
}

TEST(HttpFileTest, WholeFileAnswerToARangeIsSkippedToTheOffset) {
  // HEAD says Accept-Ranges: bytes, yet every GET answers 200 with the whole
  // file: the client drops bytes up to the offset and stops after the length.
  const std::string dir = MakeTempDir("http-liar");
  const std::string docroot = dir + "/docroot";
  fs::create_directories(docroot);
  chmod(dir.c_str(), 0755);
  const std::string bytes = RandomBytes(2 << 20, 6);
  WriteFile(docroot + "/snap.hbsnap", bytes);
  auto server = FileServer::Start(dir + "/nginx", docroot, /*ranges=*/false, /*claim_ranges=*/true);
  if (!server.ok() && server.status().code() == Code::kNotFound) GTEST_SKIP() << server.status().ToString();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  RemoteOptions o;
  o.tls.ca_cert = (*server)->ca_cert();
  if (access("/usr/bin/curl", X_OK) == 0) {  // the server really answers 200 to a Range
    int rc = 0;
    EXPECT_EQ(Shell("/usr/bin/curl -s -o /dev/null -w '%{http_code}' -r 5-9 --cacert " + (*server)->ca_cert() + " " +
                        (*server)->url("snap.hbsnap"),
                    &rc),
              "200");
  }
  auto f = HttpFile::Open((*server)->url("snap.hbsnap"), o);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->size(), bytes.size());
  for (auto [off, len] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 100}, {300001, 700000}, {bytes.size() - 5, 5}}) {
    std::string got;
    auto r = (*f)->Get(off, len, AppendTo(&got));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, len);
    EXPECT_TRUE(got == bytes.substr(off, len)) << off << "+" << len;
  }
  server->reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hotboot::fetch
