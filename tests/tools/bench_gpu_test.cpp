// `hotboot bench gpu`: what runs without a GPU. --host-only generates the
// weights file, writes and decodes the snapshot, mounts, fills and unmounts
// the huge-page tmpfs and reads with O_DIRECT; every row is there, and
// nothing it made is left behind. Without --host-only and without a driver
// it fails as it always did. Killed while its tmpfs is mounted, it leaves no
// mount (the mount lives in a mount namespace of the bench's own) and its
// janitor removes its files; with the janitor killed too, the next run does.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class BenchGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    bin_ = std::string(HOTBOOT_BIN_DIR) + "/bin/hotboot";
    if (::access(bin_.c_str(), X_OK) != 0) GTEST_SKIP() << bin_ << " is not built";
    const std::string tag = std::to_string(::getpid());
    work_ = fs::temp_directory_path() / ("hotboot-bench-gpu-test.w." + tag);
    disk_ = fs::path("/var/tmp") / ("hotboot-bench-gpu-test.d." + tag);
    fs::create_directories(work_);
    fs::create_directories(disk_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(work_, ec);
    fs::remove_all(disk_, ec);
  }
  // stdout; stderr into *err.
  std::string Run(const std::string& args, int* rc, std::string* err) {
    const std::string err_path = (work_ / "stderr").string();
    FILE* p = ::popen((bin_ + " " + args + " 2>" + err_path).c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int st = ::pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::ifstream e(err_path);
    std::stringstream ss;
    ss << e.rdbuf();
    *err = ss.str();
    fs::remove(err_path);
    return out;
  }
  static bool MountedUnder(const fs::path& dir) {
    std::ifstream in("/proc/self/mountinfo");
    for (std::string line; std::getline(in, line);) {
      if (line.find(dir.string()) != std::string::npos) return true;
    }
    return false;
  }
  // Processes (any, in any mount namespace) that see a mount on `dir`.
  static std::vector<std::string> MountsOf(const fs::path& dir) {
    std::vector<std::string> seen;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream in(e.path() / "mountinfo");
      for (std::string line; std::getline(in, line);) {
        if (line.find(" " + dir.string() + " ") != std::string::npos) seen.push_back(name + ": " + line);
      }
    }
    return seen;
  }
  // Starts `hotboot bench gpu ARGS --stop-when-mounted` and waits (30 s at
  // most) until it stopped itself with its tmpfs mounted; its pid, or -1.
  pid_t StartStopped(const std::vector<std::string>& args, const fs::path& log) {
    std::vector<std::string> argv = {bin_, "bench", "gpu"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--stop-when-mounted");
    const pid_t pid = ::fork();
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> av;
      for (auto& x : argv) av.push_back(x.data());
      av.push_back(nullptr);
      ::execv(av[0], av.data());
      ::_exit(127);
    }
    for (int i = 0; i < 3000; ++i) {
      int st = 0;
      const pid_t w = ::waitpid(pid, &st, WNOHANG | WUNTRACED);
      if (w == pid && WIFSTOPPED(st)) return pid;
      if (w == pid) return -1;  // it ended
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return -1;
  }
  static std::vector<pid_t> ChildrenOf(pid_t pid) {
    std::vector<pid_t> out;
    for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
      std::ifstream in(t.path() / "children");
      for (pid_t c; in >> c;) out.push_back(c);
    }
    return out;
  }
  static std::string Slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static bool Eventually(const std::function<bool()>& cond) {
    for (int i = 0; i < 500; ++i) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return cond();
  }
  std::string bin_;
  fs::path work_, disk_;
};

TEST_F(BenchGpu, HostOnlyRunsEveryHostSideStepAndLeavesNothing) {
  int rc = -1;
  std::string err;
  const std::string out = Run("bench gpu --host-only --json --size-mib 24 --workdir " + work_.string() +
                                  " --disk-dir " + disk_.string(),
                              &rc, &err);
  ASSERT_EQ(rc, 0) << err;
  json j = json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["host_only"], true);
  EXPECT_EQ(j["weights_bytes"], 24u << 20);
  EXPECT_TRUE(j["handoff_import_ms"].is_null());
  std::set<std::string> seen;
  for (const auto& r : j["sources"]) {
    const std::string s = r["source"];
    seen.insert(s);
    EXPECT_EQ(r["bytes"], 24u << 20) << s;
    EXPECT_FALSE(r.contains("upload_GBps")) << s << ": no device, no upload";
    ASSERT_TRUE(r.contains("error")) << s;
    if (s == "snapshot") {
      // Written as the builder writes weights (bf16 planes, 4 MiB chunks),
      // decoded and checked: bf16-looking data shrinks, but not much.
      EXPECT_GT(r["decode_GBps"].get<double>(), 0) << r.dump();
      EXPECT_EQ(r["chunks"], 6u);
      EXPECT_EQ(r["max_chunk_bytes"], 4u << 20);
      const double ratio = r["snapshot_bytes"].get<double>() / (24 << 20);
      EXPECT_GT(ratio, 0.5) << r.dump();
      EXPECT_LT(ratio, 0.95) << r.dump();
    }
    if (s == "direct") {
      EXPECT_GT(r["read_GBps"].get<double>(), 0) << r.dump();
    }
    if (s == "huge_tmpfs") {
      if (::geteuid() == 0) {
        EXPECT_GT(r["copy_GBps"].get<double>(), 0) << r.dump();
      } else {
        EXPECT_NE(r["error"].get<std::string>().find("mount tmpfs"), std::string::npos) << r.dump();
      }
    }
  }
  EXPECT_EQ(seen, (std::set<std::string>{"page_cache", "huge_tmpfs", "direct", "snapshot", "handoff"}));
  // Nothing left: no file, no snapshot, no mount point, no mount.
  EXPECT_TRUE(fs::is_empty(work_)) << fs::begin(fs::directory_iterator(work_))->path();
  EXPECT_TRUE(fs::is_empty(disk_)) << fs::begin(fs::directory_iterator(disk_))->path();
  EXPECT_FALSE(MountedUnder(disk_));
}

TEST_F(BenchGpu, SourcesSelectTheRowsAndUnknownOnesAreRefused) {
  int rc = -1;
  std::string err;
  json j = json::parse(Run("bench gpu --host-only --json --size-mib 8 --sources snapshot --workdir " +
                               work_.string() + " --disk-dir " + disk_.string(),
                           &rc, &err),
                       nullptr, false);
  ASSERT_EQ(rc, 0) << err;
  ASSERT_EQ(j["sources"].size(), 1u);
  EXPECT_EQ(j["sources"][0]["source"], "snapshot");
  Run("bench gpu --host-only --sources snapshot,pcie", &rc, &err);
  EXPECT_EQ(rc, 2) << err;
  EXPECT_NE(err.find("unknown source 'pcie'"), std::string::npos) << err;
}

TEST_F(BenchGpu, WithoutADeviceItFailsAsBefore) {
  if (::access("/dev/nvidiactl", F_OK) == 0) GTEST_SKIP() << "this host has an NVIDIA device";
  int rc = -1;
  std::string err;
  Run("bench gpu --size-mib 8 --workdir " + work_.string(), &rc, &err);
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("bench gpu needs a CUDA device"), std::string::npos) << err;
  EXPECT_TRUE(fs::is_empty(work_));  // nothing generated before the device check
}

// The real gpu::Device (kernels/src/gpu_device_cuda.cpp: dlopen, every
// driver call, the shareable export/import/map) against the fake NVIDIA
// driver of tests/gpu-check: every row uploads, and the snapshot and handoff
// rows check the device's bytes against the file.
TEST_F(BenchGpu, EveryRowRunsOnTheFakeDriver) {
  const std::string lib = std::string(HOTBOOT_BIN_DIR) + "/tests/gpu-check/fake-cuda";
  if (::access((lib + "/libcuda.so.1").c_str(), R_OK) != 0) GTEST_SKIP() << "no fake libcuda built in " << lib;
  int rc = -1;
  std::string err;
  bin_ = "LD_LIBRARY_PATH=" + lib + " " + bin_;
  json j = json::parse(Run("bench gpu --json --repeat 1 --size-mib 16 --workdir " + work_.string() +
                               " --disk-dir " + disk_.string(),
                           &rc, &err),
                       nullptr, false);
  ASSERT_EQ(rc, 0) << err;
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["device"], "NVIDIA H200 (fake)");
  EXPECT_GT(j["pinned_h2d_GBps"].get<double>(), 0);
  ASSERT_TRUE(j["handoff_import_ms"].is_number()) << j.dump();
  std::multiset<std::string> seen;
  for (const auto& r : j["sources"]) {
    const std::string s = r["source"];
    seen.insert(s);
    if (s == "huge_tmpfs" && ::geteuid() != 0) continue;  // no mount without root
    EXPECT_FALSE(r.contains("error")) << r.dump();
    EXPECT_GT(r["upload_GBps"].get<double>(), 0) << r.dump();
    EXPECT_EQ(r["bytes"], 16u << 20) << r.dump();
    EXPECT_NEAR(r["vs_pinned"].get<double>(), r["upload_GBps"].get<double>() / j["pinned_h2d_GBps"].get<double>(),
                1e-9);
    if (s == "direct") {
      EXPECT_EQ(r["mode"], "direct") << r.dump();  // /var/tmp is on disk
    }
    if (s == "handoff") {
      // Imported by a process of its own, which checked the bytes.
      EXPECT_EQ(r["import_where"], "another process") << r.dump();
      EXPECT_EQ(r["import_ms"], j["handoff_import_ms"]);
      EXPECT_TRUE(r["import_same_process_ms"].is_number()) << r.dump();
    }
  }
  if (::geteuid() == 0) {
    EXPECT_EQ(seen, (std::multiset<std::string>{"page_cache", "huge_tmpfs", "huge_tmpfs", "direct", "snapshot",
                                                 "handoff"}));
  }
  EXPECT_TRUE(fs::is_empty(work_));
  EXPECT_TRUE(fs::is_empty(disk_));
  EXPECT_FALSE(MountedUnder(disk_));
}

// Killed (SIGKILL) with its tmpfs mounted: the mount was only ever in the
// bench's own mount namespace, which goes with it; its janitor removes the
// mount point and the generated weights file.
TEST_F(BenchGpu, KilledWhileTheTmpfsIsMountedLeavesNoMountAndNoFile) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const fs::path log = disk_.string() + ".log";
  const pid_t pid = StartStopped({"--host-only", "--json", "--size-mib", "8", "--sources", "huge_tmpfs", "--workdir",
                                  work_.string(), "--disk-dir", disk_.string()},
                                 log);
  ASSERT_GT(pid, 0) << Slurp(log);
  const fs::path mnt = disk_ / ("hotboot-bench-huge." + std::to_string(pid));
  // Mounted where the bench looks, huge=always, and nowhere else.
  const std::vector<std::string> mounts = MountsOf(mnt);
  ASSERT_EQ(mounts.size(), 1u) << Slurp(log);
  EXPECT_EQ(mounts[0].rfind(std::to_string(pid) + ": ", 0), 0u) << mounts[0];
  EXPECT_NE(mounts[0].find("tmpfs"), std::string::npos) << mounts[0];
  EXPECT_NE(mounts[0].find("huge=always"), std::string::npos) << mounts[0];
  EXPECT_FALSE(MountedUnder(disk_)) << "the test's own mount namespace never sees it";
  EXPECT_NE(fs::read_symlink("/proc/" + std::to_string(pid) + "/ns/mnt"), fs::read_symlink("/proc/self/ns/mnt"));
  EXPECT_TRUE(fs::is_directory(mnt));
  EXPECT_FALSE(fs::is_empty(work_)) << "the generated weights file is there";

  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
  EXPECT_TRUE(MountsOf(mnt).empty());
  EXPECT_FALSE(MountedUnder(disk_));
  EXPECT_TRUE(Eventually([&] { return fs::is_empty(disk_) && fs::is_empty(work_); }))
      << "the janitor removes the mount point and the weights file";
  fs::remove(log);
}

// The bench and its janitor killed together: what they left (the empty mount
// point, the weights file) is removed by the next run's sweep, and that run
// leaves nothing either.
TEST_F(BenchGpu, WhatAKilledBenchAndItsJanitorLeftTheNextRunRemoves) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const fs::path log = disk_.string() + ".log";
  const std::vector<std::string> args = {"--host-only", "--json",    "--size-mib",   "8",           "--sources",
                                         "huge_tmpfs",  "--workdir", work_.string(), "--disk-dir", disk_.string()};
  const pid_t pid = StartStopped(args, log);
  ASSERT_GT(pid, 0) << Slurp(log);
  const std::vector<pid_t> janitor = ChildrenOf(pid);
  ASSERT_EQ(janitor.size(), 1u) << "the job's janitor is the bench's only child";
  ASSERT_EQ(::kill(janitor[0], SIGKILL), 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
  const fs::path mnt = disk_ / ("hotboot-bench-huge." + std::to_string(pid));
  EXPECT_TRUE(MountsOf(mnt).empty()) << "the mount went with the bench";
  for (int i = 0; i < 100 && fs::exists("/proc/" + std::to_string(janitor[0])); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // reaped by init
  }
  EXPECT_TRUE(fs::is_directory(mnt)) << "left: nobody removed it";
  EXPECT_FALSE(fs::is_empty(work_)) << "left: the weights file";

  int rc = -1;
  std::string err;
  Run("bench gpu --host-only --json --size-mib 8 --sources huge_tmpfs --workdir " + work_.string() +
          " --disk-dir " + disk_.string(),
      &rc, &err);
  ASSERT_EQ(rc, 0) << err;
  EXPECT_TRUE(fs::is_empty(disk_)) << fs::begin(fs::directory_iterator(disk_))->path();
  EXPECT_TRUE(fs::is_empty(work_)) << fs::begin(fs::directory_iterator(work_))->path();
  EXPECT_FALSE(MountedUnder(disk_));
  EXPECT_TRUE(MountsOf(mnt).empty());
  fs::remove(log);
}

}  // namespace
