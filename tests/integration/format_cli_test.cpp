// The snapshot format through the CLI on a real snapshot of the reference
// server: one section inspected and extracted, a snapshot verified from a
// pipe, and a second build against the first as its base, restored.
#include <signal.h>

#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace hotboot::test {
namespace {

using json = nlohmann::json;

json InspectJson(const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {Bin("hotboot"), "inspect"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back("--json");
  CmdResult r = RunCmd(argv);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return json::parse(r.out, nullptr, false);
}

std::string WeightsSection() {
  json j = InspectJson({TinySnapshot()});
  for (const auto& s : j["sections"]) {
    if (s["name"].get<std::string>().rfind("weights/", 0) == 0) return s["name"];
  }
  return "";
}

TEST(FormatCli, OneSectionInspectedAndExtracted) {
  const std::string name = WeightsSection();
  ASSERT_FALSE(name.empty());
  json s = InspectJson({TinySnapshot(), "--section", name});
  EXPECT_EQ(s["elem"], "bf16");
  ASSERT_FALSE(s["chunk_list"].empty());
  EXPECT_EQ(s["chunk_list"][0]["transform"], "planes2") << "bf16 weights are stored as byte planes";
  const std::string out = ScratchDir() + "/weights.extracted";
  CmdResult x = RunCmd({Bin("hotboot"), "inspect", TinySnapshot(), "--section", name, "--extract", out});
  ASSERT_EQ(x.exit_code, 0) << x.err;
  json m = InspectJson({TinySnapshot()})["manifest"];
  // Provided files are named by content hash in the weights directory (issue 12).
  const std::string original = m["process"]["weights_dir"].get<std::string>() + "/" +
                               m["process"]["provided_files"][0]["name"].get<std::string>();
  EXPECT_TRUE(ReadFile(out) == ReadFile(original));
  CmdResult missing = RunCmd({Bin("hotboot"), "inspect", TinySnapshot(), "--section", "nope"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.err.find("no section 'nope'"), std::string::npos) << missing.err;
}

// Issue 11: a section whose chunks are each intact but whose content hash
// does not match (the golden file of that damage) is refused, and no file is
// left where it was to go.
TEST(FormatCli, ExtractRefusesASectionWhoseContentHashDoesNotMatch) {
  const std::string bad = std::string(HOTBOOT_SOURCE_DIR) + "/tests/formats/golden/bad-content-hash.hbsnap";
  const std::string out = ScratchDir() + "/bad-content.extracted";
  CmdResult x = RunCmd({Bin("hotboot"), "inspect", bad, "--section", "meta/a", "--extract", out});
  EXPECT_NE(x.exit_code, 0);
  EXPECT_NE(x.err.find("section 'meta/a': content hash mismatch"), std::string::npos) << x.err;
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(FormatCli, VerifiesFromAPipe) {
  CmdResult ok = RunCmd({"/bin/sh", "-c", "cat '" + TinySnapshot() + "' | '" + Bin("hotboot") + "' verify - --json"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(json::parse(ok.out, nullptr, false).value("ok", false), true) << ok.out;
  CmdResult cut = RunCmd({"/bin/sh", "-c", "head -c 100000 '" + TinySnapshot() + "' | '" + Bin("hotboot") + "' verify - --json"});
  EXPECT_EQ(cut.exit_code, 4) << cut.err;
  json j = json::parse(cut.out, nullptr, false);
  EXPECT_EQ(j.value("outcome", ""), "truncated") << cut.out;
}

TEST(FormatCli, ASecondBuildAgainstABaseStoresOnlyWhatChanged) {
  const std::string delta = ScratchDir() + "/delta.hbsnap";
  CmdResult b = RunCmd({Bin("hotboot"), "build", "--out", delta, "--model", TinyModel(), "--base", TinySnapshot(), "--json"});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  json j = InspectJson({delta});
  ASSERT_TRUE(j["base"].is_object()) << j.dump();
  EXPECT_TRUE(j["base"]["found"].get<bool>());
  bool weights_ref = false;
  for (const auto& s : j["sections"]) {
    if (s["name"].get<std::string>().rfind("weights/", 0) == 0) weights_ref = s["ref"];
  }
  EXPECT_TRUE(weights_ref) << "the same model's weights are referenced, not stored";
  const json base = InspectJson({TinySnapshot()});
  EXPECT_LT(j["file_bytes"].get<uint64_t>(), base["file_bytes"].get<uint64_t>());
  CmdResult v = RunCmd({Bin("hotboot"), "verify", delta});
  EXPECT_EQ(v.exit_code, 0) << v.err;

  // Restored from the delta (the base found next to it by name).
  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", delta, "--port", std::to_string(port), "--detach", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json out = json::parse(r.out, nullptr, false);
  const json canary = j["manifest"]["warm"]["canary"];
  EXPECT_EQ(Generate(port, canary["prompt"], canary["max_tokens"])["tokens"], canary["tokens"]);
  kill(out.value("pid", -1), SIGKILL);
}

}  // namespace
}  // namespace hotboot::test
