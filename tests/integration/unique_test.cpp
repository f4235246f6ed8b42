// Every restored replica is unique (issue 12; server/CONTROL.md "Uniqueness"):
// restore hands each one a new instance id and fresh entropy, and the example
// servers reseed from it. Two replicas of one snapshot must answer different
// random values and ids, and neither what the build's process would have drawn
// next. The control case (a transparent snapshot without an after_restore
// hook) shows the hazard is real and that these checks see it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include "hotboot/http_client.h"
#include "hotboot/restore.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

using json = nlohmann::json;

bool IsHex(const std::string& s) { return s.find_first_not_of("0123456789abcdef") == std::string::npos; }

TEST(Unique, EveryIdentityIsFreshAndOnlyASeedMakesItRepeat) {
  RestoreOptions o;
  auto a = NewReplicaIdentity(o), b = NewReplicaIdentity(o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->entropy.size(), 64u);
  EXPECT_TRUE(IsHex(a->entropy)) << a->entropy;
  EXPECT_EQ(a->instance.rfind("r-", 0), 0u);
  EXPECT_EQ(a->instance.size(), 14u);
  EXPECT_NE(a->entropy, b->entropy);
  EXPECT_NE(a->instance, b->instance);
  // The instance id is public: it is not a piece of the entropy.
  EXPECT_EQ(a->entropy.find(a->instance.substr(2)), std::string::npos);
  // "seed" is the entropy's first 8 bytes, little-endian.
  uint64_t seed = 0;
  for (int i = 7; i >= 0; --i) seed = seed << 8 | std::stoul(a->entropy.substr(2 * i, 2), nullptr, 16);
  EXPECT_EQ(a->seed, seed);

  // The test/reproducibility override: the same seed, the same identity.
  o.seed = 42;
  auto c = NewReplicaIdentity(o), d = NewReplicaIdentity(o);
  ASSERT_TRUE(c.ok() && d.ok());
  EXPECT_EQ(c->entropy, d->entropy);
  EXPECT_EQ(c->instance, d->instance);
  o.seed = 43;
  EXPECT_NE(NewReplicaIdentity(o)->entropy, c->entropy);

  // An instance id goes into a JSON line and an HTTP header as is.
  o.instance = "r-fixed.1";
  EXPECT_EQ(NewReplicaIdentity(o)->instance, "r-fixed.1");
  for (const char* bad : {"r-x\r\nX-Evil: 1", "with space", "\xc3\xa9", "a/b"}) {
    o.instance = bad;
    auto r = NewReplicaIdentity(o);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  }
}

// ------------------------------------------------------------ reference server

TEST(Unique, ReferenceServerReplicasHaveTheirOwnIdentityAndRequestIds) {
  CmdResult in = RunCmd({Bin("hotboot"), "inspect", TinySnapshot(), "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  const json inspected = json::parse(in.out);
  EXPECT_EQ(inspected["after_restore"]["via"], "control");
  const std::string build_instance = inspected["manifest"]["server"]["instance"];
  ASSERT_FALSE(build_instance.empty());

  // Two replicas at once.
  const int ports[2] = {FreePort(), FreePort()};
  const std::string base = ScratchDir() + "/unique-ref.";
  pid_t cli[2];
  for (int i = 0; i < 2; ++i) {
    cli[i] = Spawn({Bin("hotboot"), "restore", TinySnapshot(), "--port", std::to_string(ports[i]), "--detach", "--json"},
                   base + std::to_string(i) + ".out", base + std::to_string(i) + ".err");
    ASSERT_GT(cli[i], 0);
  }
  pid_t replica[2] = {-1, -1};
  std::string instance[2];
  std::vector<std::string> ids[2];
  for (int i = 0; i < 2; ++i) {
    int st = 0;
    waitpid(cli[i], &st, 0);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << ReadFile(base + std::to_string(i) + ".err");
    const json out = json::parse(ReadFile(base + std::to_string(i) + ".out"), nullptr, false);
    ASSERT_TRUE(out.is_object());
    replica[i] = out.value("pid", -1);
    instance[i] = out.value("instance", "");
  }
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 4; ++k) {
      const json g = Generate(ports[i], "hello", 2);
      ASSERT_TRUE(g.is_object()) << "replica on port " << ports[i] << " did not answer";
      EXPECT_EQ(g.value("instance", ""), instance[i]);  // the id restore handed it
      const std::string id = g.value("id", "");
      EXPECT_EQ(id.size(), 16u);
      EXPECT_TRUE(IsHex(id)) << id;
      ids[i].push_back(id);
    }
  }
  EXPECT_NE(instance[0], instance[1]);
  EXPECT_NE(instance[0], build_instance);
  EXPECT_NE(instance[1], build_instance);
  // Request ids come from each replica's own RNG state: without the reseed
  // both would draw the same sequence from the state the snapshot froze.
  EXPECT_NE(ids[0], ids[1]);
  std::set<std::string> all(ids[0].begin(), ids[0].end());
  all.insert(ids[1].begin(), ids[1].end());
  EXPECT_EQ(all.size(), ids[0].size() + ids[1].size());
  for (pid_t p : replica) {
    if (p > 0) ::kill(p, SIGKILL);
  }
}

// ------------------------------------------------- http_model_server.py

std::string Python() {
  for (const char* p : {"/usr/bin/python3", "/bin/python3"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

// A transparent build of the example server, small (--vocab/--dim) to stay
// fast. Its /before-capture hook logs the values its random state would give
// next: what every replica would replay without /after-restore.
CmdResult BuildPy(const std::string& out, int port, const std::string& after_restore, const std::string& log) {
  std::vector<std::string> argv = {
      Bin("hotboot"), "build", "--out", out, "--json", "--port", std::to_string(port), "--canary-path", "/generate",
      "--canary-body", R"({"prompt":"The quick brown fox","max_tokens":4})", "--canary-compare", "/tokens",
      "--server-log", log, "--before-capture", "/before-capture"};
  if (!after_restore.empty()) {
    argv.push_back("--after-restore");
    argv.push_back(after_restore);
  }
  for (const std::string& a : {std::string("--"), Python(),
                               std::string(HOTBOOT_SOURCE_DIR) + "/tools/examples/http_model_server.py", std::string("--port"),
                               std::to_string(port), std::string("--vocab"), std::string("64"), std::string("--dim"),
                               std::string("16")}) {
    argv.push_back(a);
  }
  return RunCmd(argv);
}

// The build server's "before capture: {...}" log line.
json BuildValues(const std::string& log) {
  std::istringstream in(ReadFile(log));
  std::string line;
  const std::string marker = "before capture: ";
  while (std::getline(in, line)) {
    const size_t at = line.find(marker);
    if (at != std::string::npos) return json::parse(line.substr(at + marker.size()), nullptr, false);
  }
  return nullptr;
}

struct Drawn {
  json restored;  // hotboot restore --json
  json values;    // GET /random
};

// Restores a replica (on the build's port: one at a time), reads its random
// values and ends it.
Drawn RestoreAndDraw(const std::string& snap, int port) {
  Drawn d;
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--detach", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  d.restored = json::parse(r.out, nullptr, false);
  if (!d.restored.is_object()) return d;
  auto got = HttpRequest("127.0.0.1", port, "GET", "/random", "", std::chrono::seconds(30));
  EXPECT_TRUE(got.ok()) << got.status().ToString();
  if (got.ok()) d.values = json::parse(got->body, nullptr, false);
  const pid_t pid = d.restored.value("pid", -1);
  if (pid > 0) ::kill(pid, SIGKILL);
  // The next replica needs the port: wait (bounded) until this one is gone.
  for (int i = 0; i < 100 && pid > 0 && PidAlive(pid); ++i) ::usleep(50 * 1000);
  EXPECT_FALSE(pid > 0 && PidAlive(pid));
  return d;
}

TEST(Unique, PythonReplicasReseedThroughTheAfterRestoreHook) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const int port = FreePort();
  const std::string snap = ScratchDir() + "/unique-py.hbsnap", log = ScratchDir() + "/unique-py.log";
  CmdResult b = BuildPy(snap, port, "/after-restore", log);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_TRUE(json::parse(b.out)["warnings"].empty()) << b.out;
  EXPECT_EQ(b.err.find("warning:"), std::string::npos) << b.err;
  const json build = BuildValues(log);
  ASSERT_TRUE(build.is_object()) << ReadFile(log);
  ASSERT_EQ(build["random"].size(), 3u);

  CmdResult in = RunCmd({Bin("hotboot"), "inspect", snap, "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  const json inspected = json::parse(in.out);
  EXPECT_EQ(inspected["after_restore"]["via"], "http");
  EXPECT_EQ(inspected["after_restore"]["request"], "POST /after-restore");
  EXPECT_EQ(inspected["manifest"]["http"]["after_restore"]["path"], "/after-restore");
  CmdResult text = RunCmd({Bin("hotboot"), "inspect", snap});
  EXPECT_NE(text.out.find("after-restore POST /after-restore"), std::string::npos) << text.out;

  const Drawn r1 = RestoreAndDraw(snap, port);
  const Drawn r2 = RestoreAndDraw(snap, port);
  ASSERT_TRUE(r1.values.is_object() && r2.values.is_object());
  // Each replica took the instance id restore reports, and a boot id of its own.
  EXPECT_EQ(r1.values["instance"], r1.restored["instance"]);
  EXPECT_EQ(r2.values["instance"], r2.restored["instance"]);
  EXPECT_NE(r1.values["instance"], r2.values["instance"]);
  // Restore sent the identity twice, in the headers and merged into the
  // (empty, POST) body, and the two agreed (the server refuses otherwise).
  EXPECT_EQ(r1.values["identity_from"], json({"headers", "body"})) << r1.values;
  EXPECT_NE(r1.values["boot_id"], r2.values["boot_id"]);
  EXPECT_NE(r1.values["boot_id"], build["boot_id"]);
  EXPECT_NE(r2.values["boot_id"], build["boot_id"]);
  // Python's random: different in each, and not what the build would have drawn next.
  EXPECT_NE(r1.values["random"], r2.values["random"]);
  EXPECT_NE(r1.values["random"], build["random"]);
  EXPECT_NE(r2.values["random"], build["random"]);
  if (!build["numpy"].is_null()) {  // NumPy when the host has it (tools/install-deps installs it)
    EXPECT_NE(r1.values["numpy"], r2.values["numpy"]);
    EXPECT_NE(r1.values["numpy"], build["numpy"]);
    EXPECT_NE(r2.values["numpy"], build["numpy"]);
  }
}

// The control: without the hook the hazard is there, build says so, inspect
// shows it, and the same checks see replicas replay the build's state.
TEST(Unique, WithoutAHookBuildWarnsInspectSaysNoneAndReplicasShareTheBuildsState) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const int port = FreePort();
  const std::string snap = ScratchDir() + "/unique-nohook.hbsnap", log = ScratchDir() + "/unique-nohook.log";
  CmdResult b = BuildPy(snap, port, "", log);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const json warnings = json::parse(b.out)["warnings"];
  ASSERT_EQ(warnings.size(), 1u) << b.out;
  EXPECT_NE(warnings[0].get<std::string>().find("no after_restore hook"), std::string::npos) << warnings;
  EXPECT_NE(b.err.find("hotboot: warning: this transparent snapshot has no after_restore hook"), std::string::npos)
      << b.err;
  const json build = BuildValues(log);
  ASSERT_TRUE(build.is_object()) << ReadFile(log);

  CmdResult in = RunCmd({Bin("hotboot"), "inspect", snap, "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  const json inspected = json::parse(in.out);
  EXPECT_EQ(inspected["after_restore"]["via"], "none");
  EXPECT_FALSE(inspected["manifest"]["http"].contains("after_restore"));
  CmdResult text = RunCmd({Bin("hotboot"), "inspect", snap});
  EXPECT_NE(text.out.find("after-restore none — replicas restored from this snapshot share the build's random state"),
            std::string::npos)
      << text.out;

  const Drawn r1 = RestoreAndDraw(snap, port);
  const Drawn r2 = RestoreAndDraw(snap, port);
  ASSERT_TRUE(r1.values.is_object() && r2.values.is_object());
  EXPECT_EQ(r1.values["random"], build["random"]);
  EXPECT_EQ(r2.values["random"], build["random"]);
  EXPECT_EQ(r1.values["boot_id"], build["boot_id"]);
  EXPECT_EQ(r2.values["numpy"], build["numpy"]);
}

// A hook that fails leaves the replica not ready (exit 5), and ended.
TEST(Unique, AFailingAfterRestoreHookIsNotReady) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const int port = FreePort();
  const std::string snap = ScratchDir() + "/unique-badhook.hbsnap";
  CmdResult b = BuildPy(snap, port, "/no-such-hook", ScratchDir() + "/unique-badhook.log");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--detach", "--json"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_NE(r.err.find("after_restore hook POST /no-such-hook answered 404"), std::string::npos) << r.err;
  // Nothing is left serving on the port.
  EXPECT_FALSE(HttpRequest("127.0.0.1", port, "GET", "/health", "", std::chrono::seconds(2)).ok());
}

}  // namespace
}  // namespace hotboot::test
