// The GPU side of a capture: find the CUDA processes of a tree, move their
// GPU state into host memory with the driver's checkpoint API before CRIU
// dumps them (lock, then checkpoint), and bring it back after CRIU restored
// them (restore onto this host's GPUs, then unlock). All of it goes through
// the CudaDriver seam (hotboot/cuda_driver.h, in host/), so it is tested
// against fakes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/cuda_driver.h"
#include "hotboot/host_info.h"  // ProcessTree
#include "hotboot/status.h"

namespace hotboot {

// What a capture recorded about the GPUs (the manifest's "gpu" object).
struct GpuCaptureInfo {
  std::string driver_version;
  int cuda_version = 0;
  std::vector<GpuDevice> devices;     // every device of the build host
  std::vector<uint64_t> used_bytes;   // per device: memory the checkpoint released
  int processes = 0;                  // CUDA processes checkpointed
  double lock_ms = 0, checkpoint_ms = 0;
  // Devices whose state the checkpoint holds (used_bytes > 0; all when none).
  std::vector<GpuDevice> Captured() const;
};
nlohmann::json ToJson(const GpuCaptureInfo& g);
Result<GpuCaptureInfo> GpuCaptureInfoFromJson(const nlohmann::json& j);

// A capture in progress: the processes it locked or checkpointed, so that a
// failure at any later step can give them back their GPUs (Rollback).
class GpuCheckpoint {
 public:
  GpuCheckpoint() = default;
  GpuCheckpoint(GpuCheckpoint&&) = default;
  GpuCheckpoint& operator=(GpuCheckpoint&&) = default;

  // Locks every CUDA process among `pids` (all of them before any is
  // checkpointed, so none runs against a half-captured peer), then
  // checkpoints each. On failure, rolls back what it did and returns why.
  // No CUDA process among `pids`: an empty capture (processes == 0).
  static Result<GpuCheckpoint> Take(CudaDriver& driver, const std::vector<pid_t>& pids,
                                    std::chrono::milliseconds lock_timeout);

  const GpuCaptureInfo& info() const { return info_; }
  bool empty() const { return info_.processes == 0; }
  // Restores and unlocks every process this capture touched, leaving them
  // running as before; safe to call twice.
  Status Rollback();

 private:
  CudaDriver* driver_ = nullptr;
  std::vector<std::pair<pid_t, CudaProcessState>> touched_;
  GpuCaptureInfo info_;
};

// Which GPU of this host takes each captured GPU: the same UUID when present,
// otherwise an unused device of the same name and compute capability with
// enough free memory. kIncompatible naming every reason when some cannot be
// placed. Empty pairs when every captured GPU is here (the driver's default).
Result<std::vector<GpuPair>> PlanGpuPairs(const GpuCaptureInfo& captured, const std::vector<GpuDevice>& host);

// After CRIU restored a tree: restores and unlocks every checkpointed CUDA
// process among `pids`, expecting `expected` of them. On failure the caller
// must not report the replica ready (the processes may be stuck LOCKED).
struct GpuRestoreStats {
  int processes = 0;
  double restore_ms = 0, unlock_ms = 0;
};
Result<GpuRestoreStats> RestoreGpuProcesses(CudaDriver& driver, const std::vector<pid_t>& pids,
                                            const std::vector<GpuPair>& pairs, int expected);

}  // namespace hotboot
