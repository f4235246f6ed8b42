// Bad input and faults, each through the real CLI: corrupt and truncated
// snapshots, wrong versions, incompatible hosts, a used port, a server that
// never gets ready, and kills in the middle of a build or a restore. Each:
// a clear message, a meaningful exit code, nothing half-done left behind.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>

#include "hotboot/snapshot_file.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kExitIncompatible = 3;
constexpr int kExitCorrupt = 4;
constexpr int kExitTimeout = 6;

std::string CopyWith(const std::string& name, const std::function<void(std::string&)>& edit) {
  std::string bytes = ReadFile(TinySnapshot());
  edit(bytes);
  std::string p = ScratchDir() + "/" + name;
  WriteFile(p, bytes);
  return p;
}

// Restores `snap` and expects a refusal with `code` whose message holds `needle`,
// and no replica serving on the port afterwards.
void ExpectRestoreRefused(const std::string& snap, int code, const std::string& needle) {
  int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach"});
  EXPECT_EQ(r.exit_code, code) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(HttpStatus(port, "/livez"), -1);
}

TEST(Faults, CorruptByteInChunkDataIsNamed) {
  std::string snap = CopyWith("corrupt-data.hbsnap", [](std::string& b) { b[b.size() / 3] ^= 0x40; });
  CmdResult v = RunCmd({Bin("hotboot"), "verify", snap});
  EXPECT_EQ(v.exit_code, kExitCorrupt) << v.err;
  EXPECT_NE(v.err.find("chunk"), std::string::npos) << v.err;
  EXPECT_NE(v.err.find("section"), std::string::npos) << v.err;
  ExpectRestoreRefused(snap, kExitCorrupt, "chunk");
}

TEST(Faults, CorruptByteInEveryRegionFailsVerify) {
  std::string good = ReadFile(TinySnapshot());
  // Header, early data, middle, late data (index), the trailer.
  for (size_t off : {size_t{3}, size_t{100}, good.size() / 2, good.size() - 200, good.size() - 8}) {
    std::string snap = CopyWith("corrupt-" + std::to_string(off) + ".hbsnap", [&](std::string& b) { b[off] ^= 0x01; });
    CmdResult v = RunCmd({Bin("hotboot"), "verify", snap});
    EXPECT_EQ(v.exit_code, kExitCorrupt) << "byte " << off << ": " << v.err;
    EXPECT_NE(v.err.find("error:"), std::string::npos);
  }
}

TEST(Faults, TruncatedSnapshotIsTruncated) {
  std::string snap = CopyWith("truncated.hbsnap", [](std::string& b) { b.resize(b.size() / 2); });
  CmdResult v = RunCmd({Bin("hotboot"), "verify", snap});
  EXPECT_EQ(v.exit_code, kExitCorrupt);
  EXPECT_NE(v.err.find("truncated"), std::string::npos) << v.err;
  ExpectRestoreRefused(snap, kExitCorrupt, "truncated");
}

TEST(Faults, WrongMagicAndNewerVersion) {
  std::string magic = CopyWith("magic.hbsnap", [](std::string& b) { b[0] = 'X'; });
  CmdResult v = RunCmd({Bin("hotboot"), "inspect", magic});
  EXPECT_EQ(v.exit_code, kExitCorrupt);
  EXPECT_NE(v.err.find("magic"), std::string::npos) << v.err;
  // The major version is the u16 after the 8-byte magic.
  std::string newer = CopyWith("newer.hbsnap", [](std::string& b) { b[8] = 9; });
  v = RunCmd({Bin("hotboot"), "inspect", newer});
  EXPECT_EQ(v.exit_code, kExitCorrupt);
  EXPECT_NE(v.err.find("version"), std::string::npos) << v.err;
  std::string junk = ScratchDir() + "/junk.hbsnap";
  WriteFile(junk, std::string(5000, 'j'));
  ExpectRestoreRefused(junk, kExitCorrupt, "not a hotboot snapshot");
}

// Rewrites the tiny snapshot with an edited manifest.
std::string WithManifest(const std::string& name, const std::function<void(json&)>& edit) {
  auto rd = snapfile::SnapshotReader::Open(TinySnapshot());
  EXPECT_TRUE(rd.ok());
  json m = json::parse((*rd)->manifest_json());
  edit(m);
  std::vector<snapfile::SectionSource> secs;
  for (const auto& s : (*rd)->sections()) {
    auto bytes = (*rd)->ReadSection(s.name);
    EXPECT_TRUE(bytes.ok());
    snapfile::SectionSource src;
    src.name = s.name;
    src.bytes = std::move(*bytes);
    src.mode = s.mode;
    secs.push_back(std::move(src));
  }
  std::string p = ScratchDir() + "/" + name;
  EXPECT_TRUE(snapfile::WriteSnapshot(p, m.dump(), secs).ok());
  return p;
}

TEST(Faults, IncompatibleHostIsRefusedBeforeTouchingAnything) {
  std::string snap = WithManifest("alien.hbsnap", [](json& m) {
    m["host"]["isa_flags"].push_back("avx10_9_imaginary");
    m["process"]["mapped_files"].push_back({{"path", "/opt/not-here/libgone.so"}, {"size", 1}});
  });
  ExpectRestoreRefused(snap, kExitIncompatible, "avx10_9_imaginary");
  int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach", "--json",
                     "--fallback-cold"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("cold"), std::string::npos);
  json out = json::parse(r.out, nullptr, false);
  EXPECT_EQ(out.value("mode", ""), "cold");
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  kill(out.value("pid", -1), SIGKILL);
}

TEST(Faults, PortAlreadyInUse) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  listen(fd, 1);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  CmdResult r = RunCmd({Bin("hotboot"), "restore", TinySnapshot(), "--port", std::to_string(port), "--detach"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("in use"), std::string::npos) << r.err;
  close(fd);
}

TEST(Faults, ServerThatNeverGetsReadyTimesOut) {
  std::string out = ScratchDir() + "/never.hbsnap";
  CmdResult r = RunCmd({Bin("hotboot"), "build", "--out", out, "--ready-timeout", "2", "--", "/bin/sleep", "30"});
  EXPECT_EQ(r.exit_code, kExitTimeout) << r.err;
  EXPECT_NE(r.err.find("never became ready"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

int CountServersOf(const std::string& model) {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = ReadFile(e.path().string() + "/cmdline");
    if (cmd.find("hotboot-server") != std::string::npos && cmd.find(model) != std::string::npos &&
        PidAlive(std::stoi(name))) {
      ++n;
    }
  }
  return n;
}

TEST(Faults, KillNineMidDumpPublishesNoSnapshot) {
  std::string out = ScratchDir() + "/killed.hbsnap";
  std::string log = ScratchDir() + "/killed.err";
  int before = CountServersOf(TinyModel());
  pid_t b = Spawn({Bin("hotboot"), "build", "--out", out, "--model", TinyModel()}, ScratchDir() + "/killed.out", log);
  ASSERT_TRUE(WaitForText(b, log, "dumping", 300)) << ReadFile(log);
  kill(b, SIGKILL);
  waitpid(b, nullptr, 0);
  EXPECT_FALSE(fs::exists(out));
  // The orphaned server notices its control channel closed and exits.
  for (int i = 0; i < 100 && CountServersOf(TinyModel()) > before; ++i) usleep(100 * 1000);
  EXPECT_EQ(CountServersOf(TinyModel()), before);
  // The next build cleans what the killed one left and succeeds.
  CmdResult r = RunCmd({Bin("hotboot"), "build", "--out", out, "--model", TinyModel()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out));
  for (const std::string& dir : {ScratchDir(), std::string("/dev/shm")}) {
    for (const auto& e : fs::directory_iterator(dir)) {
      EXPECT_EQ(e.path().filename().string().find(".hotboot-build.killed"), std::string::npos) << e.path();
      EXPECT_EQ(e.path().filename().string().find("killed.hbsnap.tmp"), std::string::npos) << e.path();
    }
  }
}

TEST(Faults, KillMidRestoreLeavesNoReplica) {
  for (const char* phase : {"criu-restore", "after-restore", "verify"}) {
    int port = FreePort();
    std::string log = ScratchDir() + "/kr." + phase + ".err";
    int before = CountServersOf(TinyModel());
    pid_t r = Spawn({Bin("hotboot"), "restore", TinySnapshot(), "--port", std::to_string(port), "--detach"},
                    ScratchDir() + "/kr.out", log);
    if (!WaitForText(r, log, phase, 120)) {
      waitpid(r, nullptr, 0);
      ADD_FAILURE() << "restore ended before phase " << phase << ": " << ReadFile(log);
      continue;
    }
    kill(r, SIGKILL);
    waitpid(r, nullptr, 0);
    for (int i = 0; i < 100 && CountServersOf(TinyModel()) > before; ++i) usleep(100 * 1000);
    EXPECT_EQ(CountServersOf(TinyModel()), before) << "a replica outlived a restore killed at " << phase;
    EXPECT_EQ(HttpStatus(port, "/readyz"), -1);
  }
}

}  // namespace
}  // namespace hotboot::test
