// Issue 11: in a container's default 64 MiB /dev/shm, hotboot-server died of
// SIGBUS while loading: it packed its weights through a shared mapping of a
// file the tmpfs could not back. A weights directory without room must be an
// error that names the directory, what is needed and free, and the way out.
// The tests mount an 8 MiB tmpfs (root only; skipped otherwise) and load a
// model whose weights file needs about 15 MiB.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "../../server/src/gpu_weights.h"
#include "../../server/src/weights_file.h"
#include "hotboot/model.h"
#include "hotboot/presets.h"
#include "hotboot/safetensors.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = uint64_t{1} << 20;

class SmallTmpfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
    std::string tmpl = (fs::temp_directory_path() / "hotboot-wdir.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    root_ = tmpl;
    shm_ = root_ / "shm";
    fs::create_directories(shm_);
    if (::mount("tmpfs", shm_.c_str(), "tmpfs", 0, "size=8m") != 0) {
      GTEST_SKIP() << "mount tmpfs on " << shm_ << ": " << std::strerror(errno);
    }
    mounted_ = true;
    // tiny with two layers: embeddings, head and two gate_up matrices of
    // 1 MiB or more go to the weights file, about 15 MiB.
    auto c = PresetConfig("tiny");
    ASSERT_TRUE(c.ok());
    cfg_ = *c;
    cfg_.n_layers = 2;
    model_ = (root_ / "m.safetensors").string();
    ASSERT_TRUE(WriteModel(model_, cfg_, 7, nullptr).ok());
  }
  void TearDown() override {
    if (mounted_) {
      EXPECT_EQ(::umount2(shm_.c_str(), MNT_DETACH), 0) << std::strerror(errno);
    }
    std::error_code ec;
    if (!root_.empty()) fs::remove_all(root_, ec);
  }

  uint64_t FreeNow() {
    struct statvfs v{};
    EXPECT_EQ(::statvfs(shm_.c_str(), &v), 0);
    return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
  }
  static std::vector<std::string> Entries(const fs::path& dir) {
    std::vector<std::string> v;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) v.push_back(e.path().filename().string());
    return v;
  }
  // "weights directory <dir> has X MiB (F bytes) free, the weights need Y MiB
  // (N bytes)...: set HOTBOOT_WEIGHTS_DIR ..."; returns N.
  uint64_t ExpectNoRoom(const Status& s, const fs::path& dir) {
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), Code::kIo);
    const std::string& m = s.message();
    std::smatch g;
    const std::regex re(R"(weights directory (\S+) has [0-9.]+ MiB \((\d+) bytes\) free, the weights need [0-9.]+ MiB \((\d+) bytes\))");
    if (!std::regex_search(m, g, re)) {
      ADD_FAILURE() << "no directory and sizes in: " << m;
      return 0;
    }
    EXPECT_EQ(g[1].str(), dir.string()) << m;
    const uint64_t free = std::stoull(g[2].str()), need = std::stoull(g[3].str());
    EXPECT_EQ(free, FreeNow()) << m;
    EXPECT_GT(need, free) << m;
    EXPECT_NE(m.find("set HOTBOOT_WEIGHTS_DIR to a directory with room"), std::string::npos) << m;
    // Not the directory's own fault: it is not /dev/shm, so no --shm-size.
    EXPECT_NE(m.find("or free space there"), std::string::npos) << m;
    return need;
  }

  fs::path root_, shm_;
  bool mounted_ = false;
  ModelConfig cfg_;
  std::string model_;
};

TEST_F(SmallTmpfsTest, Issue11_CpuModelInAFullWeightsDirIsAnErrorNotASigbus) {
  LoadOptions o;
  o.device = "cpu";
  o.threads = 2;
  o.weights_dir = (shm_ / "w").string();
  auto m = Model::Load(model_, o, nullptr);
  ASSERT_FALSE(m.ok());
  const uint64_t need = ExpectNoRoom(m.status(), shm_ / "w");
  EXPECT_GT(need, 12 * kMiB);
  EXPECT_NE(m.status().message().find("\"none\""), std::string::npos) << m.status().message();
  EXPECT_TRUE(Entries(shm_ / "w").empty());
}

// What hotboot-server does: no weights_dir in the options, the environment's.
TEST_F(SmallTmpfsTest, Issue11_HotbootWeightsDirFromTheEnvironment) {
  const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  ::setenv("HOTBOOT_WEIGHTS_DIR", (shm_ / "env").c_str(), 1);
  auto m = Model::Load(model_, LoadOptions{2, "", "cpu"}, nullptr);
  saved ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
  ASSERT_FALSE(m.ok());
  ExpectNoRoom(m.status(), shm_ / "env");
  EXPECT_TRUE(Entries(shm_ / "env").empty());
}

// The GPU model's weights file, written on the CPU (no GPU needed).
TEST_F(SmallTmpfsTest, Issue11_GpuWeightsFileInAFullWeightsDirIsAnErrorNotASigbus) {
  auto f = SafetensorsFile::Open(model_);
  ASSERT_TRUE(f.ok());
  auto w = WriteGpuWeightsFile(*f, cfg_, (shm_ / "g").string());
  ASSERT_FALSE(w.ok());
  const uint64_t need = ExpectNoRoom(w.status(), shm_ / "g");
  EXPECT_EQ(need, PlanGpuWeights(cfg_).file_bytes);
  // "none" is no way out for the GPU model: it uploads from the file.
  EXPECT_EQ(w.status().message().find("\"none\""), std::string::npos) << w.status().message();
  EXPECT_TRUE(Entries(shm_ / "g").empty());
}

// The reservation, reached past a free-space check that says there is room
// (as when another process fills the directory in between): posix_fallocate's
// ENOSPC is the same error, and the temporary is gone.
TEST_F(SmallTmpfsTest, Issue11_ReservationFailureIsAnErrorAndLeavesNothing) {
  const fs::path dir = shm_ / "r";
  auto plenty = [](const std::string&) -> Result<uint64_t> { return uint64_t{1} << 40; };
  auto t = CreateMappedTemp(dir.string(), ".t", 16 * kMiB, NoRoomAdvice::kOfferNone, plenty);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(ExpectNoRoom(t.status(), dir), 16 * kMiB);
  EXPECT_NE(t.status().message().find("posix_fallocate"), std::string::npos) << t.status().message();
  EXPECT_NE(t.status().message().find(std::strerror(ENOSPC)), std::string::npos) << t.status().message();
  EXPECT_TRUE(Entries(dir).empty());
  EXPECT_EQ(FreeNow(), 8 * kMiB);
}

// A file that fits holds its space before a byte is written, so the next
// one is refused by the free-space check rather than faulting later.
TEST_F(SmallTmpfsTest, AReservedFileHoldsItsSpace) {
  const fs::path dir = shm_ / "ok";
  auto a = CreateMappedTemp(dir.string(), ".t", 5 * kMiB, NoRoomAdvice::kOfferNone);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(fs::file_size(a->path), 5 * kMiB);
  EXPECT_LE(FreeNow(), 3 * kMiB);
  auto b = CreateMappedTemp(dir.string(), ".t", 5 * kMiB, NoRoomAdvice::kOfferNone);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(ExpectNoRoom(b.status(), dir), 5 * kMiB);
  EXPECT_EQ(b.status().message().find("posix_fallocate"), std::string::npos) << b.status().message();
  std::memset(a->base, 0xab, a->size);  // every page is backed
  ::munmap(a->base, a->size);
  ::unlink(a->path.c_str());
  EXPECT_EQ(Entries(dir).size(), 0u);
}

// Under /dev/shm the advice is a larger /dev/shm for the container, sized
// for the weights; the check comes before any file is created.
TEST(WeightsDir, Issue11_DevShmWithoutRoomSuggestsShmSize) {
  const std::string dir = "/dev/shm/hotboot-wdir-test." + std::to_string(::getpid());
  auto shm64 = [](const std::string&) -> Result<uint64_t> { return uint64_t{64} << 20; };
  auto t = CreateMappedTemp(dir, ".t", size_t{3} << 30, NoRoomAdvice::kNeedAFile, shm64);
  std::vector<std::string> left;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) left.push_back(e.path().string());
  fs::remove_all(dir, ec);
  ASSERT_FALSE(t.ok());
  const std::string& m = t.status().message();
  EXPECT_NE(m.find("weights directory " + dir + " has 64.0 MiB (67108864 bytes) free, the weights need 3072.0 MiB "
                   "(3221225472 bytes): set HOTBOOT_WEIGHTS_DIR to a directory with room, or give the container a "
                   "larger /dev/shm (podman/docker run --shm-size=4g"),
            std::string::npos)
      << m;
  EXPECT_TRUE(left.empty());
}

TEST(WeightsDir, OptionsThenEnvironmentThenDevShm) {
  const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  ::unsetenv("HOTBOOT_WEIGHTS_DIR");
  EXPECT_EQ(ResolveWeightsDir(""), "/dev/shm/hotboot-weights");
  ::setenv("HOTBOOT_WEIGHTS_DIR", "", 1);
  EXPECT_EQ(ResolveWeightsDir(""), "/dev/shm/hotboot-weights");
  ::setenv("HOTBOOT_WEIGHTS_DIR", "/data/w", 1);
  EXPECT_EQ(ResolveWeightsDir(""), "/data/w");
  EXPECT_EQ(ResolveWeightsDir("none"), "none");
  saved ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
}

// Issue 12: the weights directory is created 0755 whatever the umask, and a
// directory that is a symlink, writable by group or others, or owned by
// another user is refused (saying what to do) before any file is made in it.
class SafeWeightsDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("hotboot-safe-wdir." + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  Status Create(const fs::path& dir) {
    auto t = CreateMappedTemp(dir.string(), ".t", 4096, NoRoomAdvice::kNeedAFile);
    if (!t.ok()) return t.status();
    ::munmap(t->base, t->size);
    ::unlink(t->path.c_str());
    return Status::Ok();
  }
  fs::path root_;
};

TEST_F(SafeWeightsDirTest, CreatedOwnedAndNotWritableByOthers) {
  const mode_t old = ::umask(0);
  const fs::path dir = root_ / "made";
  Status s = Create(dir);
  ::umask(old);
  ASSERT_TRUE(s.ok()) << s.ToString();
  struct stat st{};
  ASSERT_EQ(::lstat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST_F(SafeWeightsDirTest, SymlinkGroupWritableOrForeignDirectoryIsRefused) {
  const fs::path elsewhere = root_ / "elsewhere";
  fs::create_directories(elsewhere);
  fs::create_directory_symlink(elsewhere, root_ / "link");
  Status s = Create(root_ / "link");
  EXPECT_EQ(s.code(), Code::kIncompatible) << s.ToString();
  EXPECT_NE(s.message().find("is a symbolic link"), std::string::npos) << s.message();
  EXPECT_TRUE(fs::is_empty(elsewhere));

  fs::create_directories(root_ / "gw");
  ::chmod((root_ / "gw").c_str(), 0775);
  s = Create(root_ / "gw");
  EXPECT_NE(s.message().find("chmod go-w " + (root_ / "gw").string()), std::string::npos) << s.message();
  EXPECT_TRUE(fs::is_empty(root_ / "gw"));

  if (::geteuid() != 0) GTEST_SKIP() << "chown to another uid needs root";
  fs::create_directories(root_ / "theirs");
  ::chmod((root_ / "theirs").c_str(), 0755);
  ASSERT_EQ(::chown((root_ / "theirs").c_str(), 65534, 65534), 0);
  s = Create(root_ / "theirs");
  EXPECT_NE(s.message().find("owned by uid 65534"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("rm -r " + (root_ / "theirs").string()), std::string::npos) << s.message();
  EXPECT_TRUE(fs::is_empty(root_ / "theirs"));
}

// The name is the XXH3-128 of the whole file (the content hash a snapshot's
// section of it has); a second publication of the same bytes keeps the first
// file (a replica may map it) and moves the caller's mapping onto it.
TEST_F(SafeWeightsDirTest, PublishedByTheContentHashOfTheWholeFileNeverReplaced) {
  const std::string dir = (root_ / "w").string();
  auto publish = [&](char fill) -> std::pair<std::string, uint8_t*> {
    auto t = CreateMappedTemp(dir, ".t", 3 * 4096, NoRoomAdvice::kNeedAFile);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    std::memset(t->base, fill, 4096);  // the rest stays zero: still part of the name
    auto p = PublishByContent(dir, t->path, "weights", t->base, t->size);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return {p.ok() ? *p : "", t->base};
  };
  auto [first, base1] = publish('a');
  auto hash = HashPathXxh128(first);
  ASSERT_TRUE(hash.ok());
  EXPECT_EQ(first, dir + "/weights-" + *hash + ".bin");
  struct stat a{}, b{};
  ASSERT_EQ(::stat(first.c_str(), &a), 0);
  auto [second, base2] = publish('a');
  EXPECT_EQ(second, first);
  ASSERT_EQ(::stat(second.c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino) << "the published file was replaced";
  EXPECT_EQ(base2[0], 'a');
  // The second mapping is now the published file, not a deleted temporary.
  std::string maps;
  {
    std::ifstream in("/proc/self/maps");
    maps.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  EXPECT_EQ(maps.find(".t." + std::to_string(::getpid())), std::string::npos) << maps;
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);
  ::munmap(base1, 3 * 4096);
  ::munmap(base2, 3 * 4096);
}

}  // namespace
}  // namespace hotboot
