// The node cache (hotboot/cache.h) on a real directory under /tmp: digests,
// publish and its SHA-256 check, single flight, listing, gc and prune with
// what is in use kept, the directory checks, and `hotboot cache ls --json`.
#include "hotboot/cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "hotboot/job.h"

namespace hotboot::fetch {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string Sha(const std::string& bytes);

class CacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hotboot-cache-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    ::chmod(root_.c_str(), 0755);
    dir_ = root_ + "/cache";
    weights_ = root_ + "/weights";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::unique_ptr<NodeCache> OpenCache() {
    auto c = NodeCache::Open(dir_);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(*c) : nullptr;
  }
  // A published blob holding `bytes`; returns its digest.
  std::string Put(NodeCache& c, const std::string& bytes) {
    const std::string d = Sha(bytes);
    auto p = c.NewPartial(d, bytes.size());
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return d;
    EXPECT_EQ(::pwrite(p->fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
    Status s = c.Publish(*p);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return d;
  }
  std::string WeightsFile(const std::string& name, size_t n) {
    fs::create_directories(weights_);
    ::chmod(weights_.c_str(), 0755);
    const std::string path = weights_ + "/" + name;
    std::ofstream(path) << std::string(n, 'w');
    return path;
  }
  static void SetMtime(const std::string& path, time_t t) {
    const struct timespec ts[2] = {{t, 0}, {t, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << path;
  }
  std::string BlobPath(const std::string& digest) const { return dir_ + "/blobs/sha256/" + digest.substr(7); }
  static size_t Count(const std::string& d) {
    size_t n = 0;
    for (auto it = fs::directory_iterator(d); it != fs::directory_iterator(); ++it) ++n;
    return n;
  }
  static const CacheItem* FindItem(const std::vector<CacheItem>& v, const std::string& name) {
    for (const auto& it : v) {
      if (it.name == name) return &it;
    }
    return nullptr;
  }

  std::string root_, dir_, weights_;
};

// The digest computed independently of the cache (OpenSSL's one-shot API).
std::string Sha(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
  std::string hex = "sha256:";
  char b[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  return hex;
}

// An OCI manifest listing `config` and `layers`.
std::string Manifest(const std::string& config, const std::vector<std::string>& layers) {
  json ls = json::array();
  for (const auto& l : layers) ls.push_back({{"mediaType", "application/vnd.hotboot.part"}, {"digest", l}, {"size", 1}});
  return json{{"schemaVersion", 2},
              {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
              {"config", {{"mediaType", "application/vnd.hotboot.config"}, {"digest", config}, {"size", 2}}},
              {"layers", ls}}
      .dump();
}

// A pid that ran and is gone.
pid_t DeadPid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return pid;
}

// Whether another process can take flock(op|LOCK_NB) on `path` now.
bool OtherProcessCanLock(const std::string& path, int op) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) ::_exit(2);
    ::_exit(::flock(fd, op | LOCK_NB) == 0 ? 0 : 1);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) != 2);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

TEST_F(CacheTest, DigestsOtherThanSha256LowercaseHexAreRefused) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string good = "sha256:" + std::string(64, 'a');
  EXPECT_TRUE(IsValidDigest(good));
  for (const std::string& bad :
       {std::string("sha256:") + std::string(64, 'A'), std::string("sha256:") + std::string(63, 'a'),
        std::string("sha256:") + std::string(65, 'a'), std::string("sha512:") + std::string(64, 'a'),
        std::string("sha256:../../../../etc/") + std::string(42, 'a'), std::string("sha256:") + std::string(62, 'a') + "/x",
        std::string(""), std::string("sha256:") + std::string(63, 'a') + '\0'}) {
    EXPECT_FALSE(IsValidDigest(bad)) << bad;
    EXPECT_FALSE(c->Find(bad));
    auto l = c->LockExclusive(bad);
    ASSERT_FALSE(l.ok());
    EXPECT_EQ(l.status().code(), Code::kInvalidArgument);
    auto p = c->NewPartial(bad, 10);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
    EXPECT_EQ(c->RecordRef("oci://r/x:1", bad, "{}").code(), Code::kInvalidArgument);
  }
  // Nothing was made outside the layout.
  EXPECT_EQ(Count(dir_ + "/tmp"), 0u);
  EXPECT_EQ(Count(dir_ + "/locks"), 0u);
  EXPECT_FALSE(fs::exists(root_ + "/etc"));
}

TEST_F(CacheTest, PublishedBlobIsFoundReadOnlyAndTmpIsEmpty) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string bytes = "the weights of a small model, or a CRIU image";
  const std::string d = Sha(bytes);
  EXPECT_FALSE(c->Find(d));
  const std::string d2 = Put(*c, bytes);
  ASSERT_EQ(d, d2);
  auto found = c->Find(d);
  ASSERT_TRUE(found);
  EXPECT_EQ(*found, BlobPath(d));
  std::ifstream in(*found);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(in)), {}), bytes);
  struct stat st{};
  ASSERT_EQ(::stat(found->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0444u);
  EXPECT_EQ(Count(dir_ + "/tmp"), 0u);
  // Find marks the last use.
  SetMtime(*found, 1000);
  ASSERT_TRUE(c->Find(d));
  ASSERT_EQ(::stat(found->c_str(), &st), 0);
  EXPECT_GT(st.st_mtime, 1000);
  // A second publish of the same blob keeps the first and leaves nothing.
  Put(*c, bytes);
  EXPECT_EQ(Count(dir_ + "/tmp"), 0u);
  EXPECT_EQ(Count(dir_ + "/blobs/sha256"), 1u);
}

TEST_F(CacheTest, PublishOfWrongBytesIsCorruptAndKeepsNothing) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string d = Sha("what the manifest names");
  const std::string other = "what the registry sent";
  auto p = c->NewPartial(d, other.size());
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(::pwrite(p->fd, other.data(), other.size(), 0), static_cast<ssize_t>(other.size()));
  Status s = c->Publish(*p);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_NE(s.message().find(d), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(Sha(other)), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("nothing was kept"), std::string::npos) << s.message();
  EXPECT_EQ(p->fd, -1);
  EXPECT_EQ(Count(dir_ + "/tmp"), 0u);
  EXPECT_EQ(Count(dir_ + "/blobs/sha256"), 0u);
  EXPECT_FALSE(c->Find(d));
}

TEST_F(CacheTest, ExclusiveLockIsSingleFlight) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string d = Sha("one fetch of this");
  const std::string lock_path = dir_ + "/locks/" + d.substr(7) + ".lock";
  std::atomic<bool> released{false}, got{false}, got_before_release{false};
  std::thread waiter;
  {
    auto first = c->LockExclusive(d);
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_FALSE(OtherProcessCanLock(lock_path, LOCK_EX));
    EXPECT_FALSE(OtherProcessCanLock(lock_path, LOCK_SH));
    waiter = std::thread([&] {
      auto second = c->LockExclusive(d);  // blocks until `first` goes
      got_before_release = !released.load();
      got = second.ok();
    });
    auto items = c->List("");
    ASSERT_TRUE(items.ok());
    released = true;
  }
  waiter.join();
  EXPECT_TRUE(got);
  EXPECT_FALSE(got_before_release);
  EXPECT_TRUE(OtherProcessCanLock(lock_path, LOCK_EX));
  // Readers share.
  auto r1 = c->LockShared(d);
  ASSERT_TRUE(r1.ok());
  EXPECT_TRUE(OtherProcessCanLock(lock_path, LOCK_SH));
  EXPECT_FALSE(OtherProcessCanLock(lock_path, LOCK_EX));
}

TEST_F(CacheTest, ListShowsBlobsWithTheirRefsPartialsAndWeights) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string a = Put(*c, std::string(5000, 'a'));
  const std::string b = Put(*c, std::string(7000, 'b'));
  const std::string manifest = Manifest(a, {b});
  ASSERT_TRUE(c->RecordRef("oci://127.0.0.1:5000/m:v1", Sha(manifest), manifest).ok());
  ASSERT_TRUE(c->RecordRef("oci://127.0.0.1:5000/m:v2", Sha(manifest), manifest).ok());
  EXPECT_EQ(c->RecordRef("oci://127.0.0.1:5000/m:v3", Sha("{}"), "{}").code(), Code::kCorrupt);
  auto partial = c->NewPartial(Sha("arriving"), 100);
  ASSERT_TRUE(partial.ok());
  WeightsFile("weights-0123456789abcdef0123456789abcdef.bin", 9000);
  WeightsFile(".weights-0123456789abcdef0123456789abcdef.bin.signed", 10);
  WeightsFile("not-weights.txt", 10);
  auto items = c->List(weights_);
  ASSERT_TRUE(items.ok()) << items.status().ToString();
  ASSERT_EQ(items->size(), 4u);
  const CacheItem* ia = FindItem(*items, a);
  ASSERT_TRUE(ia);
  EXPECT_EQ(ia->kind, "blob");
  EXPECT_EQ(ia->refs, (std::vector<std::string>{"oci://127.0.0.1:5000/m:v1", "oci://127.0.0.1:5000/m:v2"}));
  EXPECT_GE(ia->bytes, 5000u);
  EXPECT_FALSE(ia->in_use);
  ASSERT_TRUE(FindItem(*items, b));
  EXPECT_EQ(FindItem(*items, b)->refs.size(), 2u);
  const CacheItem* w = FindItem(*items, "weights-0123456789abcdef0123456789abcdef.bin");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->kind, "weights");
  EXPECT_GE(w->bytes, 9000u);
  const CacheItem* p = FindItem(*items, fs::path(partial->path).filename().string());
  ASSERT_TRUE(p);
  EXPECT_EQ(p->kind, "partial");
  EXPECT_TRUE(p->in_use);  // this process holds it open
  c->Discard(*partial);
  EXPECT_EQ(Count(dir_ + "/tmp"), 0u);
  // A blob being read is in use.
  auto reading = c->LockShared(a);
  ASSERT_TRUE(reading.ok());
  items = c->List(weights_);
  ASSERT_TRUE(items.ok());
  EXPECT_TRUE(FindItem(*items, a)->in_use);
  EXPECT_FALSE(FindItem(*items, b)->in_use);
}

TEST_F(CacheTest, WeightsFileMappedByAProcessIsInUse) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string name = "weights-00000000000000000000000000000001.bin";
  const std::string path = WeightsFile(name, 8192);
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* m = ::mmap(nullptr, 8192, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(m, MAP_FAILED);
  // Renamed while mapped: still in use (dev:inode, not the name, counts).
  const std::string renamed = "weights-00000000000000000000000000000002.bin";
  ASSERT_EQ(::rename(path.c_str(), (weights_ + "/" + renamed).c_str()), 0);
  auto items = c->List(weights_);
  ASSERT_TRUE(items.ok());
  ASSERT_TRUE(FindItem(*items, renamed));
  EXPECT_TRUE(FindItem(*items, renamed)->in_use);
  ::munmap(m, 8192);
  items = c->List(weights_);
  ASSERT_TRUE(items.ok());
  EXPECT_FALSE(FindItem(*items, renamed)->in_use);
}

TEST_F(CacheTest, GcRemovesUnreferencedBlobsDeadPartialsStaleLocksOnly) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string kept = Put(*c, std::string(4096, 'k'));
  const std::string garbage = Put(*c, std::string(4096, 'g'));
  const std::string manifest = Manifest(Sha("{}"), {kept});
  ASSERT_TRUE(c->RecordRef("oci://127.0.0.1:5000/m:v1", Sha(manifest), manifest).ok());
  // A partial of a fetch that died, one of a live fetch (ours, open), and a
  // lock file whose blob is absent.
  const std::string dead_hex = Sha("died").substr(7);
  const std::string dead = dir_ + "/tmp/" + dead_hex + "." + std::to_string(DeadPid()) + ".0";
  std::ofstream(dead) << "half";
  auto live = c->NewPartial(Sha("arriving"), 100);
  ASSERT_TRUE(live.ok());
  const std::string stale_lock = dir_ + "/locks/" + Sha("gone").substr(7) + ".lock";
  std::ofstream(stale_lock) << "";
  const std::string w = WeightsFile("weights-00000000000000000000000000000003.bin", 4096);

  auto dry = c->Gc(weights_, /*dry_run=*/true);
  ASSERT_TRUE(dry.ok()) << dry.status().ToString();
  EXPECT_EQ(dry->removed.size(), 3u);
  EXPECT_TRUE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(BlobPath(garbage)));
  EXPECT_TRUE(fs::exists(stale_lock));

  auto rep = c->Gc(weights_);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  std::set<std::string> removed;
  for (const auto& it : rep->removed) removed.insert(it.path);
  EXPECT_EQ(removed, (std::set<std::string>{BlobPath(garbage), dead, stale_lock}));
  EXPECT_GE(rep->freed_bytes, 4096u);
  EXPECT_FALSE(fs::exists(BlobPath(garbage)));
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(stale_lock));
  EXPECT_TRUE(fs::exists(BlobPath(kept)));
  EXPECT_TRUE(fs::exists(live->path));
  EXPECT_TRUE(fs::exists(w));  // weights are prune's, never gc's
  EXPECT_EQ(rep->skipped_in_use, std::vector<std::string>{live->path});
  // The live fetch still publishes.
  ASSERT_EQ(::pwrite(live->fd, std::string(100, 'x').data(), 100, 0), 100);
  EXPECT_EQ(c->Publish(*live).code(), Code::kCorrupt);  // its bytes are not "arriving"'s: still a clean failure
  // An unreferenced blob that is being read is kept.
  const std::string read = Put(*c, std::string(4096, 'r'));
  auto reading = c->LockShared(read);
  ASSERT_TRUE(reading.ok());
  rep = c->Gc(weights_);
  ASSERT_TRUE(rep.ok());
  EXPECT_TRUE(fs::exists(BlobPath(read)));
  EXPECT_EQ(rep->skipped_in_use, std::vector<std::string>{BlobPath(read)});
}

TEST_F(CacheTest, PruneRemovesLeastRecentlyUsedFirstAndSkipsInUse) {
  auto c = OpenCache();
  ASSERT_TRUE(c);
  const std::string b1 = Put(*c, std::string(65536, '1'));
  const std::string b2 = Put(*c, std::string(65536, '2'));
  const std::string b3 = Put(*c, std::string(65536, '3'));
  const std::string wname = "weights-00000000000000000000000000000004.bin";
  const std::string w = WeightsFile(wname, 65536);
  const std::string sidecar = weights_ + "/." + wname + ".signed";
  std::ofstream(sidecar) << "mark";
  SetMtime(BlobPath(b1), 1000);
  SetMtime(w, 1500);
  SetMtime(BlobPath(b2), 2000);
  SetMtime(BlobPath(b3), 3000);
  auto items = c->List(weights_);
  ASSERT_TRUE(items.ok());
  uint64_t total = 0;
  for (const auto& it : *items) total += it.bytes;
  const uint64_t keep = FindItem(*items, b3)->bytes + FindItem(*items, wname)->bytes;

  // The weights file is mapped: prune passes over it.
  const int fd = ::open(w.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* m = ::mmap(nullptr, 65536, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(m, MAP_FAILED);
  auto dry = c->Prune(keep, weights_, /*dry_run=*/true);
  ASSERT_TRUE(dry.ok());
  ASSERT_EQ(dry->removed.size(), 2u);
  EXPECT_TRUE(fs::exists(BlobPath(b1)));

  auto rep = c->Prune(keep, weights_);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  ASSERT_EQ(rep->removed.size(), 2u);
  EXPECT_EQ(rep->removed[0].name, b1);  // oldest first
  EXPECT_EQ(rep->removed[1].name, b2);
  EXPECT_EQ(rep->skipped_in_use, std::vector<std::string>{w});
  EXPECT_EQ(rep->freed_bytes + rep->kept_bytes, total);
  EXPECT_LE(rep->kept_bytes, keep);
  EXPECT_FALSE(fs::exists(BlobPath(b1)));
  EXPECT_FALSE(fs::exists(BlobPath(b2)));
  EXPECT_TRUE(fs::exists(BlobPath(b3)));
  EXPECT_TRUE(fs::exists(w));

  // Unmapped, it goes with its sidecar; a blob being read stays.
  ::munmap(m, 65536);
  auto reading = c->LockShared(b3);
  ASSERT_TRUE(reading.ok());
  rep = c->Prune(0, weights_);
  ASSERT_TRUE(rep.ok());
  EXPECT_FALSE(fs::exists(w));
  EXPECT_FALSE(fs::exists(sidecar));
  EXPECT_TRUE(fs::exists(BlobPath(b3)));
  EXPECT_EQ(rep->skipped_in_use, std::vector<std::string>{BlobPath(b3)});
}

TEST_F(CacheTest, UnsafeCacheDirectoryIsRefused) {
  ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir_.c_str(), 0775), 0);
  auto c = NodeCache::Open(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kIncompatible);
  EXPECT_NE(c.status().message().find("chmod go-w " + dir_), std::string::npos) << c.status().message();
  EXPECT_FALSE(fs::exists(dir_ + "/blobs"));
  ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  const std::string link = root_ + "/link";
  ASSERT_EQ(::symlink(dir_.c_str(), link.c_str()), 0);
  c = NodeCache::Open(link);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("symbolic link"), std::string::npos) << c.status().message();
  EXPECT_EQ(NodeCache::Open("relative/dir").status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(NodeCache::Open(dir_).ok());
}

TEST_F(CacheTest, KilledFetchLeavesNoPartialWithAJob) {
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    host::JobOptions o;
    o.kind = "test";
    o.state_dir = root_ + "/state";
    o.sweep = false;
    auto job = host::Job::Start(o);
    auto c = NodeCache::Open(dir_);
    if (!job.ok() || !c.ok()) ::_exit(2);
    (*c)->SetJob(*job);
    auto p = (*c)->NewPartial(Sha("never finished"), 1 << 20);
    if (!p.ok()) ::_exit(3);
    const std::string line = p->path + "\n";
    (void)!::write(pipefd[1], line.data(), line.size());
    for (;;) ::pause();
  }
  ::close(pipefd[1]);
  std::string path;
  char ch;
  while (::read(pipefd[0], &ch, 1) == 1 && ch != '\n') path += ch;
  ::close(pipefd[0]);
  ASSERT_FALSE(path.empty()) << "the child failed to make a partial";
  EXPECT_TRUE(fs::exists(path));
  ::kill(pid, SIGKILL);
  int st = 0;
  ::waitpid(pid, &st, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (fs::exists(path) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling the janitor's work
  }
  EXPECT_FALSE(fs::exists(path)) << "the janitor did not remove the killed fetch's partial";
}

TEST_F(CacheTest, CliListsAsJsonAndDoesNotCreateTheCache) {
  const std::string bin = std::string(HOTBOOT_BIN_DIR) + "/bin/hotboot";
  if (::access(bin.c_str(), X_OK) != 0) GTEST_SKIP() << bin << " is not built";
  auto run = [&](const std::string& args, int* rc) {
    FILE* p = ::popen((bin + " " + args + " 2>/dev/null").c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int st = ::pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
  };
  int rc = -1;
  json j = json::parse(run("cache ls --json --cache-dir " + dir_ + " --weights-dir " + weights_, &rc), nullptr, false);
  EXPECT_EQ(rc, 0);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["ok"], true);
  EXPECT_TRUE(j["items"].empty());
  EXPECT_FALSE(fs::exists(dir_));  // ls never creates it
  {
    auto c = OpenCache();
    ASSERT_TRUE(c);
    Put(*c, "one blob");
  }
  j = json::parse(run("cache ls --json --cache-dir " + dir_ + " --weights-dir " + weights_, &rc), nullptr, false);
  EXPECT_EQ(rc, 0);
  ASSERT_TRUE(j.is_object());
  ASSERT_EQ(j["items"].size(), 1u);
  EXPECT_EQ(j["items"][0]["name"], Sha("one blob"));
  EXPECT_EQ(j["items"][0]["kind"], "blob");
  // gc with --json: the unreferenced blob goes.
  j = json::parse(run("cache gc --json --cache-dir " + dir_ + " --weights-dir " + weights_, &rc), nullptr, false);
  EXPECT_EQ(rc, 0);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["removed"].size(), 1u);
  // A bad size is a usage error, still one JSON document.
  j = json::parse(run("cache prune --keep 12Q --json --cache-dir " + dir_, &rc), nullptr, false);
  EXPECT_EQ(rc, 2);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["ok"], false);
}

}  // namespace
}  // namespace hotboot::fetch
