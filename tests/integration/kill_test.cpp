// kill -9 of `hotboot build` and `hotboot restore` at each phase they
// announce, with the real CRIU and real servers (issue 12, containment):
// within 1 s nothing of the job runs (its cgroup is gone, no pid of its
// tree lives, no process carries the test's server command), nothing new is
// left in /dev/shm or the test's TMPDIR, and what a kill at the worst moment
// leaves (the janitor killed too) is swept by the next build or restore.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hotboot/cgroup.h"
#include "hotboot/http_client.h"
#include "hotboot/job.h"
#include "test_util.h"

extern char** environ;

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string& TestTmp() {
  static std::string d = [] {
    std::string p = ScratchDir() + "/kill-tmp";
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// Spawn with TMPDIR pointed at the test's own directory (and, for builds,
// the server's weights directory at one of the test's).
pid_t SpawnJob(const std::vector<std::string>& argv, const std::string& log, bool build) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string v = *e;
    if (v.rfind("TMPDIR=", 0) == 0 || (build && v.rfind("HOTBOOT_WEIGHTS_DIR=", 0) == 0)) continue;
    env.push_back(v);
  }
  env.push_back("TMPDIR=" + TestTmp());
  if (build) {
    fs::create_directories(ScratchDir() + "/kill-weights");
    env.push_back("HOTBOOT_WEIGHTS_DIR=" + ScratchDir() + "/kill-weights");
  }
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (auto& v : env) envp.push_back(v.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, (log + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &fa, nullptr, args.data(), envp.data()) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

// Live (not zombie) processes whose command line holds `marker`.
std::vector<pid_t> ProcessesWith(const std::string& marker) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = ReadFile(e.path().string() + "/cmdline");
    for (char& c : cmd) c = c == '\0' ? ' ' : c;
    const pid_t p = std::stoi(name);
    if (cmd.find(marker) != std::string::npos && p != getpid() && PidAlive(p)) out.push_back(p);
  }
  return out;
}

// The job cgroups of the hotboot process `owner` (they carry its pid).
std::vector<std::string> CgroupsOf(pid_t owner) {
  std::vector<std::string> out;
  auto parent = host::OwnCgroupDir();
  if (!parent.ok()) return out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(*parent, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(host::kCgroupPrefix, 0) == 0 && n.find("." + std::to_string(owner) + ".") != std::string::npos) {
      out.push_back(e.path().string());
    }
  }
  return out;
}

// The janitor of hotboot process `owner`: its child named hotboot-janitor.
pid_t JanitorOf(pid_t owner) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = ReadFile(e.path().string() + "/stat");
    const size_t rp = stat.rfind(')');
    if (stat.find("(hotboot-janitor)") == std::string::npos || rp == std::string::npos) continue;
    int ppid = 0;
    char state;
    if (sscanf(stat.c_str() + rp + 1, " %c %d", &state, &ppid) == 2 && ppid == owner) return std::stoi(name);
  }
  return -1;
}

std::set<std::string> Listing(const std::string& dir) {
  std::set<std::string> s;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) s.insert(e.path().filename().string());
  return s;
}

// What a job left: new entries in its TMPDIR, entries of /dev/shm and of
// the output's directory naming its pid or its output, its journal.
struct Before {
  std::set<std::string> tmp, shm;
};
Before Look() { return {Listing(TestTmp()), Listing("/dev/shm")}; }

std::vector<std::string> LeftBehind(const Before& b, pid_t job, const std::string& out) {
  std::vector<std::string> left;
  const std::string tag = "." + std::to_string(job);
  for (const auto& n : Listing(TestTmp())) {
    if (!b.tmp.count(n)) left.push_back(TestTmp() + "/" + n);
  }
  for (const auto& n : Listing("/dev/shm")) {
    if (!b.shm.count(n) && n.find(tag) != std::string::npos) left.push_back("/dev/shm/" + n);
  }
  if (!out.empty()) {
    const fs::path o(out);
    for (const auto& n : Listing(o.parent_path().string())) {
      if (n.rfind(o.filename().string() + ".tmp.", 0) == 0 || n.find(".hotboot-build.") != std::string::npos) {
        left.push_back(n);
      }
    }
  }
  for (const auto& n : Listing(std::string(host::kDefaultStateDir) + "/jobs")) {
    if (n.rfind(std::to_string(job) + ".", 0) == 0) left.push_back("journal " + n);
  }
  return left;
}

// After a kill -9 of `job`: within 1 s its cgroups are gone and no process
// with `marker` (or in `pids`) lives. Returns the milliseconds it took.
double ExpectNothingRunsWithin1s(pid_t job, const std::string& marker, const std::vector<pid_t>& pids,
                                 const std::string& what, Clock::time_point killed) {
  auto running = [&] {
    if (!CgroupsOf(job).empty() || !ProcessesWith(marker).empty()) return true;
    for (pid_t p : pids) {
      if (PidAlive(p)) return true;
    }
    return false;
  };
  while (running() && Clock::now() - killed < std::chrono::milliseconds(1000)) usleep(5 * 1000);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - killed).count();
  EXPECT_TRUE(CgroupsOf(job).empty()) << what << ": a job cgroup is left 1 s after the kill";
  for (pid_t p : ProcessesWith(marker)) ADD_FAILURE() << what << ": pid " << p << " (" << marker << ") still runs";
  for (pid_t p : pids) EXPECT_FALSE(PidAlive(p)) << what << ": pid " << p << " still runs";
  return ms;
}

void KillNine(pid_t p) {
  kill(p, SIGKILL);
  waitpid(p, nullptr, 0);
}

std::string Python() { return ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : ""; }

std::string TransparentSpec(int port, const std::string& tag, const std::string& pidfile) {
  const std::string path = ScratchDir() + "/" + tag + ".spec.json";
  json spec = {{"command",
                {Python(), std::string(HOTBOOT_SOURCE_DIR) + "/tests/integration/setsid_server.py", "--port",
                 std::to_string(port), "--tag", tag, "--pidfile", pidfile, "--load-seconds", "0.6"}},
               {"ready_timeout_s", 30},
               {"http",
                {{"port", port},
                 {"ready_path", "/health"},
                 {"canary", {{"method", "GET"}, {"path", "/canary"}}},
                 {"warmup", {{{"method", "GET"}, {"path", "/warm"}}}},
                 {"before_capture", {{"method", "POST"}, {"path", "/before-capture"}}},
                 {"after_restore", {{"method", "POST"}, {"path", "/after-restore"}}}}}};
  WriteFile(path, spec.dump());
  return path;
}

// The phases `hotboot build` announces (tools/cli_build.cpp) and what each
// kill stands for.
const std::vector<std::pair<std::string, std::string>> kBuildPhases = {
    {"loading", "waiting until it is warm"},
    {"warmup", "running the build spec's warmup"},
    {"quiesce", "quiescing"},
    {"dump", "dumping the process with CRIU"},
    {"pack", "packing the snapshot"},
};

TEST(Kill, BuildKilledAtEachPhaseLeavesNoServerAndNoTemporary) {
  int n = 0;
  for (const bool transparent : {false, true}) {
    if (transparent && Python().empty()) continue;
    for (const auto& [phase, text] : kBuildPhases) {
      const std::string tag = std::string("kill-build-") + (transparent ? "t-" : "c-") + phase + "-" +
                              std::to_string(getpid());
      const std::string out = ScratchDir() + "/" + tag + ".hbsnap";
      const std::string log = ScratchDir() + "/" + tag + ".err";
      const std::string pidfile = ScratchDir() + "/" + tag + ".pids";
      std::vector<std::string> argv = {Bin("hotboot"), "build", "--out", out};
      std::string marker;
      if (transparent) {
        argv.insert(argv.end(), {"--spec", TransparentSpec(FreePort(), tag, pidfile)});
        marker = "--tag " + tag;
      } else {
        // A model file of its own: its path marks this case's server.
        const std::string model = ScratchDir() + "/" + tag + ".safetensors";
        fs::create_hard_link(TinyModel(), model);
        argv.insert(argv.end(), {"--model", model});
        marker = model;
      }
      const Before before = Look();
      const pid_t b = SpawnJob(argv, log, /*build=*/true);
      ASSERT_GT(b, 0);
      if (!WaitForText(b, log, text, 120)) {
        ADD_FAILURE() << tag << ": the build ended before phase " << phase << ":\n" << ReadFile(log);
        continue;
      }
      // The server, and (transparent) its helper that left its session
      // (forked once Python has started: give it up to 2 s while loading).
      const size_t want = phase == "pack" ? 0 : transparent ? 2 : 1;
      std::vector<pid_t> pids = ProcessesWith(marker);
      for (int i = 0; i < 400 && pids.size() < want; ++i) {
        usleep(5 * 1000);
        pids = ProcessesWith(marker);
      }
      if (phase != "pack") {
        EXPECT_GE(pids.size(), want) << tag << ": servers found by " << marker;
      }
      if (transparent && pids.size() >= 2) {
        EXPECT_NE(getsid(pids[0]), getsid(pids[1])) << tag << ": the helper did not setsid()";
      }
      const auto t0 = Clock::now();
      KillNine(b);
      const double ms = ExpectNothingRunsWithin1s(b, marker, pids, tag, t0);
      // The janitor has exited once it cleaned (bounded wait: it is not ours to reap).
      for (int i = 0; i < 200 && !LeftBehind(before, b, out).empty(); ++i) usleep(5 * 1000);
      for (const auto& l : LeftBehind(before, b, out)) ADD_FAILURE() << tag << ": left behind " << l;
      EXPECT_FALSE(fs::exists(out)) << tag;
      RecordProperty(tag + "_ms", std::to_string(ms));
      std::printf("  %s: nothing runs %.0f ms after kill -9\n", tag.c_str(), ms);
      ++n;
    }
  }
  EXPECT_GE(n, 5);
}

// The restore phases (restore/src/restore.cpp), then its supervision.
TEST(Kill, SupervisedRestoreKilledAtEachPhaseLeavesNoReplica) {
  const std::string snap = TinySnapshot();
  for (const char* phase : {"open", "unpack", "weights", "criu-restore", "after-restore", "verify", "ready"}) {
    const int port = FreePort();
    const std::string log = ScratchDir() + "/kill-restore." + phase + ".err";
    const int servers_before = static_cast<int>(ProcessesWith(TinyModel()).size());
    const Before before = Look();
    const pid_t r = SpawnJob({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--json"}, log, false);
    ASSERT_GT(r, 0);
    if (!WaitForText(r, log, std::string("] ") + phase, 120)) {
      ADD_FAILURE() << "restore ended before phase " << phase << ":\n" << ReadFile(log);
      continue;
    }
    std::vector<pid_t> pids;
    if (std::string(phase) == "ready") {
      // Killed while it supervises a verified replica: the replica dies with it.
      for (int i = 0; i < 200 && ReadFile(log + ".out").empty(); ++i) usleep(5 * 1000);
      json res = json::parse(ReadFile(log + ".out"), nullptr, false);
      ASSERT_TRUE(res.is_object()) << ReadFile(log + ".out");
      pids.push_back(res["pid"].get<pid_t>());
      ASSERT_TRUE(PidAlive(pids[0]));
      const std::string cg = res.value("cgroup", "");
      ASSERT_FALSE(cg.empty()) << "a supervised replica runs in a cgroup of its own";
      // The restored server is in it (CRIU restored it there), not in ours.
      const std::string mine = ReadFile("/proc/" + std::to_string(pids[0]) + "/cgroup");
      EXPECT_NE(mine.find("0::" + cg.substr(cg.find("/hotboot-"))), std::string::npos) << mine << " vs " << cg;
      EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
    }
    const auto t0 = Clock::now();
    KillNine(r);
    const double ms = ExpectNothingRunsWithin1s(r, "/nonexistent-marker/", pids, phase, t0);
    // Replicas of the shared snapshot: none more than before (by command).
    for (int i = 0; i < 200 && static_cast<int>(ProcessesWith(TinyModel()).size()) > servers_before; ++i) usleep(5000);
    EXPECT_EQ(static_cast<int>(ProcessesWith(TinyModel()).size()), servers_before) << "a replica outlived " << phase;
    EXPECT_EQ(HttpStatus(port, "/readyz"), -1) << phase;
    for (int i = 0; i < 200 && !LeftBehind(before, r, "").empty(); ++i) usleep(5 * 1000);
    for (const auto& l : LeftBehind(before, r, "")) ADD_FAILURE() << phase << ": left behind " << l;
    RecordProperty(std::string("restore_") + phase + "_ms", std::to_string(ms));
    std::printf("  restore killed at %s: nothing runs %.0f ms after kill -9\n", phase, ms);
  }
}

// The worst moment: the build and its janitor both killed mid-dump (what a
// kill of their whole process tree or an OOM kill of both does). The
// server, its cgroup and the CRIU images are left; the next job of the
// other kind, a restore, sweeps them at its start. That restore is
// detached: its replica outlives it in a handed-over cgroup, recorded
// where an operator finds it.
TEST(Kill, BuildAndJanitorKilledMidDumpAreSweptByTheNextRestore) {
  const std::string snap = TinySnapshot();
  const std::string tag = "kill-both-" + std::to_string(getpid());
  const std::string out = ScratchDir() + "/" + tag + ".hbsnap";
  const std::string model = ScratchDir() + "/" + tag + ".safetensors";
  fs::create_hard_link(TinyModel(), model);
  const std::string log = ScratchDir() + "/" + tag + ".err";
  const Before before = Look();
  const pid_t b = SpawnJob({Bin("hotboot"), "build", "--out", out, "--model", model}, log, true);
  ASSERT_TRUE(WaitForText(b, log, "dumping the process with CRIU", 120)) << ReadFile(log);
  const pid_t janitor = JanitorOf(b);
  ASSERT_GT(janitor, 0) << "no janitor found for build " << b;
  kill(janitor, SIGKILL);
  KillNine(b);
  // Nobody cleaned: the cgroup is there (its server may or may not have been
  // ended by CRIU, depending on how far the dump got).
  usleep(100 * 1000);
  const std::vector<std::string> stale = CgroupsOf(b);
  EXPECT_FALSE(stale.empty() && LeftBehind(before, b, out).empty()) << "the kill left nothing to sweep";

  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const auto& cg : stale) EXPECT_FALSE(fs::exists(cg)) << "stale cgroup not swept: " << cg;
  EXPECT_TRUE(ProcessesWith(model).empty()) << "the dead build's server still runs";
  for (const auto& l : LeftBehind(before, b, out)) ADD_FAILURE() << "not swept: " << l;

  // The detached replica: its cgroup was handed over, not ended.
  json res = json::parse(r.out);
  const pid_t replica = res["pid"].get<pid_t>();
  const std::string record = res.value("cgroup_record", "");
  const std::string cg = res.value("cgroup", "");
  ASSERT_FALSE(cg.empty());
  EXPECT_TRUE(fs::exists(record)) << r.out;
  EXPECT_TRUE(PidAlive(replica));
  EXPECT_TRUE(fs::exists(cg));
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  EXPECT_NE(ReadFile(record).find(cg), std::string::npos);
  // As an operator ends it: one write ends the replica and all it started.
  ASSERT_EQ(host::internal::KillAndRemoveCgroup(cg.c_str(), 2000), 0);
  for (int i = 0; i < 200 && PidAlive(replica); ++i) usleep(5 * 1000);
  EXPECT_FALSE(PidAlive(replica));
  // The next job drops the record of a cgroup that is gone.
  host::SweepStale(host::kDefaultStateDir, "");
  EXPECT_FALSE(fs::exists(record));
}

// The other way round, with a transparent replica (its helper setsid()s):
// a supervised restore and its janitor killed once it is ready leave the
// replica running in its cgroup; the next job, a build, ends it.
TEST(Kill, RestoreAndJanitorKilledAreSweptByTheNextBuild) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const std::string tag = "kill-replica-" + std::to_string(getpid());
  const std::string snap = ScratchDir() + "/" + tag + ".hbsnap";
  const int port = FreePort();
  CmdResult built = RunCmd({Bin("hotboot"), "build", "--out", snap, "--spec",
                            TransparentSpec(port, tag, ScratchDir() + "/" + tag + ".pids")});
  ASSERT_EQ(built.exit_code, 0) << built.err;
  ASSERT_TRUE(ProcessesWith("--tag " + tag).empty()) << "the build left its server";
  const std::string log = ScratchDir() + "/" + tag + ".err";
  const pid_t r = SpawnJob({Bin("hotboot"), "restore", snap, "--json"}, log, false);
  ASSERT_TRUE(WaitForText(r, log, "] ready", 60)) << ReadFile(log);
  const std::vector<pid_t> replica = ProcessesWith("--tag " + tag);
  EXPECT_GE(replica.size(), 2u) << "the restored server and its setsid() helper";
  const pid_t janitor = JanitorOf(r);
  ASSERT_GT(janitor, 0);
  kill(janitor, SIGKILL);
  KillNine(r);
  usleep(100 * 1000);
  const std::vector<std::string> stale = CgroupsOf(r);
  ASSERT_FALSE(stale.empty()) << "nothing ended the replica's cgroup: it is left for the sweep";
  EXPECT_EQ(ProcessesWith("--tag " + tag).size(), replica.size()) << "the replica runs on until swept";

  const std::string tag2 = "kill-sweeper-" + std::to_string(getpid());
  CmdResult b = RunCmd({Bin("hotboot"), "build", "--out", ScratchDir() + "/" + tag2 + ".hbsnap", "--spec",
                        TransparentSpec(FreePort(), tag2, ScratchDir() + "/" + tag2 + ".pids")});
  EXPECT_EQ(b.exit_code, 0) << b.err;
  for (const auto& cg : stale) EXPECT_FALSE(fs::exists(cg)) << "stale cgroup not swept: " << cg;
  EXPECT_TRUE(ProcessesWith("--tag " + tag).empty()) << "the dead restore's replica still runs";
  EXPECT_TRUE(ProcessesWith("--tag " + tag2).empty()) << "the build's own server outlived it";
}

}  // namespace
}  // namespace hotboot::test
