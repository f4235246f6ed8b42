// A weights file the server registers (before_capture's weights_files) but
// does not keep mapped, as the GPU reference model does with its
// gpu-weights file since its bytes live on the device: the build records it
// by stat beside the mapped ones (snapshot/src/builder.cpp), it travels as
// its weights/<name> section, and a restore on a host that lacks it extracts
// it again. A registered path that does not exist fails the build, naming
// it, and leaves no snapshot. The real CRIU, a Python server
// (registered_weights_server.py) that reads the file but never maps it.
#include <dirent.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "hotboot/builder.h"
#include "hotboot/criu.h"
#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"
#include "test_util.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* kPython = "/usr/bin/python3";

std::string ServerScript() {
  return std::string(HOTBOOT_SOURCE_DIR) + "/tests/integration/registered_weights_server.py";
}

// Live processes whose command line holds `needle`.
std::vector<pid_t> ProcessesWith(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = test::ReadFile(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    const pid_t pid = std::stoi(name);
    if (cmd.find(needle) != std::string::npos && pid != ::getpid() && test::PidAlive(pid)) out.push_back(pid);
  }
  return out;
}

// Each case gets its own weights directory (HOTBOOT_WEIGHTS_DIR for the
// case's build and restore) and output directory.
class RegisteredWeightsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "CRIU needs root";
    if (::access(kPython, X_OK) != 0) GTEST_SKIP() << "no " << kPython << " here";
    const std::string tag = std::string(::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::string safe = tag;
    for (char& c : safe) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
    root_ = test::ScratchDir() + "/registered-" + safe;
    fs::remove_all(root_);
    wdir_ = root_ + "/weights";
    out_dir_ = root_ + "/out";
    fs::create_directories(wdir_);
    fs::create_directories(out_dir_);
    fs::permissions(wdir_, fs::perms(0755));
    const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
    saved_env_ = old ? std::optional<std::string>(old) : std::nullopt;
    ::setenv("HOTBOOT_WEIGHTS_DIR", wdir_.c_str(), 1);
  }
  void TearDown() override {
    saved_env_ ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved_env_->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Random bytes (1 MiB and an odd tail) in the weights directory under
  // the name hotboot gives a provided file: prefix + XXH3-128 of the bytes,
  // as the node cache computes it (HashPathXxh128).
  std::string MakeWeights(const std::string& prefix) {
    bytes_.resize((1u << 20) + 4321);
    std::mt19937_64 rng(0x5eed);
    for (auto& c : bytes_) c = static_cast<char>(rng());
    const std::string tmp = wdir_ + "/.incoming";
    test::WriteFile(tmp, bytes_);
    auto hash = HashPathXxh128(tmp);
    EXPECT_TRUE(hash.ok()) << hash.status().ToString();
    if (!hash.ok()) return "";
    hash_ = *hash;
    name_ = prefix + hash_ + ".bin";
    std::string parsed;
    EXPECT_TRUE(ParseContentName(name_, &parsed)) << name_;
    EXPECT_EQ(parsed, hash_);
    const std::string path = wdir_ + "/" + name_;
    fs::rename(tmp, path);
    mode_ = fs::status(path).permissions() & fs::perms::all;
    return path;
  }

  BuildSpec Spec(const std::vector<std::string>& server_args) {
    BuildSpec spec;
    spec.command = {kPython, ServerScript()};
    spec.command.insert(spec.command.end(), server_args.begin(), server_args.end());
    spec.ready_timeout = std::chrono::seconds(30);
    spec.request_timeout = std::chrono::seconds(10);
    spec.canary = {"registered weights", 6, 3};
    return spec;
  }

  std::string root_, wdir_, out_dir_;
  std::string bytes_, hash_, name_;
  fs::perms mode_ = fs::perms::none;
  std::optional<std::string> saved_env_;
};

TEST_P(RegisteredWeightsTest, AnUnmappedRegisteredFileTravelsAndRestoreExtractsItAgain) {
  const std::string path = MakeWeights(GetParam());
  ASSERT_FALSE(path.empty());
  const std::string snap = out_dir_ + "/rw.hbsnap";
  auto criu = MakeLibCriu();
  auto built = BuildSnapshot(Spec({"--weights", path, "--register", path}), snap, *criu, {}, nullptr);
  ASSERT_TRUE(built.ok()) << built.status().ToString();

  // The manifest: a provided file under its content name, not a mapped one
  // (the server never mapped it: only the builder's stat found it).
  const ManifestProcess& p = built->manifest.process;
  ASSERT_EQ(p.provided_files.size(), 1u);
  EXPECT_EQ(p.provided_files[0].name, name_);
  EXPECT_EQ(p.provided_files[0].size, bytes_.size());
  EXPECT_EQ(p.provided_files[0].section, "weights/" + name_);
  EXPECT_EQ(p.provided_files[0].content_hash, hash_);
  EXPECT_EQ(p.weights_dir, wdir_);
  for (const auto& f : p.mapped_files) EXPECT_NE(f.path, path) << "the server was not to map it";
  EXPECT_EQ(built->weights_bytes, bytes_.size());
  // The same, as restore will read it back from the file.
  {
    auto reader = snapfile::SnapshotReader::Open(snap);
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    auto m = ParseManifest((*reader)->manifest_json());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_EQ(m->process.provided_files.size(), 1u);
    EXPECT_EQ(m->process.provided_files[0].name, name_);
    const snapfile::SectionInfo* sec = (*reader)->FindSection("weights/" + name_);
    ASSERT_NE(sec, nullptr) << "the snapshot has the file's section";
    EXPECT_EQ(sec->raw_size, bytes_.size());
    EXPECT_EQ(sec->content_hash.Hex(), hash_);
    auto got = (*reader)->ReadSection("weights/" + name_);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_TRUE(*got == bytes_) << "the section holds the file's bytes";
  }

  // A host without the file: the restore extracts it, and the server
  // (which reads it again in after_restore: its digest) is ready.
  ASSERT_TRUE(fs::remove(path));
  RestoreOptions ro;
  ro.snapshot_path = snap;
  ro.port = test::FreePort();
  ro.work_root = root_;
  ro.verify_timeout = std::chrono::seconds(10);
  std::vector<std::string> phases;
  RestoreEvents ev;
  ev.on_phase = [&](const std::string& ph) { phases.push_back(ph); };
  auto r = RestoreReplica(ro, *criu, ev, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(fs::exists(path)) << "the restore put the file back";
  EXPECT_TRUE(test::ReadFile(path) == bytes_) << "with the build's bytes";
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, mode_) << "and the build's mode";
  EXPECT_EQ(r->digest, built->manifest.warm.digest);
  EXPECT_EQ(test::HttpStatus(ro.port, "/readyz"), 200);
  EXPECT_NE(std::find(phases.begin(), phases.end(), "weights"), phases.end());
  const json gen = test::Generate(ro.port, "registered weights", 6);
  ASSERT_TRUE(gen.is_object()) << gen;
  EXPECT_EQ(gen["tokens"].size(), 6u);
  // The restored server keeps it unmapped too.
  const std::string maps = test::ReadFile("/proc/" + std::to_string(r->replica->pid()) + "/maps");
  EXPECT_FALSE(maps.empty());
  EXPECT_EQ(maps.find(name_), std::string::npos);
  const pid_t restored = r->replica->pid();
  r->replica->Kill();
  EXPECT_FALSE(test::PidAlive(restored));
}

TEST_P(RegisteredWeightsTest, ARegisteredPathThatDoesNotExistFailsTheBuildNamingIt) {
  const std::string path = MakeWeights(GetParam());
  ASSERT_FALSE(path.empty());
  // A content name in the weights directory, no file behind it.
  const std::string missing = wdir_ + "/" + GetParam() + std::string(32, '0') + ".bin";
  const std::string snap = out_dir_ + "/missing.hbsnap";
  auto criu = MakeLibCriu();
  auto built = BuildSnapshot(Spec({"--weights", path, "--register", path, "--register", missing}), snap, *criu, {},
                             nullptr);
  ASSERT_FALSE(built.ok());
  EXPECT_NE(built.status().message().find(missing), std::string::npos) << built.status().ToString();
  EXPECT_NE(built.status().ToString().find("No such file"), std::string::npos) << built.status().ToString();
  EXPECT_FALSE(fs::exists(snap));
  // Nothing else either: no writer's temporary, no work directory.
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(out_dir_)) left.push_back(e.path().filename().string());
  EXPECT_TRUE(left.empty()) << left.front();
  // The server was dumped and ended with it; none is left running.
  EXPECT_TRUE(ProcessesWith(missing).empty());
  EXPECT_TRUE(fs::exists(path)) << "the real weights file is left alone";
}

INSTANTIATE_TEST_SUITE_P(RegisteredWeights, RegisteredWeightsTest, ::testing::Values("weights-", "gpu-weights-"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           return i.param == "weights-" ? std::string("CpuName") : std::string("GpuName");
                         });

}  // namespace
}  // namespace hotboot
