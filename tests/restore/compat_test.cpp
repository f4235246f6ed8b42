#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "hotboot/node_cache.h"

#include "hotboot/restore.h"

namespace hotboot {
namespace {

using json = nlohmann::json;

HostInfo Host() {
  HostInfo h;
  h.arch = "x86_64";
  h.kernel = "6.18.44";
  h.cpu_flags = {"avx2", "fma", "f16c", "sse4_2"};
  return h;
}

// /bin/sh recorded with size 0 and no content hash.
Manifest Base() {
  Manifest m;
  m.host.arch = "x86_64";
  m.host.kernel = "6.18.10";
  m.host.isa_flags = {"avx2", "fma"};
  m.criu.version = "4.2.1";
  m.process.mapped_files = {{"/bin/sh", 0, ""}};
  return m;
}

Manifest WithShSize(Manifest m) {
  struct stat st{};
  ::stat("/bin/sh", &st);
  m.process.mapped_files[0].size = static_cast<uint64_t>(st.st_size);
  return m;
}

TEST(Compat, FitsWhenEverythingMatches) {
  auto p = CheckCompatibility(WithShSize(Base()), Host(), "4.2.1");
  EXPECT_TRUE(p.empty()) << DescribeProblems(p);
}

TEST(Compat, MissingIsaExtensionIsNamed) {
  Manifest m = WithShSize(Base());
  m.host.isa_flags.push_back("avx512f");
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].what, "cpu");
  EXPECT_NE(p[0].detail.find("avx512f"), std::string::npos);
}

TEST(Compat, OlderKernelArchAndCriu) {
  Manifest m = WithShSize(Base());
  m.host.kernel = "7.1.0";
  m.host.arch = "aarch64";
  m.criu.version = "5.0.0";
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  std::set<std::string> what;
  for (const auto& x : p) what.insert(x.what);
  EXPECT_EQ(what, (std::set<std::string>{"kernel", "arch", "criu"}));
  EXPECT_FALSE(CheckCompatibility(WithShSize(Base()), Host(), "").empty());  // no CRIU at all
  EXPECT_FALSE(CheckCompatibility(WithShSize(Base()), Host(), "4.1.0").empty());  // older CRIU
  EXPECT_TRUE(CheckCompatibility(WithShSize(Base()), Host(), "4.3.0").empty());   // newer minor
}

TEST(Compat, MappedFilesMustExistWithTheSameSize) {
  Manifest m = Base();  // /bin/sh recorded with size 0
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].what, "file");
  EXPECT_NE(p[0].detail.find("different build"), std::string::npos);
  m.process.mapped_files[0].path = "/nonexistent/lib.so";
  p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].detail.find("does not exist"), std::string::npos);
}

// Issue 12: a file of the same size but other bytes (another version of a
// library, rebuilt to the same size) is refused, naming the file; the same
// bytes pass. What the check costs is reported.
TEST(Compat, MappedFilesMustHaveTheSameContent) {
  const std::string dir = ::testing::TempDir() + "/compat-content." + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string lib = dir + "/libsame-size.so";
  std::ofstream(lib) << "version one of the library";
  Manifest m = Base();
  auto hash = HashPathXxh128(lib);
  ASSERT_TRUE(hash.ok()) << hash.status().message();
  m.process.mapped_files = {{lib, 26, *hash}};
  double ms = -1;
  auto p = CheckCompatibility(m, Host(), "4.2.1", &ms);
  EXPECT_TRUE(p.empty()) << DescribeProblems(p);
  EXPECT_GE(ms, 0);
  std::ofstream(lib) << "version two of the library";  // same size, other bytes
  p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u) << DescribeProblems(p);
  EXPECT_EQ(p[0].what, "file");
  EXPECT_NE(p[0].detail.find(lib), std::string::npos) << p[0].detail;
  EXPECT_NE(p[0].detail.find("content here differs"), std::string::npos) << p[0].detail;
  std::filesystem::remove_all(dir);
}

TEST(Compat, CwdMustExist) {
  Manifest m = WithShSize(Base());
  m.process.cwd = "/nonexistent/dir";
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].detail.find("/nonexistent/dir"), std::string::npos);
}

TEST(Compat, WithPortReplacesOrAppends) {
  EXPECT_EQ(WithPort({"srv", "--port", "0", "--x"}, 81), (std::vector<std::string>{"srv", "--port", "81", "--x"}));
  EXPECT_EQ(WithPort({"srv"}, 81), (std::vector<std::string>{"srv", "--port", "81"}));
}

TEST(Compat, PidsOfASnapshotWithoutPidNamespaceMustBeFree) {
  Manifest m;
  m.process.pid_namespace = false;
  m.process.pids = {::getpid()};
  Status s = CheckPidsFree(m);
  EXPECT_EQ(s.code(), Code::kIncompatible);
  EXPECT_NE(s.message().find(std::to_string(::getpid())), std::string::npos) << s.message();
  // PIDs above the kernel's pid_max can never be in use.
  m.process.pids = {4194304 - 1};
  EXPECT_TRUE(CheckPidsFree(m).ok());
  // With a namespace of its own, the recorded PIDs are never checked.
  m.process.pid_namespace = true;
  m.process.pids = {::getpid()};
  EXPECT_TRUE(CheckPidsFree(m).ok());
  // A PID of the wrong type or out of range never gets this far: the
  // manifest does not parse (tests/formats/manifest_test.cpp).
}

TEST(Compat, ReservePidsMovesThePidCounterPastTheSnapshotsPids) {
  auto last = [] {
    long v = -1;
    std::ifstream("/proc/sys/kernel/ns_last_pid") >> v;
    return v;
  };
  long pid_max = 0;
  std::ifstream("/proc/sys/kernel/pid_max") >> pid_max;
  const long target = std::min(last() + 5000, pid_max - 10);
  Manifest m;
  m.process.pid_namespace = false;
  m.process.pids = {target - 3, target};
  ReservePids(m);
  if (::geteuid() != 0) GTEST_SKIP() << "ns_last_pid needs root";
  EXPECT_GE(last(), target);
  // A snapshot with a PID namespace of its own leaves the counter alone.
  const long now = last();
  m.process.pid_namespace = true;
  m.process.pids = {pid_max - 5};
  ReservePids(m);
  EXPECT_LT(last(), now + 1000);
}

TEST(Compat, PortAvailable) {
  EXPECT_FALSE(PortAvailable("not-an-ip", 80));
  EXPECT_TRUE(PortAvailable("127.0.0.1", 0));
}

}  // namespace
}  // namespace hotboot
