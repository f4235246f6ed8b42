// The replica launcher and control channel against small shell scripts that
// play the server's side of the protocol (server/CONTROL.md).
#include "hotboot/replica.h"

#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <string>

namespace hotboot {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Replica> Launch(const std::string& script, bool pidns = false) {
  LaunchOptions o;
  o.argv = {"/bin/sh", "-c", script};
  o.new_pid_namespace = pidns;
  auto r = LaunchReplica(o, nullptr);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

TEST(Replica, WaitsForStateAndGetsReplies) {
  auto r = Launch(
      "echo 'starting' >&2; echo 'not json'; echo '{\"event\":\"state\",\"state\":\"warm\",\"port\":1234}';"
      "read line; echo '{\"reply\":\"status\",\"ok\":true,\"state\":\"warm\"}'; read line");
  auto warm = r->WaitForState("warm", 10s);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_EQ((*warm)["port"], 1234);
  auto reply = r->Call({{"cmd", "status"}}, 10s);
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ((*reply)["state"], "warm");
}

TEST(Replica, RefusalBecomesAnError) {
  auto r = Launch("read line; echo '{\"reply\":\"before_capture\",\"ok\":false,\"error\":\"busy\"}'; read line");
  auto reply = r->Call({{"cmd", "before_capture"}}, 10s);
  ASSERT_FALSE(reply.ok());
  EXPECT_NE(reply.status().message().find("busy"), std::string::npos);
}

TEST(Replica, ExitWhileWaitingIsReportedWithTheLog) {
  auto r = Launch("echo 'cannot load model: no such file' >&2; exit 3");
  auto warm = r->WaitForState("warm", 10s);
  ASSERT_FALSE(warm.ok());
  EXPECT_NE(warm.status().message().find("exited with status 3"), std::string::npos) << warm.status().message();
  EXPECT_NE(warm.status().message().find("cannot load model"), std::string::npos) << warm.status().message();
}

TEST(Replica, FailedStateIsReported) {
  auto r = Launch("echo '{\"event\":\"state\",\"state\":\"failed\",\"error\":\"bad weights\"}'; sleep 5");
  auto warm = r->WaitForState("warm", 10s);
  ASSERT_FALSE(warm.ok());
  EXPECT_NE(warm.status().message().find("bad weights"), std::string::npos);
}

TEST(Replica, TimeoutSaysWhatItWaitedFor) {
  auto r = Launch("sleep 5");
  auto warm = r->WaitForState("warm", 300ms);
  ASSERT_FALSE(warm.ok());
  EXPECT_EQ(warm.status().code(), Code::kTimeout);
  EXPECT_NE(warm.status().message().find("state 'warm'"), std::string::npos);
}

TEST(Replica, MissingExecutableIsAClearError) {
  LaunchOptions o;
  o.argv = {"/nonexistent/hotboot-server"};
  auto r = LaunchReplica(o, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/hotboot-server"), std::string::npos);
}

TEST(Replica, RunsInItsOwnPidNamespaceAsSessionLeaderWithOnlyThreeFds) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for CLONE_NEWPID";
  auto r = Launch(
      "n=$(ls /proc/self/fd | wc -l); echo \"{\\\"event\\\":\\\"state\\\",\\\"state\\\":\\\"warm\\\","
      "\\\"nspid\\\":$$,\\\"sid\\\":$(cut -d' ' -f6 /proc/self/stat),\\\"fds\\\":$n}\"; read line",
      /*pidns=*/true);
  auto warm = r->WaitForState("warm", 10s);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_EQ((*warm)["nspid"], 1);
  // ls itself holds one more fd for the directory it lists.
  EXPECT_EQ((*warm)["fds"], 4);
  auto keys = r->FdKeys();
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ((*keys)[0].rfind("pipe:[", 0), 0u);
  EXPECT_EQ((*keys)[2].rfind("pipe:[", 0), 0u);
}

// Without a PID namespace, killing a replica ends its workers too (the
// process group), not only the root.
TEST(Replica, KillEndsTheWorkersToo) {
  auto r = Launch("sleep 30 & echo \"{\\\"event\\\":\\\"state\\\",\\\"state\\\":\\\"warm\\\",\\\"port\\\":$!}\"; wait");
  ASSERT_TRUE(r);
  auto warm = r->WaitForState("warm", 10s);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  const pid_t worker = (*warm)["port"].get<pid_t>();  // the worker's pid, carried in a field the test reads
  ASSERT_EQ(::kill(worker, 0), 0);
  r->Kill();
  // Dead: gone from /proc, or a zombie waiting for init to reap it.
  auto alive = [](pid_t p) {
    std::string stat;
    std::getline(std::ifstream("/proc/" + std::to_string(p) + "/stat"), stat);
    const size_t paren = stat.rfind(')');
    return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
  };
  bool gone = !alive(worker);
  for (int i = 0; i < 100 && !gone; ++i) {
    ::usleep(20 * 1000);
    gone = !alive(worker);
  }
  EXPECT_TRUE(gone) << "worker " << worker << " survived the replica";
}

TEST(Replica, LogsReachTheSink) {
  std::vector<std::string> lines;
  std::mutex mu;
  LaunchOptions o;
  o.argv = {"/bin/sh", "-c", "echo one >&2; echo two >&2; echo '{\"event\":\"state\",\"state\":\"warm\"}'; read x"};
  o.new_pid_namespace = false;
  auto r = LaunchReplica(o, [&](const std::string& l) {
    std::lock_guard lock(mu);
    lines.push_back(l);
  });
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->WaitForState("warm", 10s).ok());
  (*r)->Kill();
  (*r)->CloseChannel();
  std::lock_guard lock(mu);
  EXPECT_EQ(lines, (std::vector<std::string>{"one", "two"}));
}

}  // namespace
}  // namespace hotboot
