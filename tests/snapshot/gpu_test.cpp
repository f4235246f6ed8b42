// The GPU side of capture and restore against a fake driver: order of the
// driver calls, what is recorded, rollback on every failing step, how GPUs
// are paired on another host and why they are refused. The real driver's
// loader is tested in tests/host/cuda_driver_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>

#include "../host/fake_cuda.h"
#include "hotboot/gpu.h"

namespace hotboot {
namespace {

using test::FakeCudaDriver;
using std::chrono::milliseconds;

constexpr const char* kA = "GPU-11111111-2222-3333-4444-555555555555";
constexpr const char* kB = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
constexpr const char* kC = "GPU-12345678-9abc-def0-1234-56789abcdef0";

FakeCudaDriver TwoProcesses() {
  FakeCudaDriver d;
  d.devices = {FakeCudaDriver::Device(0, kA), FakeCudaDriver::Device(1, kB)};
  d.procs[101] = {CudaProcessState::kRunning, 0, 3ull << 30};
  d.procs[102] = {CudaProcessState::kRunning, 1, 2ull << 30};
  return d;
}

size_t IndexOf(const std::vector<std::string>& v, const std::string& s) {
  return static_cast<size_t>(std::find(v.begin(), v.end(), s) - v.begin());
}

TEST(GpuCheckpoint, NoCudaProcessIsAnEmptyCapture) {
  FakeCudaDriver d = TwoProcesses();
  auto c = GpuCheckpoint::Take(d, {7, 8}, milliseconds(100));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->empty());
  EXPECT_EQ(IndexOf(d.calls, "lock 7"), d.calls.size());
}

TEST(GpuCheckpoint, LocksEveryProcessBeforeCheckpointingAnyAndRecordsWhatItHeld) {
  FakeCudaDriver d = TwoProcesses();
  auto c = GpuCheckpoint::Take(d, {1, 101, 102}, milliseconds(100));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->info().processes, 2);
  EXPECT_LT(IndexOf(d.calls, "lock 102"), IndexOf(d.calls, "checkpoint 101"));
  EXPECT_EQ(d.procs[101].state, CudaProcessState::kCheckpointed);
  EXPECT_EQ(d.procs[102].state, CudaProcessState::kCheckpointed);
  ASSERT_EQ(c->info().used_bytes.size(), 2u);
  EXPECT_EQ(c->info().used_bytes[0], 3ull << 30);
  EXPECT_EQ(c->info().used_bytes[1], 2ull << 30);
  EXPECT_EQ(c->info().driver_version, "580.65.06");
  EXPECT_EQ(c->info().Captured().size(), 2u);
}

TEST(GpuCheckpoint, FailedCheckpointGivesEveryProcessItsGpuBack) {
  FakeCudaDriver d = TwoProcesses();
  d.fail_checkpoint = {102};
  auto c = GpuCheckpoint::Take(d, {101, 102}, milliseconds(100));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("checkpointing pid 102"), std::string::npos) << c.status().message();
  EXPECT_TRUE(d.AllRunning());
  // 101 was checkpointed: restored before it is unlocked.
  EXPECT_LT(IndexOf(d.calls, "restore 101"), IndexOf(d.calls, "unlock 101"));
}

TEST(GpuCheckpoint, LockTimeoutUnlocksTheOthers) {
  FakeCudaDriver d = TwoProcesses();
  d.fail_lock = {102};
  auto c = GpuCheckpoint::Take(d, {101, 102}, milliseconds(100));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("locking pid 102"), std::string::npos);
  EXPECT_TRUE(d.AllRunning());
  EXPECT_EQ(IndexOf(d.calls, "checkpoint 101"), d.calls.size());
}

TEST(GpuCheckpoint, AProcessSomeoneElseLockedIsLeftAlone) {
  FakeCudaDriver d = TwoProcesses();
  d.procs[102].state = CudaProcessState::kLocked;
  auto c = GpuCheckpoint::Take(d, {101, 102}, milliseconds(100));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("pid 102 is locked"), std::string::npos);
  EXPECT_EQ(IndexOf(d.calls, "lock 101"), d.calls.size());
}

TEST(GpuCheckpoint, RollbackAfterSuccessIsIdempotent) {
  FakeCudaDriver d = TwoProcesses();
  auto c = GpuCheckpoint::Take(d, {101}, milliseconds(100));
  ASSERT_TRUE(c.ok());
  // A later build step fails: the builder rolls back; twice is harmless.
  EXPECT_TRUE(c->Rollback().ok());
  EXPECT_TRUE(c->Rollback().ok());
  EXPECT_TRUE(d.AllRunning());
}

TEST(GpuCheckpoint, RollbackReportsAProcessItCouldNotRestore) {
  FakeCudaDriver d = TwoProcesses();
  auto c = GpuCheckpoint::Take(d, {101, 102}, milliseconds(100));
  ASSERT_TRUE(c.ok());
  d.fail_restore = {101};
  Status s = c->Rollback();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("GPU rollback"), std::string::npos);
  EXPECT_EQ(d.procs[102].state, CudaProcessState::kRunning);
  EXPECT_EQ(d.procs[101].state, CudaProcessState::kCheckpointed);
  EXPECT_EQ(IndexOf(d.calls, "unlock 101"), d.calls.size());  // would fail in that state
}

GpuCaptureInfo CapturedOn(std::vector<GpuDevice> devs, std::vector<uint64_t> used) {
  GpuCaptureInfo g;
  g.devices = std::move(devs);
  g.used_bytes = std::move(used);
  g.processes = 1;
  g.driver_version = "580.65.06";
  return g;
}

TEST(GpuPairs, SameHostNeedsNoPairs) {
  auto g = CapturedOn({FakeCudaDriver::Device(0, kA)}, {4ull << 30});
  auto p = PlanGpuPairs(g, {FakeCudaDriver::Device(0, kA)});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(p->empty());
}

TEST(GpuPairs, AnotherHostGetsOnePairPerCapturedGpu) {
  // Captured on A (used) and B (idle); this host has C and A-less devices.
  auto g = CapturedOn({FakeCudaDriver::Device(0, kA), FakeCudaDriver::Device(1, kB)}, {4ull << 30, 0});
  auto p = PlanGpuPairs(g, {FakeCudaDriver::Device(0, kC)});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->size(), 1u);
  EXPECT_EQ((*p)[0].old_uuid, kA);
  EXPECT_EQ((*p)[0].new_uuid, kC);
}

TEST(GpuPairs, TwoGpusNeverShareOneTarget) {
  auto g = CapturedOn({FakeCudaDriver::Device(0, kA), FakeCudaDriver::Device(1, kB)}, {1u << 30, 1u << 30});
  auto p = PlanGpuPairs(g, {FakeCudaDriver::Device(0, kB), FakeCudaDriver::Device(1, kC)});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(p->size(), 2u);  // every captured GPU is listed once pairs are given
  EXPECT_EQ((*p)[0].old_uuid, kB);
  EXPECT_EQ((*p)[0].new_uuid, kB);
  EXPECT_EQ((*p)[1].old_uuid, kA);
  EXPECT_EQ((*p)[1].new_uuid, kC);
}

TEST(GpuPairs, RefusalsSayWhy) {
  auto g = CapturedOn({FakeCudaDriver::Device(0, kA), FakeCudaDriver::Device(1, kB)}, {1u << 30, 1u << 30});
  auto count = PlanGpuPairs(g, {FakeCudaDriver::Device(0, kC)});
  ASSERT_FALSE(count.ok());
  EXPECT_EQ(count.status().code(), Code::kIncompatible);
  EXPECT_NE(count.status().message().find("2 GPU(s); this host has 1"), std::string::npos);

  auto one = CapturedOn({FakeCudaDriver::Device(0, kA)}, {1u << 30});
  GpuDevice a100 = FakeCudaDriver::Device(0, kC, "NVIDIA A100-SXM4-80GB");
  a100.cc_major = 8;
  auto model = PlanGpuPairs(one, {a100});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("NVIDIA A100-SXM4-80GB (sm 8.0)"), std::string::npos)
      << model.status().message();

  auto big = CapturedOn({FakeCudaDriver::Device(0, kA)}, {70ull << 30});
  GpuDevice busy = FakeCudaDriver::Device(0, kC);
  busy.free_bytes = 10ull << 30;
  auto mem = PlanGpuPairs(big, {busy});
  ASSERT_FALSE(mem.ok());
  EXPECT_NE(mem.status().message().find("10.00 GiB free, the state needs 70.00 GiB"), std::string::npos)
      << mem.status().message();
}

TEST(GpuRestore, RestoresAllThenUnlocksAllWithThePairs) {
  FakeCudaDriver d = TwoProcesses();
  d.procs[101].state = d.procs[102].state = CudaProcessState::kCheckpointed;
  std::vector<GpuPair> pairs = {{kA, kC}};
  auto r = RestoreGpuProcesses(d, {1, 101, 102}, pairs, 2);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->processes, 2);
  EXPECT_TRUE(d.AllRunning());
  EXPECT_LT(IndexOf(d.calls, "restore 102"), IndexOf(d.calls, "unlock 101"));
  ASSERT_EQ(d.restore_pairs.size(), 2u);
  EXPECT_EQ(d.restore_pairs[0].at(0).new_uuid, kC);
}

TEST(GpuRestore, MissingProcessOrFailedRestoreIsNotReady) {
  FakeCudaDriver d = TwoProcesses();
  d.procs[101].state = CudaProcessState::kCheckpointed;
  d.procs.erase(102);
  auto missing = RestoreGpuProcesses(d, {101}, {}, 2);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("1 checkpointed CUDA processes; the snapshot recorded 2"),
            std::string::npos);

  d.fail_restore = {101};
  auto failed = RestoreGpuProcesses(d, {101}, {}, 1);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("GPU restore of pid 101"), std::string::npos);
  EXPECT_EQ(IndexOf(d.calls, "unlock 101"), d.calls.size());

  d.procs[101].state = CudaProcessState::kRunning;
  auto running = RestoreGpuProcesses(d, {101}, {}, 1);
  ASSERT_FALSE(running.ok());
  EXPECT_NE(running.status().message().find("expected checkpointed"), std::string::npos);
}

TEST(GpuManifest, RoundTripsAndDistrustsItsFields) {
  FakeCudaDriver d = TwoProcesses();
  auto c = GpuCheckpoint::Take(d, {101, 102}, milliseconds(100));
  ASSERT_TRUE(c.ok());
  nlohmann::json j = ToJson(c->info());
  EXPECT_EQ(j["devices"][0]["compute_capability"], "9.0");
  auto back = GpuCaptureInfoFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->processes, 2);
  EXPECT_EQ(back->devices[1].uuid, kB);
  EXPECT_EQ(back->used_bytes[0], 3ull << 30);

  for (auto bad : {nlohmann::json(42), nlohmann::json::object(), nlohmann::json{{"processes", "two"}, {"devices", {}}},
                   nlohmann::json{{"processes", 1}, {"devices", nlohmann::json::array()}}}) {
    auto r = GpuCaptureInfoFromJson(bad);
    ASSERT_FALSE(r.ok()) << bad.dump();
    EXPECT_EQ(r.status().code(), Code::kCorrupt);
  }
  j["devices"][0]["compute_capability"] = "nine";
  EXPECT_FALSE(GpuCaptureInfoFromJson(j).ok());
}

}  // namespace
}  // namespace hotboot
