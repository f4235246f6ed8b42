// `hotboot bench burst` end to end, at its smallest (tiny preset, 2
// replicas): it reports every key the README and the issue name, its times
// are ordered, 2 restores at once fetch one snapshot between them (the node
// cache's single flight), and it leaves nothing behind: no process running
// the bench's executables, no network namespace, no run directory, an empty
// weights directory. About 10 s (a tiny build, 5 restores, 2 cold boots).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Pids whose executable lies under dir (the bench runs only its copies in dir/bin).
std::vector<int> ProcessesRunningFrom(const std::string& dir) {
  std::vector<int> pids;
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code e2;
    const std::string exe = fs::read_symlink(it->path() / "exe", e2).string();
    if (!e2 && exe.rfind(dir + "/", 0) == 0) pids.push_back(std::stoi(name));
  }
  return pids;
}

TEST(BenchBurst, TwoTinyReplicasReportOrderedTimesShareOneDownloadAndLeaveNothing) {
  if (::geteuid() != 0) GTEST_SKIP() << "bench burst needs root";
  for (const char* tool : {"/usr/bin/docker-registry", "/usr/bin/openssl", "/usr/bin/curl"}) {
    if (::access(tool, X_OK) != 0) GTEST_SKIP() << tool << " is not installed (tools/install-deps installs it)";
  }
  const std::string work = ScratchDir() + "/bench-burst";
  const std::string svg = ScratchDir() + "/burst.svg";
  // The suite's tiny model where the bench looks for the preset's ($HOTBOOT_HOME/models).
  const std::string home = ScratchDir() + "/burst-home";
  std::error_code ec;
  fs::create_directories(home + "/models", ec);
  fs::create_hard_link(TinyModel(), home + "/models/tiny.safetensors", ec);
  CmdResult r = RunCmd({"/usr/bin/env", "HOTBOOT_HOME=" + home, Bin("hotboot"), "bench", "burst",
                        "--replicas", "2", "--preset", "tiny", "--json", "--plain-http", "--workdir", work,
                        "--timeline", svg},
                       300);
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  const json j = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  for (const char* key : {"replicas", "one_s", "first_s", "p50_s", "p95_s", "last_s", "cold_first_s", "cold_p50_s",
                          "cold_p95_s", "cold_last_s", "ratio_last_one", "target_met", "bytes_fetched_total",
                          "snapshot_bytes", "burst", "cold", "netns"}) {
    EXPECT_TRUE(j.contains(key)) << key << " missing from " << r.out;
  }
  EXPECT_EQ(j.value("replicas", 0), 2);
  // (1) ran 3 times (--one-runs default); one_s is their median.
  ASSERT_TRUE(j["one_runs_s"].is_array());
  ASSERT_EQ(j["one_runs_s"].size(), 3u);
  std::vector<double> runs = j["one_runs_s"].get<std::vector<double>>();
  std::sort(runs.begin(), runs.end());
  EXPECT_DOUBLE_EQ(j.value("one_s", 0.0), runs[1]);
  const double one = j.value("one_s", 0.0), first = j.value("first_s", 0.0), p50 = j.value("p50_s", 0.0),
               p95 = j.value("p95_s", 0.0), last = j.value("last_s", 0.0);
  EXPECT_GT(one, 0);
  EXPECT_GT(first, 0);
  EXPECT_LE(first, p50);
  EXPECT_LE(p50, p95);
  EXPECT_LE(p95, last);
  EXPECT_GT(j.value("cold_first_s", 0.0), 0);
  EXPECT_LE(j.value("cold_first_s", 0.0), j.value("cold_p50_s", 0.0));
  EXPECT_LE(j.value("cold_p50_s", 0.0), j.value("cold_last_s", 0.0));
  EXPECT_NEAR(j.value("ratio_last_one", 0.0), last / one, 1e-6);
  ASSERT_TRUE(j["burst"].is_array());
  EXPECT_EQ(j["burst"].size(), 2u);
  EXPECT_EQ(j["cold"].size(), 2u);
  // One download, shared: the two restores together fetched about one snapshot.
  const double snapshot = j.value("snapshot_bytes", 0.0), fetched = j.value("bytes_fetched_total", 0.0);
  EXPECT_GE(fetched, 0.5 * snapshot) << r.out;
  EXPECT_LE(fetched, 1.1 * snapshot) << r.out;

  EXPECT_EQ(ProcessesRunningFrom(work), std::vector<int>{}) << "the bench left processes running";
  EXPECT_FALSE(fs::exists("/run/netns/" + j.value("netns", std::string("?")))) << "the bench left its namespace";
  for (fs::directory_iterator it(work, ec), end; !ec && it != end; it.increment(ec)) {
    EXPECT_NE(it->path().filename().string().rfind("run-", 0), 0u) << it->path() << " was left behind";
  }
  EXPECT_TRUE(fs::is_empty(work + "/weights", ec)) << "the weights directory was not emptied";
  EXPECT_EQ(ReadFile(svg).rfind("<?xml", 0), 0u) << "no timeline written";
  fs::remove_all(work, ec);
  fs::remove_all(home, ec);
  fs::remove(svg, ec);
}

}  // namespace
}  // namespace hotboot::test
