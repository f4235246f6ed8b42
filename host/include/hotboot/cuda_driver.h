// The seam around the CUDA driver: the devices, and the checkpoint API that
// moves a process's GPU state into host memory and back (lock, checkpoint,
// restore, unlock). One real implementation loads libcuda.so.1 at run time
// (cuda_driver.cpp), so hotboot builds without the toolkit and runs on hosts
// with no driver; tests use fakes (tests/host/fake_cuda.h). What to lock and
// checkpoint, in which order, and what to undo is snapshot/'s (hotboot/gpu.h).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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

}  // namespace hotboot
