// Single flight in the weights directory (node_cache.h NameLock): restores
// started at once on a fresh host each lack the same weights file; only one
// may decode it, the others wait for it and reuse it (issue 14: N
// concurrent restores cost N times the CPU otherwise).
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <xxhash.h>

#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;

// Lines of /proc/locks of processes or threads waiting for the file `path`.
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

ino_t InodeOf(const fs::path& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 ? st.st_ino : 0;
}

class WeightsSingleFlight : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-single-flight." + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    weights_ = std::string(2 << 20, 'w');
    weights_[777] = 'x';
    const XXH128_hash_t h = XXH3_128bits(weights_.data(), weights_.size());
    const std::string hash = snapfile::Digest128{h.high64, h.low64}.Hex();
    name_ = "weights-" + hash + ".bin";
    m_.process.provided_files = {{name_, weights_.size(), "weights/" + name_, hash}};
    std::vector<snapfile::SectionSource> secs(1);
    secs[0].name = "weights/" + name_;
    secs[0].bytes = weights_;
    snap_ = (dir_ / "w.hbsnap").string();
    ASSERT_TRUE(snapfile::WriteSnapshot(snap_, "{}", secs).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
  std::string weights_, name_, snap_;
  Manifest m_;
};

// The first restore holds the name's lock (as while it extracts); a second
// one lacking the file waits on it instead of extracting, and once the first
// put the file in place and let go, reuses that very file.
TEST_F(WeightsSingleFlight, ASecondRestoreWaitsForTheFirstAndReusesItsFile) {
  auto wdir = SafeDir::Open((dir_ / "weights").string());
  ASSERT_TRUE(wdir.ok()) << wdir.status().message();
  auto reader = snapfile::SnapshotReader::Open(snap_);
  ASSERT_TRUE(reader.ok()) << reader.status().message();

  auto first = NameLock::Acquire(*wdir, name_);
  ASSERT_TRUE(first.ok()) << first.status().message();
  std::future<Status> second = std::async(std::launch::async, [&] {
    auto dir = SafeDir::Open((dir_ / "weights").string());  // its own fd, as another process has
    if (!dir.ok()) return dir.status();
    return PlaceProvidedFiles(m_, **reader, *dir, 1, /*signature_checked=*/false);
  });
  const std::string lock = (dir_ / "weights" / ("." + name_ + ".lock")).string();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (FlockWaiters(lock) < 1 && std::chrono::steady_clock::now() < deadline) {
    if (second.wait_for(std::chrono::milliseconds(1)) == std::future_status::ready) break;
  }
  ASSERT_EQ(FlockWaiters(lock), 1) << "the second restore did not wait for the first";
  EXPECT_FALSE(fs::exists(dir_ / "weights" / name_)) << "extracted while the first held the lock";

  ASSERT_TRUE(ExtractToCache(**reader, "weights/" + name_, *wdir, name_, 1).ok());
  const ino_t placed = InodeOf(dir_ / "weights" / name_);
  *first = NameLock();  // let go: the lock file is removed first
  ASSERT_EQ(second.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  const Status st = second.get();
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(InodeOf(dir_ / "weights" / name_), placed) << "the second extracted the file again";
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir_ / "weights")) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{name_}) << "a lock file was left behind";
}

// Four at once on an empty directory: the file is there once, with the
// snapshot's bytes, and nothing else is.
TEST_F(WeightsSingleFlight, FourAtOnceLeaveOneFileAndNoLock) {
  auto reader = snapfile::SnapshotReader::Open(snap_);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  std::vector<std::future<Status>> all;
  for (int i = 0; i < 4; ++i) {
    all.push_back(std::async(std::launch::async, [&] {
      auto dir = SafeDir::Open((dir_ / "weights").string());
      if (!dir.ok()) return dir.status();
      return PlaceProvidedFiles(m_, **reader, *dir, 1, false);
    }));
  }
  for (auto& f : all) {
    const Status st = f.get();
    EXPECT_TRUE(st.ok()) << st.message();
  }
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir_ / "weights")) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{name_});
  std::ifstream in(dir_ / "weights" / name_, std::ios::binary);
  EXPECT_TRUE(std::string(std::istreambuf_iterator<char>(in), {}) == weights_);
}

TEST_F(WeightsSingleFlight, ALockNameMustBeAPlainFileName) {
  auto wdir = SafeDir::Open((dir_ / "weights").string());
  ASSERT_TRUE(wdir.ok());
  for (const char* bad : {"", "../x", "a/b", ".hidden"}) {
    auto l = NameLock::Acquire(*wdir, bad);
    EXPECT_FALSE(l.ok()) << bad;
    if (!l.ok()) {
      EXPECT_EQ(l.status().code(), Code::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace hotboot
