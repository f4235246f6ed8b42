// io.h and temp_files.h on real files in a fresh directory: a short read is
// Truncated and names the byte, temporaries are exclusive and a dead
// writer's leftover is swept while a live one's is left alone.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "hotboot/io.h"
#include "hotboot/temp_files.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hotboot-base-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  static void Touch(const std::string& p) { std::ofstream(p) << "x"; }

  std::string dir_;
};

TEST_F(FilesTest, WriteAllThenPreadAllRoundTrips) {
  const std::string p = Path("data");
  int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  const std::string text = "0123456789";
  ASSERT_TRUE(io::WriteAll(fd, text.data(), text.size(), p).ok());
  char buf[4];
  ASSERT_TRUE(io::PreadAll(fd, buf, 4, 3, p).ok());
  EXPECT_EQ(std::string(buf, 4), "3456");
  ::close(fd);
}

TEST_F(FilesTest, AShortReadIsTruncatedAndNamesTheByte) {
  const std::string p = Path("short");
  Touch(p);  // one byte
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  char buf[8];
  Status s = io::PreadAll(fd, buf, 8, 0, p);
  ::close(fd);
  ASSERT_EQ(s.code(), Code::kTruncated);
  EXPECT_NE(s.message().find(p + ": file ends at byte 1"), std::string::npos) << s.message();
}

TEST_F(FilesTest, ReadErrorsNameThePath) {
  char buf[1];
  Status s = io::PreadAll(-1, buf, 1, 0, "/where/it/was");
  ASSERT_EQ(s.code(), Code::kIo);
  EXPECT_NE(s.message().find("/where/it/was"), std::string::npos) << s.message();
}

TEST_F(FilesTest, TemporaryIsExclusiveAndBesideItsFile) {
  const std::string p = Path("out.bin");
  EXPECT_EQ(TempPathFor(p), p + ".tmp." + std::to_string(::getpid()));
  auto fd = CreateTemporary(p, 0600);
  ASSERT_TRUE(fd.ok()) << fd.status().message();
  ::close(*fd);
  EXPECT_TRUE(fs::exists(TempPathFor(p)));
  // A second create sweeps this process's own leftover first, then creates
  // it again exclusively.
  auto again = CreateTemporary(p, 0600);
  ASSERT_TRUE(again.ok()) << again.status().message();
  ::close(*again);
}

TEST_F(FilesTest, SweepRemovesADeadWritersTemporaryOnly) {
  const std::string p = Path("out.bin");
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);  // reaped: its id is free
  const std::string dead = p + ".tmp." + std::to_string(child);
  const std::string live = p + ".tmp.1";  // init never exits
  const std::string other = Path("unrelated.bin.tmp." + std::to_string(child));
  Touch(dead);
  Touch(live);
  Touch(other);
  SweepStaleTemporaries(p);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(other));
}

}  // namespace
}  // namespace hotboot
