#include "hotboot/builder.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

TEST(BuildSpec, ParsesAndValidates) {
  auto s = BuildSpec::FromJson({{"command", {"/bin/srv", "--x"}},
                                {"ready_timeout_s", 5},
                                {"warmup", {{{"prompt", "hi"}, {"max_tokens", 4}, {"iterations", 2}}}},
                                {"canary", {{"prompt", "c"}, {"max_tokens", 3}, {"iterations", 4}}}});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->command.size(), 2u);
  EXPECT_EQ(s->ready_timeout, std::chrono::seconds(5));
  EXPECT_EQ(s->warmup.at(0).iterations, 2);
  EXPECT_EQ(s->canary.max_tokens, 3);

  EXPECT_FALSE(BuildSpec::FromJson(json::array()).ok());
  auto bad = BuildSpec::FromJson({{"warmup", {{{"max_tokens", 4}}}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("build spec"), std::string::npos);
  EXPECT_FALSE(BuildSpec::FromJson({{"canary", {{"prompt", "c"}, {"iterations", 1}}}}).ok());
}

// Issue 11: the spec's zstd_level is the build's level (`hotboot build
// --zstd-level` overrides it only when given), so it is checked like a flag.
TEST(BuildSpec, ZstdLevelFromTheSpecIsKeptAndChecked) {
  EXPECT_EQ(BuildSpec::FromJson({{"command", {"x"}}})->zstd_level, kDefaultZstdLevel);
  auto s = BuildSpec::FromJson({{"command", {"x"}}, {"zstd_level", 19}});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->zstd_level, 19);
  for (int bad : {0, -1, 20, 22}) {
    auto r = BuildSpec::FromJson({{"command", {"x"}}, {"zstd_level", bad}});
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("zstd_level must be 1..19"), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(BuildSpec::FromJson({{"command", {"x"}}, {"zstd_level", "high"}}).ok());
}

TEST(BuildSpec, TransparentServersAreDescribedByTheirHttpApi) {
  auto s = BuildSpec::FromJson(
      {{"command", {"python3", "server.py"}},
       {"http",
        {{"port", 8000},
         {"ready_path", "/ready"},
         {"canary", {{"method", "POST"}, {"path", "/generate"}, {"body", {{"prompt", "hi"}}}}},
         {"canary_compare", "/tokens"},
         {"warmup", {{{"path", "/warm"}}}},
         {"before_capture", {{"method", "POST"}, {"path", "/hooks/freeze"}}},
         {"after_restore", {{"method", "POST"}, {"path", "/hooks/thaw"}, {"body", "{}"}}}}}});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(s->transparent());
  EXPECT_EQ(s->http.port, 8000);
  EXPECT_EQ(s->http.canary.body, R"({"prompt":"hi"})");
  EXPECT_EQ(s->http.warmup.at(0).method, "GET");
  ASSERT_TRUE(s->http.after_restore.has_value());
  EXPECT_EQ(s->http.after_restore->path, "/hooks/thaw");

  auto no_port = BuildSpec::FromJson({{"mode", "transparent"}, {"command", {"x"}}});
  ASSERT_FALSE(no_port.ok());
  EXPECT_NE(no_port.status().message().find("http.port"), std::string::npos);
  auto bad_path = BuildSpec::FromJson({{"http", {{"port", 1}, {"canary", {{"path", "generate"}}}}}});
  ASSERT_FALSE(bad_path.ok());
  EXPECT_NE(bad_path.status().message().find("must start with /"), std::string::npos) << bad_path.status().message();
  auto bad_verb = BuildSpec::FromJson({{"http", {{"port", 1}, {"canary", {{"method", "FETCH"}, {"path", "/g"}}}}}});
  EXPECT_FALSE(bad_verb.ok());
  EXPECT_EQ(BuildSpec::FromJson({{"command", {"x"}}})->pid_namespace, "auto");
  EXPECT_EQ(BuildSpec::FromJson({{"command", {"x"}}, {"pid_namespace", "off"}})->pid_namespace, "off");
  EXPECT_FALSE(BuildSpec::FromJson({{"command", {"x"}}, {"pid_namespace", "maybe"}}).ok());
  auto bad_mode = BuildSpec::FromJson({{"mode", "magic"}});
  ASSERT_FALSE(bad_mode.ok());
  EXPECT_NE(bad_mode.status().message().find("cooperative"), std::string::npos);
}

TEST(HttpCall, CanaryValueSelectsByPointerAndDistrustsTheBody) {
  auto whole = CanaryValue("anything", "");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, "anything");
  auto tokens = CanaryValue(R"({"tokens":[1,2],"latency_ms":3.5})", "/tokens");
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(*tokens, json({1, 2}));
  EXPECT_FALSE(CanaryValue("not json", "/tokens").ok());
  EXPECT_FALSE(CanaryValue(R"({"text":"x"})", "/tokens").ok());
  auto bad_ptr = CanaryValue(R"({"a":1})", "no-slash");
  ASSERT_FALSE(bad_ptr.ok());
  EXPECT_EQ(bad_ptr.status().code(), Code::kInvalidArgument);
}

class FailingCriu : public Criu {
 public:
  Result<std::string> Version() override { return NotFound("cannot run CRIU (fake)"); }
  Status Dump(const CriuDumpOptions&) override { return Internal("unused"); }
  Result<pid_t> Restore(const CriuRestoreOptions&) override { return Internal("unused"); }
};

TEST(Builder, NoCriuFailsBeforeLaunchingAndWritesNothing) {
  fs::path dir = fs::temp_directory_path() / ("hotboot-builder-test." + std::to_string(::getpid()));
  fs::create_directories(dir);
  BuildSpec spec;
  spec.command = {"/bin/sh", "-c", "touch " + (dir / "launched").string()};
  FailingCriu criu;
  auto r = BuildSnapshot(spec, (dir / "out.hbsnap").string(), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("cannot run CRIU"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "out.hbsnap"));
  EXPECT_FALSE(fs::exists(dir / "launched"));
  fs::remove_all(dir);
}

TEST(Builder, RemovesOnlyStaleLeftovers) {
  fs::path dir = fs::temp_directory_path() / ("hotboot-stale-test." + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string me = std::to_string(::getpid());
  fs::create_directories(dir / ".hotboot-build.out.hbsnap.999999999");  // dead owner
  fs::create_directories(dir / (".hotboot-build.out.hbsnap." + me));    // live owner
  std::ofstream(dir / "out.hbsnap.tmp.999999999") << "partial";
  std::ofstream(dir / "other.hbsnap.tmp.999999999") << "not ours";
  RemoveStaleBuildFiles((dir / "out.hbsnap").string());
  EXPECT_FALSE(fs::exists(dir / ".hotboot-build.out.hbsnap.999999999"));
  EXPECT_TRUE(fs::exists(dir / (".hotboot-build.out.hbsnap." + me)));
  EXPECT_FALSE(fs::exists(dir / "out.hbsnap.tmp.999999999"));
  EXPECT_TRUE(fs::exists(dir / "other.hbsnap.tmp.999999999"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hotboot
