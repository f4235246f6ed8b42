// The real CudaDriver: libcuda.so.1 opened with dlopen, so that hotboot
// builds without the CUDA toolkit and runs on hosts without a driver. The
// few driver types it needs are declared here with their ABI layout (the
// CUDA 12.8+/13 checkpoint API, cuda.h "CUDA_CHECKPOINT"); when cuda.h is
// available at build time the layouts are checked against it.
#include <dlfcn.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

#include "hotboot/cuda_driver.h"

#if __has_include(<cuda.h>)
#include <cuda.h>
#define HOTBOOT_HAVE_CUDA_H 1
#endif

namespace hotboot {
namespace {

namespace drv {
using Result = int;  // CUresult
using Device = int;  // CUdevice
using Context = void*;
struct Uuid {
  char bytes[16];
};
struct LockArgs {
  unsigned int timeout_ms;
  unsigned int reserved0;
  uint64_t reserved1[7];
};
struct CheckpointArgs {
  uint64_t reserved[8];
};
struct GpuPair {
  Uuid old_uuid, new_uuid;
};
struct RestoreArgs {
  GpuPair* pairs;
  unsigned int pair_count;
  char reserved[52 - sizeof(GpuPair*)];
  uint64_t reserved1;
};
struct UnlockArgs {
  uint64_t reserved[8];
};
constexpr Result kSuccess = 0;
constexpr Result kNotFound = 500;
constexpr int kAttrCcMajor = 75, kAttrCcMinor = 76;
constexpr int kStateRunning = 0, kStateLocked = 1, kStateCheckpointed = 2, kStateFailed = 3;

static_assert(sizeof(LockArgs) == 64 && sizeof(CheckpointArgs) == 64 && sizeof(UnlockArgs) == 64);
static_assert(sizeof(RestoreArgs) == 64 && offsetof(RestoreArgs, pair_count) == 8);
static_assert(sizeof(GpuPair) == 32);
#ifdef HOTBOOT_HAVE_CUDA_H
static_assert(sizeof(LockArgs) == sizeof(CUcheckpointLockArgs));
static_assert(offsetof(LockArgs, timeout_ms) == offsetof(CUcheckpointLockArgs, timeoutMs));
static_assert(sizeof(RestoreArgs) == sizeof(CUcheckpointRestoreArgs));
static_assert(offsetof(RestoreArgs, pairs) == offsetof(CUcheckpointRestoreArgs, gpuPairs));
static_assert(offsetof(RestoreArgs, pair_count) == offsetof(CUcheckpointRestoreArgs, gpuPairsCount));
static_assert(sizeof(GpuPair) == sizeof(CUcheckpointGpuPair));
static_assert(sizeof(CheckpointArgs) == sizeof(CUcheckpointCheckpointArgs));
static_assert(sizeof(UnlockArgs) == sizeof(CUcheckpointUnlockArgs));
static_assert(kAttrCcMajor == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
static_assert(kAttrCcMinor == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
static_assert(kNotFound == CUDA_ERROR_NOT_FOUND);
static_assert(kStateCheckpointed == CU_PROCESS_STATE_CHECKPOINTED && kStateFailed == CU_PROCESS_STATE_FAILED);
#endif
}  // namespace drv

std::string FormatUuid(const drv::Uuid& u) {
  // nvidia-smi's spelling: GPU-8-4-4-4-12 hex digits.
  static const char* hex = "0123456789abcdef";
  std::string s = "GPU-";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    const auto b = static_cast<unsigned char>(u.bytes[i]);
    s += hex[b >> 4];
    s += hex[b & 15];
  }
  return s;
}

Result<drv::Uuid> ParseUuid(const std::string& s) {
  drv::Uuid u{};
  std::string digits;
  for (char c : s.rfind("GPU-", 0) == 0 ? s.substr(4) : s) {
    if (c != '-') digits += c;
  }
  if (digits.size() != 32) return InvalidArgument("not a GPU UUID: '" + s + "'");
  for (int i = 0; i < 16; ++i) {
    char* end = nullptr;
    const std::string byte = digits.substr(2 * i, 2);
    const long v = std::strtol(byte.c_str(), &end, 16);
    if (*end != '\0') return InvalidArgument("not a GPU UUID: '" + s + "'");
    u.bytes[i] = static_cast<char>(v);
  }
  return u;
}

class DlCudaDriver final : public CudaDriver {
 public:
  ~DlCudaDriver() override {
    if (handle_) ::dlclose(handle_);
  }

  Status Open(const std::string& library) {
    const std::string lib = library.empty() ? "libcuda.so.1" : library;
    handle_ = ::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle_) {
      const char* e = ::dlerror();
      return NotFound("no NVIDIA driver: cannot load " + lib + " (" + (e ? e : "?") + ")");
    }
    bool ok = Sym("cuInit", init_) && Sym("cuDriverGetVersion", driver_get_version_) &&
              Sym("cuDeviceGetCount", device_get_count_) && Sym("cuDeviceGet", device_get_) &&
              Sym("cuDeviceGetName", device_get_name_) && Sym("cuDeviceGetAttribute", device_get_attribute_) &&
              Sym("cuDeviceTotalMem_v2", device_total_mem_) &&
              Sym("cuDevicePrimaryCtxRetain", primary_ctx_retain_) &&
              Sym("cuDevicePrimaryCtxRelease_v2", primary_ctx_release_) &&
              Sym("cuCtxPushCurrent_v2", ctx_push_) && Sym("cuCtxPopCurrent_v2", ctx_pop_) &&
              Sym("cuMemGetInfo_v2", mem_get_info_) && Sym("cuGetErrorName", get_error_name_);
    if (!ok) return NotFound("the NVIDIA driver " + lib + " lacks " + missing_);
    // cuDeviceGetUuid became the _v2 behaviour in CUDA 13; either works here.
    if (!Sym("cuDeviceGetUuid_v2", device_get_uuid_) && !Sym("cuDeviceGetUuid", device_get_uuid_)) {
      return NotFound("the NVIDIA driver " + lib + " lacks cuDeviceGetUuid");
    }
    ok = Sym("cuCheckpointProcessGetRestoreThreadId", get_restore_tid_) &&
         Sym("cuCheckpointProcessGetState", get_state_) && Sym("cuCheckpointProcessLock", lock_) &&
         Sym("cuCheckpointProcessCheckpoint", checkpoint_) && Sym("cuCheckpointProcessRestore", restore_) &&
         Sym("cuCheckpointProcessUnlock", unlock_);
    if (!ok) {
      return NotFound("the NVIDIA driver " + lib + " has no checkpoint API (" + missing_ +
                      "); hotboot needs driver 570 or newer for GPU snapshots");
    }
    // Restoring another process's GPU state needs an initialized driver in
    // the caller (or persistence mode): cuInit once, here.
    if (drv::Result r = init_(0); r != drv::kSuccess) {
      return NotFound("the NVIDIA driver did not initialize: " + Call("cuInit", r));
    }
    return Status();
  }

  std::string DriverVersion() override {
    std::ifstream in("/sys/module/nvidia/version");
    std::string v;
    std::getline(in, v);
    return v;
  }

  int CudaVersion() override {
    int v = 0;
    return driver_get_version_(&v) == drv::kSuccess ? v : 0;
  }

  Result<std::vector<GpuDevice>> Devices(bool free_memory) override {
    int n = 0;
    if (drv::Result r = device_get_count_(&n); r != drv::kSuccess) return Internal(Call("cuDeviceGetCount", r));
    std::vector<GpuDevice> out;
    for (int i = 0; i < n; ++i) {
      drv::Device d = 0;
      if (drv::Result r = device_get_(&d, i); r != drv::kSuccess) return Internal(Call("cuDeviceGet", r));
      GpuDevice g;
      g.ordinal = i;
      char name[256] = {};
      drv::Uuid uuid{};
      size_t total = 0;
      drv::Result r = device_get_name_(name, sizeof name - 1, d);
      if (r == drv::kSuccess) r = device_get_uuid_(&uuid, d);
      if (r == drv::kSuccess) r = device_get_attribute_(&g.cc_major, drv::kAttrCcMajor, d);
      if (r == drv::kSuccess) r = device_get_attribute_(&g.cc_minor, drv::kAttrCcMinor, d);
      if (r == drv::kSuccess) r = device_total_mem_(&total, d);
      if (r != drv::kSuccess) return Internal(Call("querying GPU " + std::to_string(i), r));
      g.name = name;
      g.uuid = FormatUuid(uuid);
      g.total_bytes = total;
      g.free_bytes = total;
      if (!free_memory) {
        out.push_back(std::move(g));
        continue;
      }
      // Free memory needs a context; the primary one is shared with nothing
      // in this process and released right away. A GPU that gives none (busy
      // in exclusive-process mode, say) has nothing free for a restore: it
      // counts as full, so the plan can still pick another.
      drv::Context ctx = nullptr;
      size_t free_b = 0, total_b = 0;
      if (primary_ctx_retain_(&ctx, d) == drv::kSuccess) {
        if (ctx_push_(ctx) == drv::kSuccess) {
          if (mem_get_info_(&free_b, &total_b) != drv::kSuccess) free_b = 0;
          drv::Context popped = nullptr;
          ctx_pop_(&popped);
        }
        primary_ctx_release_(d);
      }
      g.free_bytes = free_b;
      out.push_back(std::move(g));
    }
    return out;
  }

  Result<CudaProcessState> ProcessState(pid_t pid) override {
    // A process the driver keeps no restore thread for has never used CUDA
    // (the test the CRIU CUDA plugin makes, too).
    int tid = 0;
    if (drv::Result r = get_restore_tid_(pid, &tid); r != drv::kSuccess) {
      return NotFound("pid " + std::to_string(pid) + " is not a CUDA process (" +
                      Call("cuCheckpointProcessGetRestoreThreadId", r) + ")");
    }
    int state = -1;
    if (drv::Result r = get_state_(pid, &state); r != drv::kSuccess) {
      return Internal(Call("cuCheckpointProcessGetState(pid " + std::to_string(pid) + ")", r));
    }
    switch (state) {
      case drv::kStateRunning: return CudaProcessState::kRunning;
      case drv::kStateLocked: return CudaProcessState::kLocked;
      case drv::kStateCheckpointed: return CudaProcessState::kCheckpointed;
      case drv::kStateFailed: return CudaProcessState::kFailed;
    }
    return Internal("cuCheckpointProcessGetState(pid " + std::to_string(pid) + ") returned unknown state " +
                    std::to_string(state));
  }

  Status Lock(pid_t pid, std::chrono::milliseconds timeout) override {
    drv::LockArgs a{};
    a.timeout_ms = static_cast<unsigned>(std::max<int64_t>(1, timeout.count()));
    return Check("cuCheckpointProcessLock", pid, lock_(pid, &a));
  }
  Status Checkpoint(pid_t pid) override {
    drv::CheckpointArgs a{};
    return Check("cuCheckpointProcessCheckpoint", pid, checkpoint_(pid, &a));
  }
  Status Restore(pid_t pid, const std::vector<GpuPair>& pairs) override {
    std::vector<drv::GpuPair> raw;
    for (const auto& p : pairs) {
      HB_ASSIGN_OR_RETURN(drv::Uuid o, ParseUuid(p.old_uuid));
      HB_ASSIGN_OR_RETURN(drv::Uuid n, ParseUuid(p.new_uuid));
      raw.push_back({o, n});
    }
    drv::RestoreArgs a{};
    a.pairs = raw.empty() ? nullptr : raw.data();
    a.pair_count = static_cast<unsigned>(raw.size());
    return Check("cuCheckpointProcessRestore", pid, restore_(pid, raw.empty() ? nullptr : &a));
  }
  Status Unlock(pid_t pid) override {
    drv::UnlockArgs a{};
    return Check("cuCheckpointProcessUnlock", pid, unlock_(pid, &a));
  }

 private:
  template <typename F>
  bool Sym(const char* name, F*& fn) {
    fn = reinterpret_cast<F*>(::dlsym(handle_, name));
    if (!fn && missing_.empty()) missing_ = name;
    return fn != nullptr;
  }

  std::string Call(const std::string& what, drv::Result r) {
    const char* name = nullptr;
    if (get_error_name_) get_error_name_(r, &name);
    if (!name) {
      // The stub library (and a driver too old to know a code) name nothing.
      switch (r) {
        case 3: name = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case 34: name = "CUDA_ERROR_STUB_LIBRARY (the toolkit's stub, not a driver)"; break;
        case 35: name = "CUDA_ERROR_INSUFFICIENT_DRIVER"; break;
        case 100: name = "CUDA_ERROR_NO_DEVICE"; break;
      }
    }
    return what + " failed: " + (name ? name : "CUDA error") + " (" + std::to_string(r) + ")";
  }
  Status Check(const std::string& fn, pid_t pid, drv::Result r) {
    if (r == drv::kSuccess) return Status();
    return Internal(Call(fn + "(pid " + std::to_string(pid) + ")", r));
  }

  void* handle_ = nullptr;
  std::string missing_;
  drv::Result (*init_)(unsigned) = nullptr;
  drv::Result (*driver_get_version_)(int*) = nullptr;
  drv::Result (*device_get_count_)(int*) = nullptr;
  drv::Result (*device_get_)(drv::Device*, int) = nullptr;
  drv::Result (*device_get_name_)(char*, int, drv::Device) = nullptr;
  drv::Result (*device_get_uuid_)(drv::Uuid*, drv::Device) = nullptr;
  drv::Result (*device_get_attribute_)(int*, int, drv::Device) = nullptr;
  drv::Result (*device_total_mem_)(size_t*, drv::Device) = nullptr;
  drv::Result (*primary_ctx_retain_)(drv::Context*, drv::Device) = nullptr;
  drv::Result (*primary_ctx_release_)(drv::Device) = nullptr;
  drv::Result (*ctx_push_)(drv::Context) = nullptr;
  drv::Result (*ctx_pop_)(drv::Context*) = nullptr;
  drv::Result (*mem_get_info_)(size_t*, size_t*) = nullptr;
  drv::Result (*get_error_name_)(drv::Result, const char**) = nullptr;
  drv::Result (*get_restore_tid_)(int, int*) = nullptr;
  drv::Result (*get_state_)(int, int*) = nullptr;
  drv::Result (*lock_)(int, drv::LockArgs*) = nullptr;
  drv::Result (*checkpoint_)(int, drv::CheckpointArgs*) = nullptr;
  drv::Result (*restore_)(int, drv::RestoreArgs*) = nullptr;
  drv::Result (*unlock_)(int, drv::UnlockArgs*) = nullptr;
};

}  // namespace

Result<std::unique_ptr<CudaDriver>> LoadCudaDriver(const std::string& library) {
  auto d = std::make_unique<DlCudaDriver>();
  HB_RETURN_IF_ERROR(d->Open(library));
  return std::unique_ptr<CudaDriver>(std::move(d));
}

const char* CudaProcessStateName(CudaProcessState s) {
  switch (s) {
    case CudaProcessState::kRunning: return "running";
    case CudaProcessState::kLocked: return "locked";
    case CudaProcessState::kCheckpointed: return "checkpointed";
    case CudaProcessState::kFailed: return "failed";
  }
  return "?";
}

}  // namespace hotboot
