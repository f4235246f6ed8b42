#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

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

json Manifest() {
  return {{"host", {{"arch", "x86_64"}, {"kernel", "6.18.10"}, {"isa_flags", {"avx2", "fma"}}}},
          {"criu", {{"version", "4.2.1"}}},
          {"process", {{"mapped_files", json::array({{{"path", "/bin/sh"}, {"size", 0}}})}}}};
}

json WithShSize(json m) {
  struct stat st{};
  ::stat("/bin/sh", &st);
  m["process"]["mapped_files"][0]["size"] = static_cast<uint64_t>(st.st_size);
  return m;
}

TEST(Compat, FitsWhenEverythingMatches) {
  auto p = CheckCompatibility(WithShSize(Manifest()), Host(), "4.2.1");
  EXPECT_TRUE(p.empty()) << DescribeProblems(p);
}

TEST(Compat, MissingIsaExtensionIsNamed) {
  json m = WithShSize(Manifest());
  m["host"]["isa_flags"].push_back("avx512f");
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].what, "cpu");
  EXPECT_NE(p[0].detail.find("avx512f"), std::string::npos);
}

TEST(Compat, OlderKernelArchAndCriu) {
  json m = WithShSize(Manifest());
  m["host"]["kernel"] = "7.1.0";
  m["host"]["arch"] = "aarch64";
  m["criu"]["version"] = "5.0.0";
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  std::set<std::string> what;
  for (const auto& x : p) what.insert(x.what);
  EXPECT_EQ(what, (std::set<std::string>{"kernel", "arch", "criu"}));
  EXPECT_FALSE(CheckCompatibility(WithShSize(Manifest()), Host(), "").empty());  // no CRIU at all
  EXPECT_FALSE(CheckCompatibility(WithShSize(Manifest()), Host(), "4.1.0").empty());  // older CRIU
  EXPECT_TRUE(CheckCompatibility(WithShSize(Manifest()), Host(), "4.3.0").empty());   // newer minor
}

TEST(Compat, MappedFilesMustExistWithTheSameSize) {
  json m = Manifest();  // /bin/sh recorded with size 0
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].what, "file");
  EXPECT_NE(p[0].detail.find("different build"), std::string::npos);
  m["process"]["mapped_files"][0]["path"] = "/nonexistent/lib.so";
  p = CheckCompatibility(m, Host(), "4.2.1");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].detail.find("does not exist"), std::string::npos);
}

TEST(Compat, GarbageManifestFieldsDoNotCrash) {
  json m = {{"host", "nope"}, {"criu", {{"version", "x.y"}}}, {"process", {{"mapped_files", 7}}}};
  auto p = CheckCompatibility(m, Host(), "4.2.1");
  (void)p;
  SUCCEED();
}

TEST(Compat, WithPortReplacesOrAppends) {
  EXPECT_EQ(WithPort({"srv", "--port", "0", "--x"}, 81), (std::vector<std::string>{"srv", "--port", "81", "--x"}));
  EXPECT_EQ(WithPort({"srv"}, 81), (std::vector<std::string>{"srv", "--port", "81"}));
}

TEST(Compat, PidsOfASnapshotWithoutPidNamespaceMustBeFree) {
  json m = {{"process", {{"pid_namespace", false}, {"pids", {::getpid()}}}}};
  Status s = CheckPidsFree(m);
  EXPECT_EQ(s.code(), Code::kIncompatible);
  EXPECT_NE(s.message().find(std::to_string(::getpid())), std::string::npos) << s.message();
  // PIDs above the kernel's pid_max can never be in use.
  m["process"]["pids"] = {4194304 + 7};
  EXPECT_TRUE(CheckPidsFree(m).ok());
  // With a namespace of its own, the recorded PIDs are never checked.
  m["process"] = {{"pid_namespace", true}, {"pids", {::getpid()}}};
  EXPECT_TRUE(CheckPidsFree(m).ok());
  m["process"] = {{"pid_namespace", false}, {"pids", {"x"}}};
  EXPECT_EQ(CheckPidsFree(m).code(), Code::kCorrupt);
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
  json m = {{"process", {{"pid_namespace", false}, {"pids", {target - 3, target}}}}};
  ReservePids(m);
  if (::geteuid() != 0) GTEST_SKIP() << "ns_last_pid needs root";
  EXPECT_GE(last(), target);
  // A snapshot with a PID namespace of its own leaves the counter alone.
  const long now = last();
  m["process"] = {{"pid_namespace", true}, {"pids", {pid_max - 5}}};
  ReservePids(m);
  EXPECT_LT(last(), now + 1000);
}

TEST(Compat, PortAvailable) {
  EXPECT_FALSE(PortAvailable("not-an-ip", 80));
  EXPECT_TRUE(PortAvailable("127.0.0.1", 0));
}

}  // namespace
}  // namespace hotboot
