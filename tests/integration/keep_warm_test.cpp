// Keep-warm through a real build and restore (issue 14): the server's
// command line is recorded at build, so a snapshot built with
// --keep-warm-interval restores into a replica that keeps itself warm.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "hotboot/http_client.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

using json = nlohmann::json;

// An unlabelled sample of the replica's /metrics; -1 when absent or unreachable.
double ReplicaMetric(int port, const std::string& name) {
  auto r = HttpRequest("127.0.0.1", port, "GET", "/metrics", "", std::chrono::seconds(10));
  if (!r.ok() || r->status != 200) return -1;
  const std::string text = "\n" + r->body;
  const size_t at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::strtod(text.c_str() + at + name.size() + 2, nullptr);
}

TEST(KeepWarm, ARestoredReplicaKeepsItselfWarm) {
  const std::string snap = ScratchDir() + "/keep-warm.hbsnap";
  CmdResult b = RunCmd({Bin("hotboot"), "build", "--out", snap, "--json", "--", Bin("hotboot-server"), "--model",
                        TinyModel(), "--port", "0", "--control-stdio", "--keep-warm-interval", "0.2"});
  ASSERT_EQ(b.exit_code, 0) << b.err;

  const int port = FreePort();
  const std::string base = ScratchDir() + "/keep-warm.";
  pid_t cli = Spawn({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--json"}, base + "out",
                    base + "err");
  ASSERT_GT(cli, 0);
  json out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!out.is_object() && std::chrono::steady_clock::now() < deadline && PidAlive(cli)) {
    const std::string s = ReadFile(base + "out");
    if (!s.empty() && s.back() == '\n') out = json::parse(s, nullptr, false);
    if (!out.is_object()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(out.is_object()) << ReadFile(base + "err");

  EXPECT_EQ(ReplicaMetric(port, "hotboot_keep_warm_interval_seconds"), 0.2);
  const double real = ReplicaMetric(port, "hotboot_generate_seconds_count");  // the verification's canary
  const double start = ReplicaMetric(port, "hotboot_keep_warm_requests_total");
  ASSERT_GE(start, 0);
  bool resumed = false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!resumed && std::chrono::steady_clock::now() < until) {
    resumed = ReplicaMetric(port, "hotboot_keep_warm_requests_total") >= start + 2;
    if (!resumed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(resumed) << "no keep-warm requests on the restored replica";
  EXPECT_EQ(ReplicaMetric(port, "hotboot_generate_seconds_count"), real);
  EXPECT_TRUE(Generate(port, "hello", 4).is_object());

  ::kill(cli, SIGTERM);
  int st = 0;
  ::waitpid(cli, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << ReadFile(base + "err");
}

}  // namespace
}  // namespace hotboot::test
