// Trust policies through the real CLI: keys made by `hotboot keygen`,
// snapshots signed by `hotboot sign`, and `restore` / `verify` under
// --trust and --trust-dir. A snapshot the policy refuses exits 7 before
// anything is written or started; without a policy restore says it restores
// an unverified snapshot.
#include <signal.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <filesystem>

#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kExitUntrusted = 7;

struct Keys {
  std::string dir, a, b;  // a signs; b is a stranger's key
};

const Keys& TestKeys() {
  static Keys k = [] {
    Keys k;
    k.dir = ScratchDir() + "/trust";
    fs::create_directories(k.dir);
    k.a = k.dir + "/a.key";
    k.b = k.dir + "/b.key";
    for (const auto& key : {k.a, k.b}) {
      CmdResult r = RunCmd({Bin("hotboot"), "keygen", "--out", key});
      if (r.exit_code != 0) throw std::runtime_error("hotboot keygen failed: " + r.err);
    }
    return k;
  }();
  return k;
}

std::string CopyOfTiny(const std::string& name) {
  const std::string p = TestKeys().dir + "/" + name;
  fs::copy_file(TinySnapshot(), p, fs::copy_options::overwrite_existing);
  return p;
}

bool EmptyDir(const std::string& d) {
  std::error_code ec;
  return fs::is_empty(d, ec) && !ec;
}

// restore under `trust` (options after the snapshot): refused with exit 7,
// a message holding `needle`, a JSON failure line, and nothing written to
// its work dir or started.
void ExpectRefused(const std::string& snap, const std::vector<std::string>& trust, const std::string& needle) {
  const std::string work = TestKeys().dir + "/work";
  fs::create_directories(work);
  const int port = FreePort();
  std::vector<std::string> argv = {Bin("hotboot"), "restore", snap, "--port", std::to_string(port),
                                   "--work-dir", work, "--json"};
  argv.insert(argv.end(), trust.begin(), trust.end());
  CmdResult r = RunCmd(argv);
  EXPECT_EQ(r.exit_code, kExitUntrusted) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  json out = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(out.is_object()) << r.out;
  EXPECT_EQ(out["ok"], false);
  EXPECT_EQ(out["exit"], kExitUntrusted);
  EXPECT_EQ(out["outcome"], "untrusted");
  EXPECT_TRUE(EmptyDir(work)) << "a refused snapshot wrote into the work dir";
  EXPECT_EQ(HttpStatus(port, "/livez"), -1) << "a refused snapshot started a server";
}

TEST(Trust, RestoreRefusesWhatThePolicyDoesNotAcceptBeforeWritingAnything) {
  const Keys& k = TestKeys();
  const std::string unsigned_snap = CopyOfTiny("unsigned.hbsnap");
  const std::string signed_snap = CopyOfTiny("signed.hbsnap");
  CmdResult s = RunCmd({Bin("hotboot"), "sign", signed_snap, "--key", k.a});
  ASSERT_EQ(s.exit_code, 0) << s.err;

  ExpectRefused(unsigned_snap, {"--trust", k.a + ".pub", "--trust-dir", ""}, "is not signed");
  ExpectRefused(signed_snap, {"--trust", k.b + ".pub", "--trust-dir", ""}, "which the trust policy does not trust");

  // A trust directory puts the policy in force by existing, even empty.
  const std::string dir = k.dir + "/trust.d";
  fs::create_directories(dir);
  ::chmod(dir.c_str(), 0755);
  ExpectRefused(signed_snap, {"--trust-dir", dir}, "does not trust");
  fs::copy_file(k.b + ".pub", dir + "/b.pub", fs::copy_options::overwrite_existing);
  ExpectRefused(signed_snap, {"--trust-dir", dir}, "does not trust");

  // verify answers the same question the same way.
  CmdResult v = RunCmd({Bin("hotboot"), "verify", signed_snap, "--trust", k.b + ".pub", "--trust-dir", ""});
  EXPECT_EQ(v.exit_code, kExitUntrusted) << v.err;
  v = RunCmd({Bin("hotboot"), "verify", signed_snap, "--trust", k.a + ".pub", "--trust-dir", ""});
  EXPECT_EQ(v.exit_code, 0) << v.err;
}

TEST(Trust, AGroupWritableTrustDirectoryIsNotAPolicy) {
  const Keys& k = TestKeys();
  const std::string dir = k.dir + "/writable.d";
  fs::create_directories(dir);
  fs::copy_file(k.a + ".pub", dir + "/a.pub", fs::copy_options::overwrite_existing);
  ::chmod(dir.c_str(), 0775);
  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", CopyOfTiny("any.hbsnap"), "--port", std::to_string(port),
                        "--trust-dir", dir});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("writable"), std::string::npos) << r.err;
  EXPECT_EQ(HttpStatus(port, "/livez"), -1);
}

TEST(Trust, ASnapshotSignedByATrustedKeyIsRestoredAndSaysBySigner) {
  const Keys& k = TestKeys();
  const std::string snap = CopyOfTiny("trusted.hbsnap");
  ASSERT_EQ(RunCmd({Bin("hotboot"), "sign", snap, "--key", k.a}).exit_code, 0);
  const std::string dir = k.dir + "/good.d";
  fs::create_directories(dir);
  ::chmod(dir.c_str(), 0755);
  fs::copy_file(k.a + ".pub", dir + "/a.pub", fs::copy_options::overwrite_existing);
  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach", "--json",
                        "--trust-dir", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json out = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(out.is_object()) << r.out;
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  EXPECT_EQ(out["trust"]["signed"], true) << out.dump();
  ASSERT_EQ(out["trust"]["signatures"].size(), 1u) << out.dump();
  EXPECT_EQ(out["trust"]["signatures"][0]["trusted"], true) << out.dump();
  EXPECT_FALSE(out.contains("trust_warning"));
  ::kill(out["pid"].get<pid_t>(), SIGKILL);
}

TEST(Trust, WithoutAPolicyRestoreWarnsThatItIsUnverified) {
  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", CopyOfTiny("nopolicy.hbsnap"), "--port", std::to_string(port),
                        "--detach", "--json", "--trust-dir", ""});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("no trust policy is in force"), std::string::npos) << r.err;
  json out = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(out.is_object()) << r.out;
  EXPECT_TRUE(out.contains("trust_warning"));
  EXPECT_EQ(out["trust"]["signed"], false);
  ::kill(out["pid"].get<pid_t>(), SIGKILL);
}

}  // namespace
}  // namespace hotboot::test
