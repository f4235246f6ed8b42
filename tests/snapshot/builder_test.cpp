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
