// The GPU steps of build and restore around the real CRIU and the real
// reference server, with a fake CUDA driver that takes the server for a CUDA
// process: the checkpoint happens between quiesce and dump, the manifest
// records it, restore pairs the GPUs and unlocks the process before the
// readiness check, and a failing GPU step leaves no snapshot and no replica.
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "../host/fake_cuda.h"
#include "hotboot/builder.h"
#include "hotboot/restore.h"
#include "test_util.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using test::FakeCudaDriver;

constexpr const char* kBuildGpu = "GPU-11111111-2222-3333-4444-555555555555";
constexpr const char* kOtherGpu = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

bool IsServer(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  std::getline(in, comm);
  return comm == "hotboot-server";
}

FakeCudaDriver DriverWith(const char* uuid, CudaProcessState server_state) {
  FakeCudaDriver d;
  d.devices = {FakeCudaDriver::Device(0, uuid)};
  d.adopt = IsServer;
  d.adopted = {server_state, 0, 6ull << 30};
  return d;
}

BuildSpec TinySpec() {
  BuildSpec spec;
  spec.command = {test::Bin("hotboot-server"), "--model", test::TinyModel(), "--port", "0", "--control-stdio"};
  return spec;
}

// Live reference servers (zombies are not: an earlier case's ended server may
// wait to be reaped, and drop out between two looks).
std::set<pid_t> LiveServers() {
  std::set<pid_t> pids;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (!std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const pid_t pid = std::stoi(name);
    if (IsServer(pid) && test::PidAlive(pid)) pids.insert(pid);
  }
  return pids;
}

// Servers alive now that were not in `before`.
std::vector<pid_t> NewServers(const std::set<pid_t>& before) {
  std::vector<pid_t> added;
  for (pid_t p : LiveServers())
    if (!before.contains(p)) added.push_back(p);
  return added;
}

size_t IndexOf(const std::vector<std::string>& v, const std::string& prefix) {
  return static_cast<size_t>(
      std::find_if(v.begin(), v.end(), [&](const std::string& s) { return s.rfind(prefix, 0) == 0; }) - v.begin());
}

TEST(GpuFake, BuildCheckpointsTheServerAndRestorePairsAndUnlocksIt) {
  const std::string snap = test::ScratchDir() + "/gpu-fake.hbsnap";
  auto criu = MakeLibCriu();
  FakeCudaDriver build_gpu = DriverWith(kBuildGpu, CudaProcessState::kRunning);
  std::vector<std::string> phases;
  BuildEvents bev;
  bev.on_phase = [&](const std::string& p) { phases.push_back(p); };
  auto built = BuildSnapshot(TinySpec(), snap, *criu, bev, &build_gpu);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  // Lock, then checkpoint, between quiesce and the CRIU dump.
  EXPECT_LT(IndexOf(build_gpu.calls, "lock "), IndexOf(build_gpu.calls, "checkpoint "));
  EXPECT_LT(IndexOf(phases, "quiesce"), IndexOf(phases, "gpu-checkpoint"));
  EXPECT_LT(IndexOf(phases, "gpu-checkpoint"), IndexOf(phases, "dump"));
  ASSERT_TRUE(built->manifest.gpu.has_value());
  const ManifestGpu& gpu = *built->manifest.gpu;
  EXPECT_EQ(gpu.processes, 1);
  ASSERT_EQ(gpu.devices.size(), 1u);
  EXPECT_EQ(gpu.devices.at(0).uuid, kBuildGpu);
  EXPECT_EQ(gpu.devices.at(0).used_bytes, 6ull << 30);

  // Another host: the same GPU model under another UUID.
  FakeCudaDriver here = DriverWith(kOtherGpu, CudaProcessState::kCheckpointed);
  RestoreOptions ro;
  ro.snapshot_path = snap;
  ro.port = test::FreePort();
  std::vector<std::string> rphases;
  RestoreEvents rev;
  rev.on_phase = [&](const std::string& p) { rphases.push_back(p); };
  auto r = RestoreReplica(ro, *criu, rev, &here);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT(IndexOf(here.calls, "restore "), IndexOf(here.calls, "unlock "));
  ASSERT_EQ(here.restore_pairs.size(), 1u);
  ASSERT_EQ(here.restore_pairs[0].size(), 1u);
  EXPECT_EQ(here.restore_pairs[0][0].old_uuid, kBuildGpu);
  EXPECT_EQ(here.restore_pairs[0][0].new_uuid, kOtherGpu);
  EXPECT_TRUE(here.AllRunning());
  EXPECT_LT(IndexOf(rphases, "gpu-restore"), IndexOf(rphases, "after-restore"));
  EXPECT_TRUE(r->timings_ms.contains("gpu_restore"));
  EXPECT_EQ(test::HttpStatus(ro.port, "/readyz"), 200);

  // The same snapshot on a host whose driver fails the GPU restore: not ready,
  // and no replica left behind.
  FakeCudaDriver broken = DriverWith(kOtherGpu, CudaProcessState::kCheckpointed);
  broken.adopt = [&](pid_t p) {
    if (!IsServer(p)) return false;
    broken.fail_restore.insert(p);
    return true;
  };
  ro.port = test::FreePort();
  auto bad = RestoreReplica(ro, *criu, {}, &broken);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("GPU state was not restored; it is not ready"), std::string::npos)
      << bad.status().message();
  ASSERT_EQ(broken.procs.size(), 1u);
  const pid_t stuck = broken.procs.begin()->first;
  for (int i = 0; i < 50 && test::PidAlive(stuck); ++i) ::usleep(100 * 1000);
  EXPECT_FALSE(test::PidAlive(stuck));
  EXPECT_NE(test::HttpStatus(ro.port, "/readyz"), 200);

  // Another GPU model: refused before anything is restored, and without the
  // CUDA context that free memory needs.
  FakeCudaDriver other_model = DriverWith(kOtherGpu, CudaProcessState::kCheckpointed);
  other_model.devices[0].name = "NVIDIA A100-SXM4-80GB";
  other_model.devices[0].cc_minor = 0, other_model.devices[0].cc_major = 8;
  ro.port = test::FreePort();
  auto refused = RestoreReplica(ro, *criu, {}, &other_model);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kIncompatible) << refused.status().ToString();
  EXPECT_TRUE(other_model.procs.empty()) << "nothing was restored";
  EXPECT_EQ(std::count(other_model.calls.begin(), other_model.calls.end(), "devices"), 0);

  // Enough memory by the context-free look, not by the real one (another
  // process holds most of the GPU): found beside the CRIU restore, and the
  // restored tree is ended, never reported ready.
  FakeCudaDriver full = DriverWith(kOtherGpu, CudaProcessState::kCheckpointed);
  full.procs[1] = {CudaProcessState::kRunning, 0, 78ull << 30};  // not ours: never restored or killed
  ro.port = test::FreePort();
  const std::set<pid_t> servers_before = LiveServers();
  auto no_room = RestoreReplica(ro, *criu, {}, &full);
  ASSERT_FALSE(no_room.ok());
  EXPECT_EQ(no_room.status().code(), Code::kIncompatible) << no_room.status().ToString();
  EXPECT_NE(no_room.status().message().find("free"), std::string::npos) << no_room.status().message();
  EXPECT_NE(no_room.status().message().find("were ended"), std::string::npos) << no_room.status().message();
  auto added = NewServers(servers_before);
  for (int i = 0; i < 50 && !added.empty(); ++i, added = NewServers(servers_before)) ::usleep(100 * 1000);
  EXPECT_TRUE(added.empty()) << "the restored server was ended";
  EXPECT_TRUE(full.restore_pairs.empty()) << "no GPU state was restored";
  EXPECT_NE(test::HttpStatus(ro.port, "/readyz"), 200);
}

TEST(GpuFake, FailedGpuCheckpointGivesTheGpuBackAndPublishesNothing) {
  const std::string snap = test::ScratchDir() + "/gpu-fail.hbsnap";
  auto criu = MakeLibCriu();
  FakeCudaDriver gpu = DriverWith(kBuildGpu, CudaProcessState::kRunning);
  gpu.adopt = [&](pid_t p) {
    if (!IsServer(p)) return false;
    gpu.fail_checkpoint.insert(p);
    return true;
  };
  auto built = BuildSnapshot(TinySpec(), snap, *criu, {}, &gpu);
  ASSERT_FALSE(built.ok());
  EXPECT_NE(built.status().message().find("GPU capture: checkpointing pid"), std::string::npos)
      << built.status().message();
  EXPECT_TRUE(gpu.AllRunning());  // unlocked again before the server was stopped
  EXPECT_LT(IndexOf(gpu.calls, "lock "), IndexOf(gpu.calls, "unlock "));
  EXPECT_FALSE(fs::exists(snap));
}

}  // namespace
}  // namespace hotboot
