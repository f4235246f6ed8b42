// The streamed source (fetch.h): a snapshot pushed to a real registry, or
// served by nginx, read back through SnapshotReader while it arrives, must
// be the same bytes as the file; cached blobs are reused; a cut connection
// resumes; a damaged blob is refused and never kept.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "hotboot/cache.h"
#include "hotboot/fetch.h"
#include "hotboot/snapshot_file.h"
#include "servers.h"

namespace hotboot::fetch {
namespace {

namespace fs = std::filesystem;
using testing::CuttingProxy;
using testing::FileServer;
using testing::RegistryServer;

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(g() & 0x3f);  // compressible, not trivially
  return s;
}

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-remote-test." + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // Two large sections (one blob each) between small ones.
    std::vector<snapfile::SectionSource> secs;
    secs.push_back({.name = "criu/a.img", .bytes = Random(300 << 10, 1)});
    secs.push_back({.name = "weights/w.bin", .bytes = Random(40 << 20, 2)});
    secs.push_back({.name = "criu/b.img", .bytes = Random(100 << 10, 3)});
    secs.push_back({.name = "criu/pages.img", .bytes = Random(24 << 20, 4)});
    secs.push_back({.name = "criu/c.img", .bytes = "tail"});
    snap_ = (dir_ / "s.hbsnap").string();
    snapfile::WriteOptions wo;
    wo.zstd_level = 1;
    wo.transforms = false;
    ASSERT_TRUE(snapfile::WriteSnapshot(snap_, R"({"test":1})", secs, wo).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<RegistryServer> StartRegistry() {
    auto r = RegistryServer::Start((dir_ / "registry").string(), /*tls=*/true, /*auth=*/true);
    if (!r.ok()) {
      if (r.status().code() == Code::kNotFound) return nullptr;
      ADD_FAILURE() << r.status().message();
      return nullptr;
    }
    return std::move(r).value();
  }

  RemoteOptions Remote(const RegistryServer& reg) {
    RemoteOptions o;
    o.tls.ca_cert = reg.ca_cert();
    o.authfile = reg.WriteAuthFile((dir_ / "auth.json").string(), reg.user(), reg.password());
    return o;
  }

  // Starts the registry and pushes the snapshot as t/snap:v1 into reg_,
  // remote_, ref_ and pushed_; false when docker-registry is missing (the
  // test skips) or the push failed (the test has failed).
  bool StartAndPush(uint64_t chunk = 64ull << 20) {
    reg_ = StartRegistry();
    if (!reg_) return false;
    remote_ = Remote(*reg_);
    auto ref = ParseOciRef("oci://" + reg_->host() + "/t/snap:v1");
    EXPECT_TRUE(ref.ok());
    if (!ref.ok()) return false;
    ref_ = *ref;
    PushOptions po;
    po.remote = remote_;
    po.upload_chunk = chunk;
    auto pushed = Push(snap_, ref_, po);
    EXPECT_TRUE(pushed.ok()) << pushed.status().message();
    if (!pushed.ok()) return false;
    pushed_ = *pushed;
    return true;
  }

  FetchOptions Fetch(const RemoteOptions& r, const std::string& cache) {
    FetchOptions o;
    o.remote = r;
    o.cache_dir = (dir_ / cache).string();
    o.piece = 1 << 20;
    o.connections = 4;
    return o;
  }

  std::string FileBytes() {
    std::ifstream in(snap_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path dir_;
  std::string snap_;
  std::unique_ptr<RegistryServer> reg_;
  RemoteOptions remote_;
  OciRef ref_;
  PushResult pushed_;
};

#define START_AND_PUSH(...)                                              \
  do {                                                                   \
    if (!StartAndPush(__VA_ARGS__)) {                                    \
      if (HasFailure()) return;                                          \
      GTEST_SKIP() << "docker-registry is not installed";                \
    }                                                                    \
  } while (0)

TEST_F(RemoteTest, PartsCoverTheFileAndLargeSectionsStandAlone) {
  auto r = snapfile::SnapshotReader::Open(snap_);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const auto parts = PartsOf(**r);
  ASSERT_EQ(parts.size(), 5u) << "head+small, weights, small, pages, small+index";
  uint64_t at = 0;
  for (const auto& p : parts) {
    EXPECT_EQ(p.offset, at);
    EXPECT_GT(p.size, 0u);
    at += p.size;
  }
  EXPECT_EQ(at, (*r)->file_size());
  EXPECT_TRUE(parts[1].own_section);
  EXPECT_EQ(parts[1].sections, std::vector<std::string>{"weights/w.bin"});
  EXPECT_EQ(parts[1].content_hash, (*r)->FindSection("weights/w.bin")->content_hash.Hex());
  EXPECT_TRUE(parts[3].own_section);
  EXPECT_FALSE(parts[4].own_section);
}

TEST_F(RemoteTest, PushedSnapshotReadsBackVerifiedAndIsCachedBlobByBlob) {
  START_AND_PUSH(4 << 20);
  const RemoteOptions& remote = remote_;
  const OciRef* ref = &ref_;
  const PushResult* pushed = &pushed_;
  EXPECT_EQ(pushed->bytes_uploaded, pushed->bytes_total);

  // A second push uploads nothing: every blob is there.
  PushOptions po;
  po.remote = remote;
  auto again = Push(snap_, *ref, po);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->bytes_uploaded, 0u);
  EXPECT_EQ(again->digest, pushed->digest);

  auto src = RemoteSnapshot::Open(ref->str(), Fetch(remote, "cache"));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto reader = snapfile::SnapshotReader::Open(*src);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  // Every chunk, section hash and the whole-file digest, read while fetched.
  Status v = (*reader)->Verify(2);
  ASSERT_TRUE(v.ok()) << v.message();
  std::string all(FileBytes().size(), '\0');
  ASSERT_TRUE((*src)->ReadAt(0, all.size(), all.data()).ok());
  EXPECT_TRUE(all == FileBytes()) << "the layers concatenated are the file";
  ASSERT_TRUE((*src)->Finish().ok());
  const FetchStats st = (*src)->stats();
  EXPECT_EQ(st.source, "oci");
  EXPECT_EQ(st.resolved, pushed->digest);
  EXPECT_EQ(st.bytes_fetched, pushed->bytes_total);
  EXPECT_EQ(st.blobs_published, 5);

  // From the node cache now: nothing over the network.
  auto src2 = RemoteSnapshot::Open(ref->str(), Fetch(remote, "cache"));
  ASSERT_TRUE(src2.ok()) << src2.status().message();
  auto r2 = snapfile::SnapshotReader::Open(*src2);
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE((*r2)->Verify(2).ok());
  // Counted before Finish too (a restore reports when ready, then finishes).
  EXPECT_EQ((*src2)->stats().bytes_from_cache, pushed->bytes_total);
  ASSERT_TRUE((*src2)->Finish().ok());
  EXPECT_EQ((*src2)->stats().bytes_fetched, 0u);
  EXPECT_EQ((*src2)->stats().bytes_from_cache, pushed->bytes_total);
}

TEST_F(RemoteTest, OnlyWhatIsAskedForIsFetched) {
  START_AND_PUSH();
  const PushResult* pushed = &pushed_;
  auto src = RemoteSnapshot::Open(ref_.str(), Fetch(remote_, "cache"));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto reader = snapfile::SnapshotReader::Open(*src);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  (*src)->PrefetchAllBut(**reader, {"weights/w.bin"});
  ASSERT_TRUE((*reader)->ReadSection("criu/pages.img").ok());
  ASSERT_TRUE((*src)->Finish().ok());
  const FetchStats st = (*src)->stats();
  const uint64_t weights_blob = pushed->parts[1].part.size;
  EXPECT_EQ(st.bytes_fetched, pushed->bytes_total - weights_blob);
  EXPECT_EQ(st.bytes_skipped, weights_blob);
  auto cache = NodeCache::Open((dir_ / "cache").string());
  ASSERT_TRUE(cache.ok());
  EXPECT_FALSE((*cache)->Find(pushed->parts[1].part.digest)) << "a blob never fetched is not in the cache";
  EXPECT_TRUE((*cache)->Find(pushed->parts[3].part.digest));
  EXPECT_TRUE(fs::is_empty(dir_ / "cache" / "tmp")) << "no partial left behind";
}

// The lines of /proc/locks of processes waiting for the lock file `path`.
int FlockWaiters(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return 0;
  const std::string ino = ":" + std::to_string(st.st_ino) + " ";
  std::ifstream in("/proc/locks");
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find("->") != std::string::npos && line.find(ino) != std::string::npos) ++n;
  }
  return n;
}

// Found by `hotboot bench burst`: fetches that waited for a blob another
// was fetching queued for its exclusive lock, behind the shared lock that a
// reader of the published blob (a running replica) holds as long as it
// runs, so the third restore of a burst stalled until the second ended.
// Here two fetches wait while a first fetches; once it published, the one
// that finds the blob first keeps reading it, and the other must not wait
// for that: both open at once, and neither fetches anything.
TEST_F(RemoteTest, FetchesWaitingForABlobAreNotHeldUpByAReaderOfIt) {
  START_AND_PUSH();
  auto first = RemoteSnapshot::Open(ref_.str(), Fetch(remote_, "cache"));
  ASSERT_TRUE(first.ok()) << first.status().message();
  using Src = Result<std::shared_ptr<RemoteSnapshot>>;
  auto open = [this] { return RemoteSnapshot::Open(ref_.str(), Fetch(remote_, "cache")); };
  std::future<Src> second = std::async(std::launch::async, open);
  std::future<Src> third = std::async(std::launch::async, open);
  // Both wait on the first blob's lock (what the first fetch holds).
  const std::string lock =
      (dir_ / "cache" / "locks" / (pushed_.parts.at(0).part.digest.substr(7) + ".lock")).string();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (FlockWaiters(lock) < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  ASSERT_EQ(FlockWaiters(lock), 2) << "the two fetches never waited for the first";
  std::string all(FileBytes().size(), '\0');
  ASSERT_TRUE((*first)->ReadAt(0, all.size(), all.data()).ok());
  ASSERT_TRUE((*first)->Finish().ok());  // published: the lock is released

  const bool second_opened = second.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  const bool third_opened = third.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  EXPECT_TRUE(second_opened && third_opened) << "a waiting fetch stalled behind the other's shared lock";
  // Either way both end: a stalled one goes on once the other is closed.
  Src s2 = second_opened ? second.get() : Src(Internal("stalled"));
  Src s3 = third_opened ? third.get() : Src(Internal("stalled"));
  if (!second_opened) s3 = Src(Internal("closed")), s2 = second.get();
  if (!third_opened) s2 = Src(Internal("closed")), s3 = third.get();
  for (Src* s : {&s2, &s3}) {
    if (!s->ok()) continue;
    std::string bytes(all.size(), '\0');
    ASSERT_TRUE((**s)->ReadAt(0, bytes.size(), bytes.data()).ok());
    EXPECT_TRUE(bytes == all);
    ASSERT_TRUE((**s)->Finish().ok());
    EXPECT_EQ((**s)->stats().bytes_fetched, 0u) << "one download, shared";
  }
}

TEST_F(RemoteTest, ACutConnectionResumesWhereItBroke) {
  START_AND_PUSH();
  RegistryServer* reg = reg_.get();
  RemoteOptions remote = remote_;
  // Every one of the first 6 connections is cut after 300 KiB (of 1 MiB pieces).
  auto proxy = CuttingProxy::Start(reg->port(), 300 << 10, 6);
  ASSERT_TRUE(proxy.ok()) << proxy.status().message();
  const std::string via = "oci://127.0.0.1:" + std::to_string((*proxy)->port()) + "/t/snap:v1";
  remote.authfile = reg->WriteAuthFile((dir_ / "auth-proxy.json").string(), reg->user(), reg->password());
  // The auth file names the registry by the proxy's address.
  {
    std::ifstream in(remote.authfile);
    std::string j((std::istreambuf_iterator<char>(in)), {});
    const std::string from = reg->host(), to = "127.0.0.1:" + std::to_string((*proxy)->port());
    j.replace(j.find(from), from.size(), to);
    std::ofstream(remote.authfile) << j;
  }
  auto src = RemoteSnapshot::Open(via, Fetch(remote, "cache"));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto reader = snapfile::SnapshotReader::Open(*src);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  Status v = (*reader)->Verify(2);
  ASSERT_TRUE(v.ok()) << v.message();
  ASSERT_TRUE((*src)->Finish().ok());
  EXPECT_GE((*proxy)->connections(), 7) << "connections were cut and made again";
}

TEST_F(RemoteTest, ABlobAlteredOnTheRegistryIsRefusedAndNotKept) {
  START_AND_PUSH();
  const PushResult* pushed = &pushed_;
  const std::string data = reg_->BlobDataPath(pushed->parts[1].part.digest);
  {
    std::fstream f(data, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good()) << data;
    f.seekp(static_cast<std::streamoff>(pushed->parts[1].part.size / 2));
    f.put('\x5a');
  }
  auto src = RemoteSnapshot::Open(ref_.str(), Fetch(remote_, "cache"));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto reader = snapfile::SnapshotReader::Open(*src);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  auto w = (*reader)->ReadSection("weights/w.bin");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kCorrupt) << w.status().message();
  EXPECT_NE(w.status().message().find("weights/w.bin"), std::string::npos) << w.status().message();
  src->reset();
  reader->reset();
  auto cache = NodeCache::Open((dir_ / "cache").string());
  ASSERT_TRUE(cache.ok());
  EXPECT_FALSE((*cache)->Find(pushed->parts[1].part.digest));
  EXPECT_TRUE(fs::is_empty(dir_ / "cache" / "tmp")) << "the partial was discarded";
}

TEST_F(RemoteTest, HttpsUrlWithRangesReadsTheFile) {
  fs::create_directories(dir_ / "www");
  fs::copy_file(snap_, dir_ / "www" / "s.hbsnap");
  auto srv = FileServer::Start((dir_ / "nginx").string(), (dir_ / "www").string());
  if (!srv.ok() && srv.status().code() == Code::kNotFound) GTEST_SKIP() << "nginx is not installed";
  ASSERT_TRUE(srv.ok()) << srv.status().message();
  RemoteOptions remote;
  remote.tls.ca_cert = (*srv)->ca_cert();
  auto src = RemoteSnapshot::Open((*srv)->url("s.hbsnap"), Fetch(remote, "cache"));
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto reader = snapfile::SnapshotReader::Open(*src);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  Status v = (*reader)->Verify(2);
  ASSERT_TRUE(v.ok()) << v.message();
  ASSERT_TRUE((*src)->Finish().ok());
  EXPECT_EQ((*src)->stats().source, "https");
  EXPECT_EQ((*src)->stats().bytes_fetched, fs::file_size(snap_));
  EXPECT_TRUE(fs::is_empty(dir_ / "cache" / "tmp"));
}

}  // namespace
}  // namespace hotboot::fetch
