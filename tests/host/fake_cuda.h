// A CudaDriver fake: the driver's per-process state machine (running ->
// locked -> checkpointed -> locked -> running), devices whose free memory
// follows what the "CUDA processes" hold, a call log, and injected faults.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "hotboot/cuda_driver.h"

namespace hotboot::test {

class FakeCudaDriver : public CudaDriver {
 public:
  struct Proc {
    CudaProcessState state = CudaProcessState::kRunning;
    int device = 0;           // index into devices
    uint64_t bytes = 1u << 30;  // device memory it holds while not checkpointed
  };

  std::string driver_version = "580.65.06";
  int cuda_version = 13000;
  std::vector<GpuDevice> devices;
  std::map<pid_t, Proc> procs;
  // Pids not in `procs` for which this answers: a restored tree gets new
  // host PIDs, which the test cannot know in advance.
  std::function<bool(pid_t)> adopt;
  Proc adopted;  // what an adopted pid starts as

  // Faults: the named call fails for these pids.
  std::set<pid_t> fail_lock, fail_checkpoint, fail_restore, fail_unlock;
  bool fail_devices = false;
  std::vector<std::string> calls;  // "lock 12", "checkpoint 12", ...
  std::vector<std::vector<GpuPair>> restore_pairs;

  static GpuDevice Device(int ordinal, std::string uuid, std::string name = "NVIDIA H100 80GB HBM3",
                          uint64_t total = 80ull << 30) {
    GpuDevice d;
    d.ordinal = ordinal;
    d.uuid = std::move(uuid);
    d.name = std::move(name);
    d.cc_major = 9;
    d.cc_minor = 0;
    d.total_bytes = total;
    d.free_bytes = total;
    return d;
  }

  std::string DriverVersion() override { return driver_version; }
  int CudaVersion() override { return cuda_version; }

  Result<std::vector<GpuDevice>> Devices(bool free_memory = true) override {
    static std::mutex mu;  // the restore asks from two threads
    std::lock_guard l(mu);
    calls.push_back(free_memory ? "devices" : "devices-no-context");
    if (fail_devices) return Internal("cuDeviceGetCount failed: CUDA_ERROR_UNKNOWN (999) (injected)");
    std::vector<GpuDevice> out = devices;
    if (!free_memory) return out;
    for (const auto& [pid, p] : procs) {
      if (p.state != CudaProcessState::kCheckpointed && p.device < static_cast<int>(out.size())) {
        out[p.device].free_bytes -= std::min(out[p.device].free_bytes, p.bytes);
      }
    }
    return out;
  }

  Result<CudaProcessState> ProcessState(pid_t pid) override {
    Proc* p = Find(pid);
    if (!p) return NotFound("pid " + std::to_string(pid) + " is not a CUDA process");
    return p->state;
  }

  Status Lock(pid_t pid, std::chrono::milliseconds) override {
    return Move(pid, "lock", fail_lock, CudaProcessState::kRunning, CudaProcessState::kLocked);
  }
  Status Checkpoint(pid_t pid) override {
    return Move(pid, "checkpoint", fail_checkpoint, CudaProcessState::kLocked, CudaProcessState::kCheckpointed);
  }
  Status Restore(pid_t pid, const std::vector<GpuPair>& pairs) override {
    restore_pairs.push_back(pairs);
    return Move(pid, "restore", fail_restore, CudaProcessState::kCheckpointed, CudaProcessState::kLocked);
  }
  Status Unlock(pid_t pid) override {
    return Move(pid, "unlock", fail_unlock, CudaProcessState::kLocked, CudaProcessState::kRunning);
  }

  bool AllRunning() const {
    for (const auto& [pid, p] : procs) {
      if (p.state != CudaProcessState::kRunning) return false;
    }
    return true;
  }

 private:
  Proc* Find(pid_t pid) {
    auto it = procs.find(pid);
    if (it != procs.end()) return &it->second;
    if (adopt && adopt(pid)) return &(procs[pid] = adopted);
    return nullptr;
  }

  Status Move(pid_t pid, const std::string& what, const std::set<pid_t>& fail, CudaProcessState from,
              CudaProcessState to) {
    calls.push_back(what + " " + std::to_string(pid));
    Proc* p = Find(pid);
    if (!p) return Internal("cuCheckpointProcess " + what + ": CUDA_ERROR_INVALID_VALUE (1): no such CUDA process");
    if (fail.count(pid)) return Internal("cuCheckpointProcess " + what + " failed: CUDA_ERROR_UNKNOWN (999) (injected)");
    if (p->state != from) {
      return Internal("cuCheckpointProcess " + what + " failed: CUDA_ERROR_ILLEGAL_STATE (401): process is " +
                      CudaProcessStateName(p->state));
    }
    p->state = to;
    return Status();
  }
};

}  // namespace hotboot::test
