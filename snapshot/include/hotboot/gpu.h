// The seam around the CUDA driver, and the GPU side of a capture: find the
// CUDA processes of a tree, move their GPU state into host memory with the
// driver's checkpoint API before CRIU dumps them (lock, then checkpoint), and
// bring it back after CRIU restored them (restore onto this host's GPUs, then
// unlock). One real implementation loads libcuda.so.1 at run time, so hotboot
// runs on hosts with no driver; tests use fakes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/status.h"

namespace hotboot {

struct GpuDevice {
  int ordinal = 0;
  std::string uuid;  // "GPU-6b2a...": what the driver's checkpoint API pairs by
  std::string name;  // "NVIDIA H100 80GB HBM3"
  int cc_major = 0, cc_minor = 0;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;  // at the time of the query
};

// The driver's view of a process (CUprocessState).
enum class CudaProcessState { kRunning, kLocked, kCheckpointed, kFailed };
const char* CudaProcessStateName(CudaProcessState s);

// Restore the GPU state captured on `old_uuid` onto `new_uuid`.
struct GpuPair {
  std::string old_uuid, new_uuid;
};

class CudaDriver {
 public:
  virtual ~CudaDriver() = default;
  virtual std::string DriverVersion() = 0;  // display driver, "580.65.06"; "" unknown
  virtual int CudaVersion() = 0;            // 13000 for CUDA 13.0
  // Every device with its free memory now. Free memory takes a CUDA context
  // (about 0.2 s to create on an H100); without `free_memory` none is made
  // and free_bytes is the total.
  virtual Result<std::vector<GpuDevice>> Devices(bool free_memory = true) = 0;
  // kNotFound when `pid` is not a CUDA process (no driver restore thread).
  virtual Result<CudaProcessState> ProcessState(pid_t pid) = 0;
  // RUNNING -> LOCKED; on timeout the process stays RUNNING.
  virtual Status Lock(pid_t pid, std::chrono::milliseconds timeout) = 0;
  // LOCKED -> CHECKPOINTED: device memory copied to host memory and released.
  virtual Status Checkpoint(pid_t pid) = 0;
  // CHECKPOINTED -> LOCKED, onto the paired GPUs (none: the same ones).
  virtual Status Restore(pid_t pid, const std::vector<GpuPair>& pairs) = 0;
  // LOCKED -> RUNNING.
  virtual Status Unlock(pid_t pid) = 0;
};

// Loads the driver library (default libcuda.so.1) and initializes it.
// kNotFound with a readable reason when there is no usable driver or GPU.
Result<std::unique_ptr<CudaDriver>> LoadCudaDriver(const std::string& library = "");

// `root` and all its descendants (host PIDs), parents before children.
std::vector<pid_t> ProcessTree(pid_t root);

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
