// RestoreReplica's decisions with a fake CRIU that records calls and injects
// faults: nothing is touched when the host does not fit, a CRIU failure is
// reported with its log, and the unpack directory never outlives the call.
#include <gtest/gtest.h>

#include <filesystem>

#include "hotboot/builder.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"
#include "../snapshot/fake_cuda.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class FakeCriu : public Criu {
 public:
  std::string version = "4.2.1";
  Status restore_status = Internal("criu_restore failed (injected)");
  int restores = 0;
  std::vector<std::string> seen_files;

  Result<std::string> Version() override {
    if (version.empty()) return NotFound("no criu");
    return version;
  }
  Status Dump(const CriuDumpOptions&) override { return Internal("not used"); }
  Result<pid_t> Restore(const CriuRestoreOptions& o) override {
    ++restores;
    for (const auto& e : fs::recursive_directory_iterator(o.images_dir)) {
      seen_files.push_back(fs::relative(e.path(), o.images_dir).string());
    }
    return restore_status;
  }
};

class RestoreFake : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-restore-fake." + std::to_string(::getpid()));
    fs::create_directories(dir_ / "work");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string WriteSnap(const json& manifest) {
    std::string p = (dir_ / "s.hbsnap").string();
    std::vector<snapfile::SectionSource> secs(2);
    secs[0].name = "criu/inventory.img";
    secs[0].bytes = "inventory";
    secs[1].name = "criu/pages-1.img";
    secs[1].bytes = std::string(1 << 20, '\0');
    EXPECT_TRUE(snapfile::WriteSnapshot(p, manifest.dump(), secs).ok());
    return p;
  }

  json Fitting() {
    HostInfo h = ReadHostInfo();
    return {{"format", kManifestFormat}, {"host", ToJson(h)}, {"criu", {{"version", "4.2.1"}}},
            {"process", {{"fd_keys", {"pipe:[1]", "pipe:[2]", "pipe:[3]"}}}}};
  }

  RestoreOptions Opts(const std::string& snap) {
    RestoreOptions o;
    o.snapshot_path = snap;
    o.port = 1;  // never bound: the fake fails before
    o.work_root = (dir_ / "work").string();
    return o;
  }

  bool WorkIsEmpty() { return fs::is_empty(dir_ / "work"); }

  fs::path dir_;
};

TEST_F(RestoreFake, IncompatibleHostTouchesNothing) {
  json m = Fitting();
  m["host"]["isa_flags"].push_back("avx10_imaginary");
  FakeCriu criu;
  auto r = RestoreReplica(Opts(WriteSnap(m)), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("avx10_imaginary"), std::string::npos);
  EXPECT_EQ(criu.restores, 0);
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, MissingCriuIsIncompatible) {
  FakeCriu criu;
  criu.version = "";
  auto r = RestoreReplica(Opts(WriteSnap(Fitting())), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("install-deps"), std::string::npos);
}

TEST_F(RestoreFake, CriuFailureIsReportedAndCleanedUp) {
  FakeCriu criu;
  RestoreOptions o = Opts(WriteSnap(Fitting()));
  o.port = 0;
  auto bad_port = RestoreReplica(o, criu, {});
  ASSERT_FALSE(bad_port.ok());
  EXPECT_EQ(bad_port.status().code(), Code::kInvalidArgument);

  o.port = 47311;
  auto r = RestoreReplica(o, criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("injected"), std::string::npos);
  EXPECT_EQ(criu.restores, 1);
  // The images were unpacked (prefix stripped) before CRIU saw them ...
  std::sort(criu.seen_files.begin(), criu.seen_files.end());
  EXPECT_EQ(criu.seen_files, (std::vector<std::string>{"inventory.img", "pages-1.img"}));
  // ... and removed afterwards.
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, NotAManifestIsCorrupt) {
  FakeCriu criu;
  auto r = RestoreReplica(Opts(WriteSnap({{"format", "something-else"}})), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
}

json GpuManifest(json m, const std::string& name) {
  GpuCaptureInfo g;
  g.driver_version = "580.65.06";
  g.processes = 1;
  g.devices = {test::FakeCudaDriver::Device(0, "GPU-11111111-2222-3333-4444-555555555555", name)};
  g.used_bytes = {8ull << 30};
  m["gpu"] = ToJson(g);
  return m;
}

TEST_F(RestoreFake, GpuSnapshotOnAHostWithoutADriverTouchesNothing) {
  FakeCriu criu;
  auto r = RestoreReplica(Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA H100 80GB HBM3"))), criu, {}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("GPU state of 1 CUDA process(es) on 1 GPU(s) (NVIDIA H100 80GB HBM3); this "
                                      "host has no usable NVIDIA driver"),
            std::string::npos)
      << r.status().message();
  EXPECT_EQ(criu.restores, 0);
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, GpuOfAnotherModelOrDriverBranchIsRefusedBeforeTouchingAnything) {
  FakeCriu criu;
  test::FakeCudaDriver cuda;
  cuda.devices = {test::FakeCudaDriver::Device(0, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "NVIDIA L4")};
  auto r = RestoreReplica(Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA H100 80GB HBM3"))), criu, {}, &cuda);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("GPU 0 is NVIDIA L4"), std::string::npos) << r.status().message();

  cuda.driver_version = "570.133.20";
  auto branch = RestoreReplica(Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA L4"))), criu, {}, &cuda);
  ASSERT_FALSE(branch.ok());
  EXPECT_NE(branch.status().message().find("captured with NVIDIA driver 580.65.06; this host runs 570.133.20"),
            std::string::npos)
      << branch.status().message();
  EXPECT_EQ(criu.restores, 0);
  EXPECT_EQ(std::count(cuda.calls.begin(), cuda.calls.end(), "restore"), 0);
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, GpuOfTheSameModelElsewhereGetsPairedAndReachesCriu) {
  FakeCriu criu;
  test::FakeCudaDriver cuda;
  cuda.devices = {test::FakeCudaDriver::Device(0, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")};
  RestoreOptions o = Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA H100 80GB HBM3")));
  o.port = 47312;
  auto r = RestoreReplica(o, criu, {}, &cuda);
  ASSERT_FALSE(r.ok());  // the fake CRIU fails after the check passed
  EXPECT_NE(r.status().message().find("injected"), std::string::npos);
  EXPECT_EQ(criu.restores, 1);
}

}  // namespace
}  // namespace hotboot
