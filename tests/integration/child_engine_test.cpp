// A server whose compute runs in a child process (the way vLLM's engine core
// does: tools/examples/engine_server.py, an HTTP front and an engine child
// talking over a Unix socketpair) built transparently with the real CRIU and
// restored whole: both processes, the engine still the front's child, the
// cold server's greedy tokens, and nothing left once the supervisor is killed.
// The Hugging Face example (hf_server.py, hf_mkmodel.py) needs torch and
// transformers, which this host lacks: here they must parse and say so.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "hotboot/http_client.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kCanary = R"({"prompt":"The quick brown fox","max_tokens":8})";
const std::string kOther = R"({"prompt":"a prompt the canary never sent","max_tokens":12})";

std::string Python() { return ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : ""; }
std::string Example(const std::string& name) { return std::string(HOTBOOT_SOURCE_DIR) + "/tools/examples/" + name; }

// The CPU engine is NumPy (Debian's python3-numpy, in tools/install-deps).
bool HasNumpy() { return !Python().empty() && RunCmd({Python(), "-c", "import numpy"}).exit_code == 0; }

pid_t ParentOf(pid_t pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t rp = stat.rfind(')');
  char state = 0;
  int ppid = -1;
  if (rp == std::string::npos || std::sscanf(stat.c_str() + rp + 1, " %c %d", &state, &ppid) != 2) return -1;
  return ppid;
}

// Live children of `parent` (host pids).
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t p = std::stoi(name);
    if (ParentOf(p) == parent && PidAlive(p)) out.push_back(p);
  }
  return out;
}

// The pid `pid` has in its own PID namespace (the last NSpid field): what
// the server itself reports when restore runs it in a namespace of its own.
pid_t InnermostPid(pid_t pid) {
  const std::string status = ReadFile("/proc/" + std::to_string(pid) + "/status");
  const size_t at = status.find("NSpid:");
  if (at == std::string::npos) return -1;
  const std::string line = status.substr(at + 6, status.find('\n', at) - at - 6);
  const size_t last = line.find_last_of(" \t");
  return std::stoi(last == std::string::npos ? line : line.substr(last + 1));
}

std::string Cmdline(pid_t pid) {
  std::string cmd = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  for (char& c : cmd) c = c == '\0' ? ' ' : c;
  return cmd;
}

json Call(int port, const std::string& method, const std::string& path, const std::string& body = "") {
  auto r = HttpRequest("127.0.0.1", port, method, path, body, std::chrono::seconds(30));
  if (!r.ok()) return json{{"transport_error", r.status().ToString()}};
  json j = json::parse(r->body, nullptr, false);
  if (!j.is_object()) return json{{"bad_body", r->body}};
  j["http_status"] = r->status;
  return j;
}

// Ends a supervising restore the test has not reaped yet (its replica goes
// with it), so that a failed assertion leaves no replica behind.
struct ReapOnExit {
  pid_t pid;
  ~ReapOnExit() {
    if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

// A cold engine_server, outside hotboot: its answers are what a restore must give.
struct ColdAnswers {
  json canary, other;
};
ColdAnswers ColdServer() {
  const int port = FreePort();
  const std::string log = ScratchDir() + "/child-engine-cold";
  const pid_t front = Spawn({Python(), Example("engine_server.py"), "--port", std::to_string(port), "--device", "cpu"},
                            log + ".out", log + ".err");
  ColdAnswers a;
  if (front < 0) return a;
  for (int i = 0; i < 300 && HttpStatus(port, "/health") != 200; ++i) ::usleep(50 * 1000);
  a.canary = Call(port, "POST", "/generate", kCanary);
  a.other = Call(port, "POST", "/generate", kOther);
  const json health = Call(port, "GET", "/health");
  ::kill(front, SIGTERM);
  ::waitpid(front, nullptr, 0);
  // The engine reads end-of-file once its front is gone, and exits.
  if (health.contains("engine_pid")) {
    const pid_t engine = health["engine_pid"].get<pid_t>();
    for (int i = 0; i < 100 && PidAlive(engine); ++i) ::usleep(20 * 1000);
    EXPECT_FALSE(PidAlive(engine)) << "the cold engine outlived its front";
  }
  return a;
}

// engine_server.py on the CPU, built transparently once per test process.
struct EngineSnap {
  std::string path;
  int port = 0;
  CmdResult build;
};
const EngineSnap& EngineSnapshot() {
  static const EngineSnap s = [] {
    EngineSnap e{ScratchDir() + "/child-engine.hbsnap", FreePort(), {}};
    e.build = RunCmd({Bin("hotboot"), "build", "--out", e.path, "--json", "--port", std::to_string(e.port),
                      "--canary-path", "/generate", "--canary-body", kCanary, "--canary-compare", "/tokens",
                      "--after-restore", "/after-restore", "--", Python(), Example("engine_server.py"), "--port",
                      std::to_string(e.port), "--device", "cpu"});
    return e;
  }();
  return s;
}

TEST(ChildEngine, FrontAndEngineChildAreBuiltAndRestoredWhole) {
  if (!HasNumpy()) GTEST_SKIP() << "no python3 with NumPy here";
  const ColdAnswers cold = ColdServer();
  ASSERT_EQ(cold.canary.value("http_status", 0), 200) << cold.canary;
  ASSERT_EQ(cold.other.value("http_status", 0), 200) << cold.other;

  const EngineSnap& built_snap = EngineSnapshot();
  const CmdResult& b = built_snap.build;
  const std::string& snap = built_snap.path;
  const int port = built_snap.port;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  json built = json::parse(b.out);
  EXPECT_TRUE(built["warnings"].empty()) << built["warnings"];
  CmdResult in = RunCmd({Bin("hotboot"), "inspect", snap, "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  const json expected = json::parse(in.out)["manifest"]["warm"]["canary"]["expected"];
  EXPECT_EQ(expected, cold.canary["tokens"]) << "the build's canary differs from a cold server's";
  EXPECT_EQ(HttpStatus(port, "/health"), -1) << "the build left its server listening";

  // Supervised, as a container entrypoint runs it.
  const std::string log = ScratchDir() + "/child-engine-restore";
  const pid_t r = Spawn({Bin("hotboot"), "restore", snap, "--json"}, log + ".out", log + ".err");
  ASSERT_GT(r, 0);
  const ReapOnExit reap{r};
  ASSERT_TRUE(WaitForText(r, log + ".err", "] ready", 120)) << ReadFile(log + ".err");
  for (int i = 0; i < 200 && ReadFile(log + ".out").empty(); ++i) ::usleep(5 * 1000);
  const json res = json::parse(ReadFile(log + ".out"), nullptr, false);
  ASSERT_TRUE(res.is_object()) << ReadFile(log + ".out") << ReadFile(log + ".err");
  EXPECT_EQ(res["port"], port);
  const pid_t front = res["pid"].get<pid_t>();

  // Both processes came back, the engine still the front's child. The pids
  // the server reports are its own namespace's when restore gave it one.
  const json health = Call(port, "GET", "/health");
  ASSERT_EQ(health.value("http_status", 0), 200) << health;
  EXPECT_EQ(health["engine"], "numpy");
  ASSERT_TRUE(PidAlive(front));
  EXPECT_EQ(health["front_pid"], InnermostPid(front));
  const std::vector<pid_t> children = ChildrenOf(front);
  ASSERT_EQ(children.size(), 1u) << "the front has one child, its engine";
  const pid_t engine = children[0];
  EXPECT_NE(Cmdline(engine).find("--engine-fd"), std::string::npos) << Cmdline(engine);
  EXPECT_EQ(health["engine_pid"], InnermostPid(engine));
  const std::string cg = res.value("cgroup", "");
  ASSERT_FALSE(cg.empty());
  EXPECT_EQ(ReadFile("/proc/" + std::to_string(engine) + "/cgroup"),
            ReadFile("/proc/" + std::to_string(front) + "/cgroup"));

  // The restore's hook reached the engine through the front.
  const json rnd = Call(port, "GET", "/random");
  ASSERT_EQ(rnd.value("http_status", 0), 200) << rnd;
  EXPECT_TRUE(rnd["instance"].is_string()) << rnd;
  EXPECT_TRUE(rnd["engine"].contains("boot_id")) << rnd;

  // The cold server's greedy tokens, for the canary and for a prompt it never saw.
  const json canary = Call(port, "POST", "/generate", kCanary);
  EXPECT_EQ(canary["tokens"], cold.canary["tokens"]) << canary;
  const json other = Call(port, "POST", "/generate", kOther);
  ASSERT_EQ(other.value("http_status", 0), 200) << other;
  EXPECT_EQ(other["tokens"], cold.other["tokens"]);
  EXPECT_EQ(other["tokens"].size(), 12u);

  // Killing the supervisor ends the replica's whole tree.
  ::kill(r, SIGKILL);
  ::waitpid(r, nullptr, 0);
  for (int i = 0; i < 200 && (PidAlive(front) || PidAlive(engine) || fs::exists(cg)); ++i) ::usleep(10 * 1000);
  EXPECT_FALSE(PidAlive(front)) << "the front outlived its supervisor";
  EXPECT_FALSE(PidAlive(engine)) << "the engine outlived its supervisor";
  EXPECT_FALSE(fs::exists(cg)) << "the replica's cgroup is left: " << cg;
  EXPECT_EQ(HttpStatus(port, "/health"), -1);
}

// The engine dies after a restore (a CUDA fault, the OOM killer): the
// restored front notices it (its wait on the child came back with it), exits,
// and the supervising restore ends with its replica, leaving nothing.
TEST(ChildEngine, ARestoredEngineThatDiesTakesTheReplicaDown) {
  if (!HasNumpy()) GTEST_SKIP() << "no python3 with NumPy here";
  const EngineSnap& snap = EngineSnapshot();
  ASSERT_EQ(snap.build.exit_code, 0) << snap.build.err;
  const std::string log = ScratchDir() + "/child-engine-dies";
  const pid_t r = Spawn({Bin("hotboot"), "restore", snap.path, "--json"}, log + ".out", log + ".err");
  ASSERT_GT(r, 0);
  const ReapOnExit reap{r};
  ASSERT_TRUE(WaitForText(r, log + ".err", "] ready", 120)) << ReadFile(log + ".err");
  for (int i = 0; i < 200 && ReadFile(log + ".out").empty(); ++i) ::usleep(5 * 1000);
  const json res = json::parse(ReadFile(log + ".out"), nullptr, false);
  ASSERT_TRUE(res.is_object()) << ReadFile(log + ".out");
  const pid_t front = res["pid"].get<pid_t>();
  const std::vector<pid_t> children = ChildrenOf(front);
  ASSERT_EQ(children.size(), 1u);
  const std::string cg = res.value("cgroup", "");
  ::kill(children[0], SIGKILL);
  int st = 0;
  pid_t w = 0;
  for (int i = 0; i < 500 && (w = ::waitpid(r, &st, WNOHANG)) == 0; ++i) ::usleep(10 * 1000);
  ASSERT_EQ(w, r) << "the supervising restore still runs 5 s after its replica's engine died";
  EXPECT_FALSE(PidAlive(front));
  EXPECT_NE(ReadFile(log + ".err").find("the engine (pid"), std::string::npos) << ReadFile(log + ".err");
  for (int i = 0; i < 200 && !cg.empty() && fs::exists(cg); ++i) ::usleep(10 * 1000);
  EXPECT_FALSE(!cg.empty() && fs::exists(cg)) << "the replica's cgroup is left: " << cg;
  EXPECT_EQ(HttpStatus(snap.port, "/health"), -1);
}

// The Hugging Face scripts cannot run here (no torch, no transformers): they
// must parse, answer --help without them, and say what is missing.
TEST(ChildEngine, HuggingFaceScriptsParseAndNameWhatTheyLack) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  for (const char* script : {"hf_server.py", "hf_mkmodel.py", "engine_server.py"}) {
    // compile(), not py_compile: nothing is written into the source tree.
    CmdResult c = RunCmd({Python(), "-c", "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')",
                          Example(script)});
    EXPECT_EQ(c.exit_code, 0) << script << ": " << c.err;
    CmdResult h = RunCmd({Python(), Example(script), "--help"});
    EXPECT_EQ(h.exit_code, 0) << script << ": " << h.err;
    EXPECT_NE(h.out.find("hotboot build"), std::string::npos) << script << ": --help shows how to build it";
  }
  if (RunCmd({Python(), "-c", "import torch, transformers"}).exit_code == 0) return;  // a host that has them
  const std::string dir = ScratchDir() + "/hf-model";
  fs::remove_all(dir);  // a repeated run's
  CmdResult mk = RunCmd({Python(), Example("hf_mkmodel.py"), "--shape", "1b", "--out", dir, "--device", "cpu"});
  EXPECT_EQ(mk.exit_code, 2) << mk.err;
  EXPECT_NE(mk.err.find("needs torch and transformers"), std::string::npos) << mk.err;
  EXPECT_EQ(mk.err.find("Traceback"), std::string::npos) << mk.err;
  EXPECT_FALSE(fs::exists(dir));
  fs::create_directories(dir);
  WriteFile(dir + "/config.json", R"({"model_type":"llama"})");  // it checks for one before importing
  CmdResult sv = RunCmd({Python(), Example("hf_server.py"), "--model", dir, "--port", std::to_string(FreePort()),
                         "--device", "cpu"});
  EXPECT_EQ(sv.exit_code, 2) << sv.err;
  EXPECT_NE(sv.err.find("needs torch and transformers"), std::string::npos) << sv.err;
  EXPECT_EQ(sv.err.find("Traceback"), std::string::npos) << sv.err;
  // Bad arguments are refused before any import.
  CmdResult bad = RunCmd({Python(), Example("hf_mkmodel.py"), "--shape", "70b", "--out", dir});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--shape"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace hotboot::test
