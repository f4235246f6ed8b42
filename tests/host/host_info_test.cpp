#include "hotboot/host_info.h"

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>

namespace hotboot {
namespace {

TEST(HostInfo, ReadsThisHost) {
  HostInfo h = ReadHostInfo();
  EXPECT_FALSE(h.kernel.empty());
  EXPECT_EQ(h.arch, "x86_64");
  EXPECT_GT(h.cpus, 0);
  EXPECT_FALSE(h.cpu_flags.empty());
}

TEST(HostInfo, IsaFlagsKeepOnlyInstructionSetExtensions) {
  auto isa = IsaFlags({"avx2", "fma", "hypervisor", "constant_tsc", "sse4_2"});
  EXPECT_EQ(isa, (std::set<std::string>{"avx2", "fma", "sse4_2"}));
}

TEST(HostInfo, JsonRoundTrip) {
  HostInfo h;
  h.hostname = "builder";
  h.kernel = "6.18.44";
  h.arch = "x86_64";
  h.cpu_flags = {"avx2", "fma"};
  HostInfo back = HostInfoFromJson(ToJson(h));
  EXPECT_EQ(back.kernel, h.kernel);
  EXPECT_EQ(back.cpu_flags, h.cpu_flags);
  EXPECT_TRUE(HostInfoFromJson(nlohmann::json("garbage")).kernel.empty());
}

TEST(HostInfo, KernelMajorMinor) {
  EXPECT_EQ(KernelMajorMinor("6.18.44-fc-v657"), std::make_pair(6, 18));
  EXPECT_EQ(KernelMajorMinor("5.4"), std::make_pair(5, 4));
  EXPECT_EQ(KernelMajorMinor("weird"), std::make_pair(0, 0));
}

TEST(HostInfo, MappedFilesOfThisProcessIncludeItsExecutable) {
  auto files = MappedFiles(::getpid());
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  self[n] = 0;
  bool found = false;
  for (const auto& f : *files) found |= f.path == self && f.size > 0;
  EXPECT_TRUE(found);
  EXPECT_FALSE(MappedFiles(999999999).ok());
}

TEST(ProcessTree, ListsChildrenAfterTheirParent) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t child = ::fork();
  if (child == 0) {
    char c;
    ::close(fds[1]);
    (void)!::read(fds[0], &c, 1);  // lives until the test closes the pipe
    ::_exit(0);
  }
  ::close(fds[0]);
  auto tree = ProcessTree(::getpid());
  ::close(fds[1]);
  ::waitpid(child, nullptr, 0);
  ASSERT_FALSE(tree.empty());
  EXPECT_EQ(tree.front(), ::getpid());
  EXPECT_NE(std::find(tree.begin(), tree.end(), child), tree.end());
}

}  // namespace
}  // namespace hotboot
