// Transparent mode through the CLI with the real CRIU: a server that is not
// ours (tools/examples/http_model_server.py, plain Python) is built from its
// HTTP API alone and restored on its build port, answering the same tokens.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>

#include "hotboot/http_client.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string Python() {
  for (const char* p : {"/usr/bin/python3", "/bin/python3"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

std::vector<std::string> BuildArgs(const std::string& out, int port, const std::string& compare) {
  return {Bin("hotboot"), "build", "--out", out, "--json", "--port", std::to_string(port), "--canary-path",
          "/generate", "--canary-body", R"({"prompt":"The quick brown fox","max_tokens":6})", "--canary-compare",
          compare, "--after-restore", "/after-restore", "--", Python(), std::string(HOTBOOT_SOURCE_DIR) + "/tools/examples/http_model_server.py",
          "--port", std::to_string(port)};
}

TEST(Transparent, AnyHttpServerIsBuiltAndRestoredOnItsPort) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const int port = FreePort();
  const std::string snap = ScratchDir() + "/py.hbsnap";
  CmdResult b = RunCmd(BuildArgs(snap, port, "/tokens"));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  json built = json::parse(b.out);
  EXPECT_GT(built.value("file_bytes", 0), 0);
  EXPECT_TRUE(built["warnings"].empty()) << built["warnings"];  // it has an after_restore hook

  CmdResult in = RunCmd({Bin("hotboot"), "inspect", snap, "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  json m = json::parse(in.out)["manifest"];
  EXPECT_EQ(m["mode"], "transparent");
  EXPECT_EQ(m["http"]["port"], port);
  EXPECT_EQ(m["http"]["after_restore"]["path"], "/after-restore");
  const json expected = m["warm"]["canary"]["expected"];
  ASSERT_TRUE(expected.is_array());
  EXPECT_EQ(expected.size(), 6u);

  // Another port cannot be: the listening socket comes back as it was.
  CmdResult wrong = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(FreePort())});
  EXPECT_EQ(wrong.exit_code, 2);  // a usage error
  EXPECT_NE(wrong.err.find("use --port " + std::to_string(port)), std::string::npos) << wrong.err;

  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--detach", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json res = json::parse(r.out);
  const pid_t pid = res["pid"].get<pid_t>();
  EXPECT_EQ(res["port"], port);
  auto answer = HttpRequest("127.0.0.1", port, "POST", "/generate",
                            R"({"prompt":"The quick brown fox","max_tokens":6})", std::chrono::seconds(30));
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  json got = json::parse(answer->body, nullptr, false);
  ASSERT_TRUE(got.is_object()) << answer->body;
  EXPECT_EQ(got["tokens"], expected);
  ::kill(pid, SIGKILL);
  for (int i = 0; i < 50 && PidAlive(pid); ++i) ::usleep(100 * 1000);
}

TEST(Transparent, ACanaryThatDoesNotRepeatFailsTheBuild) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const std::string snap = ScratchDir() + "/py-nondet.hbsnap";
  CmdResult b = RunCmd(BuildArgs(snap, FreePort(), "/latency_ms"));
  EXPECT_EQ(b.exit_code, 1);
  EXPECT_NE(b.err.find("not deterministic"), std::string::npos) << b.err;
  EXPECT_FALSE(fs::exists(snap));
}

}  // namespace
}  // namespace hotboot::test
