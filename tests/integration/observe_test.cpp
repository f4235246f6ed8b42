// What operators watch, through the real CLI and the real CRIU: a transparent
// snapshot (tools/examples/http_model_server.py) restored with
// --metrics-port, --metrics-textfile and --keep-warm-interval; a corrupt
// snapshot's failure in the textfile and in JSON; every --json command
// answering in JSON on failure.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "hotboot/http_client.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string Python() {
  for (const char* p : {"/usr/bin/python3", "/bin/python3"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

constexpr const char* kCanaryBody = R"({"prompt":"The quick brown fox","max_tokens":6})";

// One transparent snapshot for the suite, built once.
struct Built {
  std::string snap;
  int port = 0;
  double bound_ms = 0;  // the build's warm latency bound for the canary
};
const Built& PySnapshot() {
  static Built b = [] {
    Built out;
    out.port = FreePort();
    out.snap = ScratchDir() + "/observe-py.hbsnap";
    CmdResult r = RunCmd({Bin("hotboot"), "build", "--out", out.snap, "--json", "--port", std::to_string(out.port),
                          "--canary-path", "/generate", "--canary-body", kCanaryBody, "--canary-compare", "/tokens",
                          "--after-restore", "/after-restore", "--", Python(),
                          std::string(HOTBOOT_SOURCE_DIR) + "/tools/examples/http_model_server.py", "--port",
                          std::to_string(out.port)});
    if (r.exit_code != 0) throw std::runtime_error("build failed: " + r.err);
    out.bound_ms = json::parse(r.out)["canary"]["latency_bound_ms"].get<double>();
    return out;
  }();
  return b;
}

// The value of one sample line of a Prometheus text ("name{labels}"), or -1.
double Sample(const std::string& text, const std::string& name_and_labels) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) return std::stod(line.substr(name_and_labels.size() + 1));
  }
  return -1;
}

std::string Metrics(int port) {
  auto r = HttpRequest("127.0.0.1", port, "GET", "/metrics", "", std::chrono::seconds(5));
  return r.ok() && r->status == 200 ? r->body : "";
}

// Polls `cond` every 20 ms until it holds or `limit` passes.
bool Within(std::chrono::milliseconds limit, const std::function<bool()>& cond) {
  const auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    if (cond()) return true;
    ::usleep(20 * 1000);
  }
  return cond();
}

TEST(Observe, TransparentRestoreServesMetricsAndKeepsTheReplicaWarm) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const Built& b = PySnapshot();
  const int mport = FreePort();
  const std::string dir = ScratchDir() + "/observe-ok";
  fs::create_directories(dir);
  const std::string textfile = dir + "/hotboot.prom";
  const std::string out = dir + "/out", err = dir + "/err";
  const pid_t restore =
      Spawn({Bin("hotboot"), "restore", b.snap, "--json", "--metrics-port", std::to_string(mport), "--metrics-textfile",
             textfile, "--keep-warm-interval", "1", "--log-format", "json"},
            out, err);
  ASSERT_TRUE(WaitForText(restore, out, "\"pid\"", 60)) << ReadFile(err);
  const json res = json::parse(ReadFile(out));
  ASSERT_EQ(res.value("outcome", ""), "ready") << res;
  const pid_t replica = res["pid"].get<pid_t>();

  // /metrics: the outcome, phases, the snapshot's info, the replica up.
  const std::string m = Metrics(mport);
  ASSERT_FALSE(m.empty());
  EXPECT_EQ(Sample(m, R"(hotboot_restore_outcome{outcome="ready"})"), 1) << m;
  EXPECT_EQ(Sample(m, R"(hotboot_restore_outcome{outcome="restoring"})"), 0) << m;
  EXPECT_GT(Sample(m, R"(hotboot_restore_phase_seconds{phase="criu_restore"})"), 0) << m;
  EXPECT_GT(Sample(m, R"(hotboot_restore_phase_seconds{phase="verify"})"), 0) << m;
  EXPECT_GT(Sample(m, "hotboot_restore_time_to_ready_seconds"), 0) << m;
  EXPECT_EQ(Sample(m, "hotboot_replica_up{port=\"" + std::to_string(b.port) + "\"}"), 1) << m;
  EXPECT_NE(m.find("capture_mode=\"transparent\""), std::string::npos) << m;
  EXPECT_NE(m.find("# TYPE hotboot_replica_keep_warm_requests_total counter"), std::string::npos) << m;
  // The textfile says the same.
  const std::string tf = ReadFile(textfile);
  EXPECT_EQ(Sample(tf, R"(hotboot_restore_outcome{outcome="ready"})"), 1) << tf;

  // Idle for over the interval: the supervisor sends a keep-warm, counted.
  auto kept = [&] { return Sample(Metrics(mport), "hotboot_replica_keep_warm_requests_total"); };
  ASSERT_TRUE(Within(std::chrono::seconds(10), [&] { return kept() >= 1; })) << Metrics(mport);
  // Traffic is seen: requests every 250 ms for 3 s (three intervals) let at
  // most the one keep-warm that may already have been due go out.
  const double before = kept();
  for (int i = 0; i < 12; ++i) {
    auto r = HttpRequest("127.0.0.1", b.port, "POST", "/generate", R"({"prompt":"hello","max_tokens":2})",
                         std::chrono::seconds(10));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ::usleep(250 * 1000);
  }
  EXPECT_LE(kept() - before, 1) << Metrics(mport);
  // Idle again, past another keep-warm: the first request after the gap
  // answers within the build's warm latency bound. Up to three gaps: on a
  // loaded 2-core host one request now and then misses the warm + 200 ms
  // bound for reasons of its own (registry_test saw it too); a replica gone
  // cold misses it every time.
  std::string latencies;
  bool warm = false;
  for (int gap = 0; gap < 3 && !warm; ++gap) {
    const double again = kept();
    ASSERT_TRUE(Within(std::chrono::seconds(10), [&] { return kept() > again; })) << Metrics(mport);
    ::usleep(1500 * 1000);  // an idle gap longer than the interval
    auto first = HttpRequest("127.0.0.1", b.port, "POST", "/generate", kCanaryBody, std::chrono::seconds(10));
    ASSERT_TRUE(first.ok()) << first.status().ToString();
    EXPECT_EQ(first->status, 200);
    latencies += std::to_string(first->elapsed_ms) + " ms ";
    warm = first->elapsed_ms <= b.bound_ms;
  }
  EXPECT_TRUE(warm) << "the first request after an idle gap was not at the warm latency (bound " << b.bound_ms
                    << " ms): " << latencies;
  const std::string after = Metrics(mport);
  EXPECT_GE(Sample(after, "hotboot_replica_keep_warm_last_latency_seconds"), 0) << after;
  EXPECT_EQ(Sample(after, "hotboot_replica_keep_warm_failures_total"), 0) << after;

  // Its stderr: one JSON object per line, the keep-warm among them.
  bool saw_keep_warm = false, saw_replica = false;
  std::istringstream lines(ReadFile(err));
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "not a JSON line: " << line;
    EXPECT_TRUE(j.contains("ts") && j.contains("level") && j.contains("msg")) << line;
    saw_keep_warm |= j.value("event", "") == "keep_warm";
    saw_replica |= j.value("source", "") == "replica";
  }
  EXPECT_TRUE(saw_keep_warm);
  EXPECT_TRUE(saw_replica);

  // The replica ends: the supervisor exits and the textfile says it is down.
  ::kill(replica, SIGKILL);
  int status = 0;
  ASSERT_TRUE(Within(std::chrono::seconds(20), [&] { return ::waitpid(restore, &status, WNOHANG) == restore; }));
  EXPECT_EQ(Sample(ReadFile(textfile), "hotboot_replica_up{port=\"" + std::to_string(b.port) + "\"}"), 0);
}

TEST(Observe, ACorruptSnapshotsFailureIsInTheTextfileAndInJson) {
  if (Python().empty()) GTEST_SKIP() << "no python3 here";
  const Built& b = PySnapshot();
  const std::string dir = ScratchDir() + "/observe-corrupt";
  fs::create_directories(dir);
  const std::string bad = dir + "/bad.hbsnap";
  fs::copy_file(b.snap, bad, fs::copy_options::overwrite_existing);
  {
    // A byte in the middle of the file: inside a chunk of the CRIU images.
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    const auto size = fs::file_size(bad);
    f.seekg(static_cast<std::streamoff>(size / 2));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(&c, 1);
  }
  const std::string textfile = dir + "/hotboot.prom";
  CmdResult r = RunCmd({Bin("hotboot"), "restore", bad, "--json", "--metrics-textfile", textfile}, 120);
  EXPECT_EQ(r.exit_code, 4) << r.err;
  const json out = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(out.is_object()) << r.out;
  EXPECT_EQ(out.value("exit_code", -1), r.exit_code);
  EXPECT_EQ(out.value("outcome", ""), "corrupt");
  EXPECT_FALSE(out.value("error", "").empty());
  const std::string tf = ReadFile(textfile);
  EXPECT_EQ(Sample(tf, R"(hotboot_restore_outcome{outcome="corrupt"})"), 1) << tf;
  EXPECT_EQ(Sample(tf, R"(hotboot_restore_outcome{outcome="ready"})"), 0) << tf;
  EXPECT_EQ(Sample(tf, "hotboot_replica_up{port=\"0\"}"), 0) << tf;
  EXPECT_EQ(tf.find("time_to_ready"), std::string::npos) << tf;
}

TEST(Observe, EveryJsonCommandAnswersInJsonOnFailure) {
  const std::string dir = ScratchDir() + "/observe-json";
  fs::create_directories(dir);
  const std::string junk = dir + "/junk.hbsnap";
  WriteFile(junk, "not a snapshot at all\n");
  const std::string missing = dir + "/missing.hbsnap";
  const std::string h = Bin("hotboot");
  const std::vector<std::vector<std::string>> cases = {
      {h, "build", "--out", dir + "/x.hbsnap", "--spec", dir + "/no-spec.json", "--json"},
      {h, "build", "--json", "--no-such-flag"},
      {h, "restore", junk, "--port", std::to_string(FreePort()), "--json"},
      {h, "restore", missing, "--port", std::to_string(FreePort()), "--json"},
      {h, "restore", "--json"},
      {h, "inspect", junk, "--json"},
      {h, "inspect", missing, "--json"},
      {h, "verify", junk, "--json"},
      {h, "push", missing, "oci://127.0.0.1:1/x:y", "--json"},
      {h, "pull", "oci://127.0.0.1:1/x:y", "--plain-http", "--cache-dir", dir + "/cache", "--json"},
      {h, "cache", "gc", "--cache-dir", junk, "--json"},
      {h, "cache", "prune", "--keep", "lots", "--cache-dir", dir + "/cache", "--json"},
      {h, "bench", "format", "--snapshot", missing, "--json"},
      {h, "bench", "trust", "--snapshot", junk, "--json"},
      {h, "bench", "fetch", "--presets", "huge", "--json"},
      {h, "sign", junk, "--key", missing, "--json"},
      {h, "keygen", "--out", dir + "/no-dir/key", "--json"},
      {h, "demo", "--json", "--no-such-flag"},
  };
  for (const auto& argv : cases) {
    std::string cmd;
    for (size_t i = 1; i < argv.size(); ++i) cmd += argv[i] + " ";
    CmdResult r = RunCmd(argv, 60);
    EXPECT_NE(r.exit_code, 0) << cmd;
    const json j = json::parse(r.out, nullptr, false);
    ASSERT_TRUE(j.is_object()) << cmd << ": stdout is not one JSON object: " << r.out << "\nstderr: " << r.err;
    EXPECT_EQ(j.value("exit_code", -1), r.exit_code) << cmd << ": " << r.out;
    EXPECT_TRUE(j.contains("error") && j["error"].is_string() && !j["error"].get<std::string>().empty())
        << cmd << ": " << r.out;
    EXPECT_TRUE(j.contains("outcome")) << cmd << ": " << r.out;
    EXPECT_EQ(j.value("ok", true), false) << cmd << ": " << r.out;
  }
}

// A suite that passed leaves nothing behind (its snapshot is ~20 MB); a
// failed one's scratch directory stays to look at.
class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (::testing::UnitTest::GetInstance()->Passed()) {
      std::error_code ec;
      fs::remove_all(ScratchDir(), ec);
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

}  // namespace
}  // namespace hotboot::test
