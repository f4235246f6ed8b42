// The spine, end to end with the real CRIU: build a snapshot of the warm
// reference server, inspect and verify it, restore replicas that answer
// exactly what the build recorded.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "test_util.h"

namespace hotboot::test {
namespace {

using json = nlohmann::json;

json Manifest() {
  CmdResult r = RunCmd({Bin("hotboot"), "inspect", TinySnapshot(), "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return json::parse(r.out, nullptr, false);
}

TEST(Spine, BuildWritesASnapshotThatInspectsAndVerifies) {
  json j = Manifest();
  ASSERT_TRUE(j.is_object());
  EXPECT_GT(j["file_bytes"].get<uint64_t>(), 0u);
  bool has_pages = false;
  for (const auto& s : j["sections"]) {
    if (s["name"].get<std::string>().rfind("criu/pages-", 0) == 0) has_pages = true;
  }
  EXPECT_TRUE(has_pages) << j["sections"].dump();
  const json& m = j["manifest"];
  EXPECT_EQ(m["warm"]["digest"].get<std::string>().size(), 32u);
  EXPECT_FALSE(m["warm"]["canary"]["tokens"].empty());
  EXPECT_GE(m["criu"]["version"].get<std::string>(), "4");

  CmdResult human = RunCmd({Bin("hotboot"), "inspect", TinySnapshot()});
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_NE(human.out.find("CRIU"), std::string::npos);
  EXPECT_NE(human.out.find("canary"), std::string::npos);

  CmdResult v = RunCmd({Bin("hotboot"), "verify", TinySnapshot()});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_NE(v.out.find("OK"), std::string::npos);
}

struct Restored {
  pid_t pid = -1;
  int port = 0;
  json out;
};

Restored RestoreDetached(int port) {
  CmdResult r = RunCmd({Bin("hotboot"), "restore", TinySnapshot(), "--port", std::to_string(port), "--detach", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  Restored res;
  res.out = json::parse(r.out, nullptr, false);
  if (res.out.is_object()) {
    res.pid = res.out.value("pid", -1);
    res.port = res.out.value("port", 0);
  }
  return res;
}

void Stop(pid_t pid) {
  if (pid > 0) kill(pid, SIGKILL);
}

TEST(Spine, RestoredReplicaIsReadyAndAnswersTheCanary) {
  const json m = Manifest()["manifest"];
  int port = FreePort();
  Restored r = RestoreDetached(port);
  ASSERT_GT(r.pid, 0) << r.out.dump();
  EXPECT_EQ(r.port, port);
  EXPECT_GT(r.out["time_to_ready_ms"].get<double>(), 0.0);
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  EXPECT_EQ(HttpStatus(port, "/livez"), 200);
  json g = Generate(port, m["warm"]["canary"]["prompt"], m["warm"]["canary"]["max_tokens"]);
  ASSERT_TRUE(g.is_object());
  EXPECT_EQ(g["tokens"], m["warm"]["canary"]["tokens"]);
  EXPECT_EQ(g["text"], m["warm"]["canary"]["text"]);
  // A new identity, not the build's.
  EXPECT_NE(g.value("instance", ""), m["server"]["instance"].get<std::string>());
  Stop(r.pid);
}

TEST(Spine, WeightsTravelInTheSnapshotAndAreMappedNotCopied) {
  const json m = Manifest()["manifest"];
  ASSERT_EQ(m["process"]["provided_files"].size(), 1u) << m["process"].dump();
  // Provided files are named by content hash in the weights directory (issue 12).
  const std::string weights = m["process"]["weights_dir"].get<std::string>() + "/" +
                              m["process"]["provided_files"][0]["name"].get<std::string>();
  // A fresh host has no weights file: restore extracts it from the snapshot.
  unlink(weights.c_str());
  int port = FreePort();
  Restored r = RestoreDetached(port);
  ASSERT_GT(r.pid, 0);
  EXPECT_GT(ReadFile(weights).size(), 0u);
  // The replica maps the file shared and read-only instead of holding a copy.
  std::string maps = ReadFile("/proc/" + std::to_string(r.pid) + "/maps");
  size_t at = maps.find(weights);
  ASSERT_NE(at, std::string::npos) << maps;
  size_t line = maps.rfind('\n', at);
  std::string entry = maps.substr(line == std::string::npos ? 0 : line + 1, at - (line == std::string::npos ? 0 : line + 1));
  EXPECT_NE(entry.find(" r--s "), std::string::npos) << entry;
  EXPECT_EQ(Generate(port, m["warm"]["canary"]["prompt"], m["warm"]["canary"]["max_tokens"])["tokens"],
            m["warm"]["canary"]["tokens"]);
  Stop(r.pid);
}

TEST(Spine, ThreeReplicasFromOneSnapshotAtOnce) {
  const json m = Manifest()["manifest"];
  int ports[3] = {FreePort(), FreePort(), FreePort()};
  pid_t cli[3];
  std::string base = ScratchDir() + "/three.";
  for (int i = 0; i < 3; ++i) {
    cli[i] = Spawn({Bin("hotboot"), "restore", TinySnapshot(), "--port", std::to_string(ports[i]), "--detach", "--json"},
                   base + std::to_string(i) + ".out", base + std::to_string(i) + ".err");
    ASSERT_GT(cli[i], 0);
  }
  pid_t replicas[3];
  for (int i = 0; i < 3; ++i) {
    int st = 0;
    waitpid(cli[i], &st, 0);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << ReadFile(base + std::to_string(i) + ".err");
    json out = json::parse(ReadFile(base + std::to_string(i) + ".out"), nullptr, false);
    replicas[i] = out.value("pid", -1);
    EXPECT_EQ(out.value("port", 0), ports[i]);
  }
  EXPECT_NE(replicas[0], replicas[1]);
  EXPECT_NE(replicas[1], replicas[2]);
  // Independent: each answers its own prompt, and the canary the same as at build.
  const char* prompts[3] = {"hello", "what is a tensor?", "Tell me a story about three ports"};
  json answers[3];
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] { answers[i] = Generate(ports[i], prompts[i], 8); });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> instances;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(answers[i].is_object()) << "replica on port " << ports[i] << " did not answer";
    instances.insert(answers[i].value("instance", ""));
    json again = Generate(ports[(i + 1) % 3], prompts[i], 8);  // same prompt, another replica
    EXPECT_EQ(again["tokens"], answers[i]["tokens"]);
    EXPECT_EQ(Generate(ports[i], m["warm"]["canary"]["prompt"], m["warm"]["canary"]["max_tokens"])["tokens"],
              m["warm"]["canary"]["tokens"]);
  }
  EXPECT_EQ(instances.size(), 3u);
  for (pid_t p : replicas) Stop(p);
}

// The path GPU hosts take (CUDA does not initialise in a PID namespace that
// sees the host's /proc): the tree keeps its PIDs, and a restore where they
// are taken is refused before anything is touched.
TEST(Spine, WithoutAPidNamespaceRestoreNeedsThePidsFree) {
  const std::string snap = ScratchDir() + "/nopidns.hbsnap";
  CmdResult b = RunCmd({Bin("hotboot"), "build", "-o", snap, "-m", TinyModel(), "--pid-namespace", "off", "--json"});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  CmdResult in = RunCmd({Bin("hotboot"), "inspect", snap, "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  const json process = json::parse(in.out)["manifest"]["process"];
  EXPECT_EQ(process["pid_namespace"], false);
  ASSERT_FALSE(process["pids"].empty());

  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const pid_t pid = json::parse(r.out)["pid"].get<pid_t>();
  const auto pids = process["pids"].get<std::vector<pid_t>>();
  EXPECT_NE(std::find(pids.begin(), pids.end(), pid), pids.end());  // the root comes back as itself
  EXPECT_TRUE(Generate(port, "hello", 4).is_object());

  // The first replica holds the PIDs: a second one cannot be, and says why.
  CmdResult again = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(FreePort()), "--detach"});
  EXPECT_EQ(again.exit_code, 3) << again.err;
  EXPECT_NE(again.err.find("in use on this host"), std::string::npos) << again.err;
  EXPECT_TRUE(Generate(port, "hello", 4).is_object());  // and the first one is untouched
  Stop(pid);
}

TEST(Spine, SupervisedRestoreForwardsSigterm) {
  int port = FreePort();
  std::string base = ScratchDir() + "/supervised.";
  pid_t cli = Spawn({Bin("hotboot"), "restore", TinySnapshot(), "--port", std::to_string(port), "--json"},
                    base + "out", base + "err");
  ASSERT_GT(cli, 0);
  json out;
  for (int i = 0; i < 600 && !out.is_object(); ++i) {
    usleep(100 * 1000);
    std::string s = ReadFile(base + "out");
    if (!s.empty() && s.back() == '\n') out = json::parse(s, nullptr, false);
  }
  ASSERT_TRUE(out.is_object()) << ReadFile(base + "err");
  pid_t replica = out["pid"];
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  kill(cli, SIGTERM);
  int st = 0;
  waitpid(cli, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << ReadFile(base + "err");
  EXPECT_FALSE(PidAlive(replica));
  EXPECT_EQ(HttpStatus(port, "/livez"), -1);
}

}  // namespace
}  // namespace hotboot::test
