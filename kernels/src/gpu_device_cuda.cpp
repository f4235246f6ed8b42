// gpu::Device over the CUDA driver API, opened with dlopen so that the
// binaries run (on the CPU) where there is no driver. Virtual memory
// management (reserve / create / map / set access) keeps device addresses
// stable across a release and a re-upload. The few driver types used are
// declared here with their ABI layout and checked against cuda.h when the
// toolkit is present at build time.
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "hotboot/gpu_memory.h"

#if __has_include(<cuda.h>)
#include <cuda.h>
#define HOTBOOT_HAVE_CUDA_H 1
#endif

namespace hotboot::gpu {
namespace {

namespace drv {
using Result = int;
using Device = int;
using Context = void*;
using Stream = void*;
using Event = void*;
using Handle = unsigned long long;  // CUmemGenericAllocationHandle
struct Location {
  int type;
  int id;
};
struct AllocationProp {
  int type;
  int requested_handle_types;
  Location location;
  void* win32_metadata;
  struct {
    unsigned char compression_type;
    unsigned char gpu_direct_rdma_capable;
    unsigned short usage;
    unsigned char reserved[4];
  } flags;
};
struct AccessDesc {
  Location location;
  int flags;
};
constexpr Result kSuccess = 0;
constexpr int kAllocPinned = 1, kLocationDevice = 1, kProtReadWrite = 3, kGranularityRecommended = 1;
constexpr unsigned kStreamNonBlocking = 1, kEventDisableTiming = 2, kHostRegisterReadOnly = 8;
constexpr int kHandlePosixFd = 1;
#ifdef HOTBOOT_HAVE_CUDA_H
static_assert(kHostRegisterReadOnly == CU_MEMHOSTREGISTER_READ_ONLY);
static_assert(kHandlePosixFd == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
static_assert(offsetof(AllocationProp, requested_handle_types) == offsetof(CUmemAllocationProp, requestedHandleTypes));
static_assert(sizeof(CUmemAllocationHandleType) == sizeof(int));
static_assert(sizeof(AllocationProp) == sizeof(CUmemAllocationProp));
static_assert(offsetof(AllocationProp, location) == offsetof(CUmemAllocationProp, location));
static_assert(offsetof(AllocationProp, flags) == offsetof(CUmemAllocationProp, allocFlags));
static_assert(sizeof(AccessDesc) == sizeof(CUmemAccessDesc));
static_assert(offsetof(AccessDesc, flags) == offsetof(CUmemAccessDesc, flags));
static_assert(sizeof(Handle) == sizeof(CUmemGenericAllocationHandle));
static_assert(kAllocPinned == CU_MEM_ALLOCATION_TYPE_PINNED && kLocationDevice == CU_MEM_LOCATION_TYPE_DEVICE);
static_assert(kProtReadWrite == CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
static_assert(kGranularityRecommended == CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
static_assert(kStreamNonBlocking == CU_STREAM_NON_BLOCKING && kEventDisableTiming == CU_EVENT_DISABLE_TIMING);
#endif
}  // namespace drv

class CudaDevice final : public Device {
 public:
  ~CudaDevice() override {
    if (ctx_) {
      ctx_push_(ctx_);
      for (auto& [va, m] : maps_) {
        mem_unmap_(va, m.size);
        if (m.owned) mem_release_(m.handle);
      }
      for (drv::Event e : events_) event_destroy_(e);
      for (drv::Stream s : streams_) stream_destroy_(s);
      drv::Context c = nullptr;
      ctx_pop_(&c);
      primary_release_(dev_);
    }
    if (lib_) ::dlclose(lib_);
  }

  Status Open(int ordinal, int streams) {
    lib_ = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib_) return NotFound("no NVIDIA driver (libcuda.so.1 not found)");
    bool ok = Sym("cuInit", init_) && Sym("cuDeviceGet", device_get_) && Sym("cuDeviceGetName", device_name_) &&
              Sym("cuDevicePrimaryCtxRetain", primary_retain_) &&
              Sym("cuDevicePrimaryCtxRelease_v2", primary_release_) && Sym("cuCtxPushCurrent_v2", ctx_push_) &&
              Sym("cuCtxPopCurrent_v2", ctx_pop_) && Sym("cuMemGetAllocationGranularity", granularity_) &&
              Sym("cuMemAddressReserve", reserve_) && Sym("cuMemAddressFree", address_free_) &&
              Sym("cuMemCreate", mem_create_) && Sym("cuMemRelease", mem_release_) && Sym("cuMemMap", mem_map_) &&
              Sym("cuMemUnmap", mem_unmap_) && Sym("cuMemSetAccess", set_access_) &&
              Sym("cuMemHostAlloc", host_alloc_) && Sym("cuMemFreeHost", free_host_) &&
              Sym("cuStreamCreate", stream_create_) && Sym("cuStreamDestroy_v2", stream_destroy_) &&
              Sym("cuMemcpyHtoDAsync_v2", copy_h2d_async_) && Sym("cuMemcpyDtoH_v2", copy_d2h_) &&
              Sym("cuEventCreate", event_create_) && Sym("cuEventDestroy_v2", event_destroy_) &&
              Sym("cuEventRecord", event_record_) && Sym("cuEventSynchronize", event_sync_) &&
              Sym("cuStreamSynchronize", stream_sync_) &&
              Sym("cuGetErrorName", error_name_);
    if (!ok) return NotFound("the NVIDIA driver lacks " + missing_ + " (virtual memory management needs CUDA 10.2+)");
    // Optional: uploads without staging (UploadOptions::kRegister).
    host_register_ = reinterpret_cast<decltype(host_register_)>(::dlsym(lib_, "cuMemHostRegister_v2"));
    host_unregister_ = reinterpret_cast<decltype(host_unregister_)>(::dlsym(lib_, "cuMemHostUnregister"));
    // Optional: shareable memory (the restorer's weights handoff).
    export_ = reinterpret_cast<decltype(export_)>(::dlsym(lib_, "cuMemExportToShareableHandle"));
    import_ = reinterpret_cast<decltype(import_)>(::dlsym(lib_, "cuMemImportFromShareableHandle"));
    HB_RETURN_IF_ERROR(Check("cuInit", init_(0)));
    ordinal_ = ordinal;
    HB_RETURN_IF_ERROR(Check("cuDeviceGet", device_get_(&dev_, ordinal)));
    char name[256] = {};
    device_name_(name, sizeof name - 1, dev_);
    name_ = name;
    HB_RETURN_IF_ERROR(Check("cuDevicePrimaryCtxRetain", primary_retain_(&ctx_, dev_)));
    Scope s(this);
    drv::AllocationProp prop = Prop();
    size_t g = 0;
    HB_RETURN_IF_ERROR(Check("cuMemGetAllocationGranularity", granularity_(&g, &prop, drv::kGranularityRecommended)));
    granularity_bytes_ = g;
    for (int i = 0; i < std::max(1, streams); ++i) {
      drv::Stream st = nullptr;
      HB_RETURN_IF_ERROR(Check("cuStreamCreate", stream_create_(&st, drv::kStreamNonBlocking)));
      streams_.push_back(st);
    }
    return Status();
  }

  std::string Name() override { return name_; }
  size_t Granularity() override { return granularity_bytes_; }

  Result<DevicePtr> Reserve(size_t size) override {
    Scope s(this);
    DevicePtr va = 0;
    HB_RETURN_IF_ERROR(Check("cuMemAddressReserve", reserve_(&va, size, granularity_bytes_, 0, 0)));
    return va;
  }
  Status FreeReservation(DevicePtr va, size_t size) override {
    Scope s(this);
    return Check("cuMemAddressFree", address_free_(va, size));
  }
  Status Map(DevicePtr va, size_t size) override {
    Scope s(this);
    drv::AllocationProp prop = Prop();
    drv::Handle h = 0;
    HB_RETURN_IF_ERROR(Check("cuMemCreate", mem_create_(&h, size, &prop, 0)));
    if (Status st = Check("cuMemMap", mem_map_(va, size, 0, h, 0)); !st.ok()) {
      mem_release_(h);
      return st;
    }
    drv::AccessDesc access{{drv::kLocationDevice, ordinal_}, drv::kProtReadWrite};
    if (Status st = Check("cuMemSetAccess", set_access_(va, size, &access, 1)); !st.ok()) {
      mem_unmap_(va, size);
      mem_release_(h);
      return st;
    }
    std::lock_guard l(mu_);
    maps_[va] = {size, h, /*owned=*/true};
    return Status();
  }
  Status Unmap(DevicePtr va, size_t size) override {
    Scope s(this);
    Mapping m;
    {
      std::lock_guard l(mu_);
      auto it = maps_.find(va);
      if (it == maps_.end() || it->second.size != size) {
        return InvalidArgument("unmap of a range that Map or MapHandle did not create");
      }
      m = it->second;
    }
    // Forgotten only once really unmapped: a failed unmap leaves it mapped and known.
    HB_RETURN_IF_ERROR(Check("cuMemUnmap", mem_unmap_(va, size)));
    {
      std::lock_guard l(mu_);
      maps_.erase(va);
    }
    // A handle mapped by MapHandle stays its owner's to release.
    return m.owned ? Check("cuMemRelease", mem_release_(m.handle)) : Status();
  }

  Result<uint64_t> CreateShareable(size_t size) override {
    if (!export_ || !import_) return Unsupported("the NVIDIA driver has no cuMemExportToShareableHandle (CUDA 10.2+)");
    if (granularity_bytes_ == 0 || size == 0 || size % granularity_bytes_ != 0) {
      return InvalidArgument("shareable allocation of " + std::to_string(size) + " bytes, not a multiple of " +
                             std::to_string(granularity_bytes_));
    }
    Scope s(this);
    drv::AllocationProp prop = Prop();
    prop.requested_handle_types = drv::kHandlePosixFd;
    // Shareable allocations may want a coarser granularity than plain ones.
    size_t g = 0;
    HB_RETURN_IF_ERROR(Check("cuMemGetAllocationGranularity", granularity_(&g, &prop, drv::kGranularityRecommended)));
    if (g == 0 || size % g != 0) {
      return InvalidArgument("shareable allocation of " + std::to_string(size) + " bytes, not a multiple of its " +
                             "granularity " + std::to_string(g));
    }
    drv::Handle h = 0;
    HB_RETURN_IF_ERROR(Check("cuMemCreate (POSIX fd shareable)", mem_create_(&h, size, &prop, 0)));
    return static_cast<uint64_t>(h);
  }
  Status MapHandle(DevicePtr va, size_t size, uint64_t handle) override {
    Scope s(this);
    HB_RETURN_IF_ERROR(Check("cuMemMap", mem_map_(va, size, 0, static_cast<drv::Handle>(handle), 0)));
    drv::AccessDesc access{{drv::kLocationDevice, ordinal_}, drv::kProtReadWrite};
    if (Status st = Check("cuMemSetAccess", set_access_(va, size, &access, 1)); !st.ok()) {
      mem_unmap_(va, size);
      return st;
    }
    std::lock_guard l(mu_);
    maps_[va] = {size, static_cast<drv::Handle>(handle), /*owned=*/false};
    return Status();
  }
  Result<int> ExportFd(uint64_t handle) override {
    if (!export_) return Unsupported("the NVIDIA driver has no cuMemExportToShareableHandle (CUDA 10.2+)");
    Scope s(this);
    int fd = -1;
    HB_RETURN_IF_ERROR(Check("cuMemExportToShareableHandle",
                             export_(&fd, static_cast<drv::Handle>(handle), drv::kHandlePosixFd, 0)));
    // Close-on-exec whatever the driver did: the restorer starts CRIU and
    // others, which must not inherit the weights' memory.
    if (const int fl = ::fcntl(fd, F_GETFD); fl < 0 || ::fcntl(fd, F_SETFD, fl | FD_CLOEXEC) != 0) {
      const int e = errno;
      ::close(fd);
      return ErrnoError("set close-on-exec on the exported weights fd", e);
    }
    return fd;
  }
  Result<uint64_t> ImportFd(int fd) override {
    if (!import_) return Unsupported("the NVIDIA driver has no cuMemImportFromShareableHandle (CUDA 10.2+)");
    if (fd < 0) return InvalidArgument("import of shareable memory from fd " + std::to_string(fd));
    Scope s(this);
    drv::Handle h = 0;
    // A POSIX fd travels by value in the pointer argument (cuda.h).
    void* os_handle = reinterpret_cast<void*>(static_cast<uintptr_t>(fd));
    HB_RETURN_IF_ERROR(Check("cuMemImportFromShareableHandle", import_(&h, os_handle, drv::kHandlePosixFd)));
    return static_cast<uint64_t>(h);
  }
  Status ReleaseHandle(uint64_t handle) override {
    Scope s(this);
    return Check("cuMemRelease", mem_release_(static_cast<drv::Handle>(handle)));
  }

  Result<void*> AllocPinned(size_t size) override {
    Scope s(this);
    void* p = nullptr;
    HB_RETURN_IF_ERROR(Check("cuMemHostAlloc", host_alloc_(&p, size, 0)));
    return p;
  }
  void FreePinned(void* p, size_t) override {
    Scope s(this);
    free_host_(p);
  }
  int Streams() override { return static_cast<int>(streams_.size()); }
  Status CopyToDeviceAsync(DevicePtr dst, const void* src, size_t n, int stream) override {
    Scope s(this);
    return Check("cuMemcpyHtoDAsync", copy_h2d_async_(dst, src, n, streams_.at(static_cast<size_t>(stream))));
  }
  Result<int> Record(int stream) override {
    Scope s(this);
    std::lock_guard l(mu_);
    int idx;
    if (!free_events_.empty()) {
      idx = free_events_.back();
      free_events_.pop_back();
    } else {
      drv::Event e = nullptr;
      HB_RETURN_IF_ERROR(Check("cuEventCreate", event_create_(&e, drv::kEventDisableTiming)));
      events_.push_back(e);
      idx = static_cast<int>(events_.size()) - 1;
    }
    HB_RETURN_IF_ERROR(Check("cuEventRecord", event_record_(events_[idx], streams_.at(static_cast<size_t>(stream)))));
    return idx;
  }
  Status Wait(int event) override {
    Scope s(this);
    drv::Event e;
    {
      std::lock_guard l(mu_);
      e = events_.at(static_cast<size_t>(event));
    }
    Status st = Check("cuEventSynchronize", event_sync_(e));
    std::lock_guard l(mu_);
    free_events_.push_back(event);
    return st;
  }
  Status Sync() override {
    Scope s(this);
    Status first;
    for (drv::Stream st : streams_) {
      Status r = Check("cuStreamSynchronize", stream_sync_(st));
      if (first.ok()) first = r;
    }
    return first;
  }
  Status CopyToHost(void* dst, DevicePtr src, size_t n) override {
    Scope s(this);
    return Check("cuMemcpyDtoH", copy_d2h_(dst, src, n));
  }
  Status RegisterHost(const void* p, size_t n) override {
    if (!host_register_ || !host_unregister_) return Unsupported("the driver has no cuMemHostRegister");
    Scope s(this);
    // READ_ONLY: the pages belong to a file mapped without write access.
    return Check("cuMemHostRegister", host_register_(const_cast<void*>(p), n, drv::kHostRegisterReadOnly));
  }
  Status UnregisterHost(const void* p) override {
    if (!host_unregister_) return Unsupported("the driver has no cuMemHostUnregister");
    Scope s(this);
    return Check("cuMemHostUnregister", host_unregister_(const_cast<void*>(p)));
  }

 private:
  // The primary context current on the calling thread for one call.
  struct Scope {
    explicit Scope(CudaDevice* d) : d_(d) { d_->ctx_push_(d_->ctx_); }
    ~Scope() {
      drv::Context c = nullptr;
      d_->ctx_pop_(&c);
    }
    CudaDevice* d_;
  };

  drv::AllocationProp Prop() const {
    drv::AllocationProp p{};
    p.type = drv::kAllocPinned;
    p.location = {drv::kLocationDevice, ordinal_};
    return p;
  }

  template <typename F>
  bool Sym(const char* name, F*& fn) {
    fn = reinterpret_cast<F*>(::dlsym(lib_, name));
    if (!fn && missing_.empty()) missing_ = name;
    return fn != nullptr;
  }
  Status Check(const char* what, drv::Result r) {
    if (r == drv::kSuccess) return Status();
    const char* n = nullptr;
    if (error_name_) error_name_(r, &n);
    return Internal(std::string(what) + " failed: " + (n ? n : "CUDA error") + " (" + std::to_string(r) + ")");
  }

  void* lib_ = nullptr;
  std::string missing_, name_;
  drv::Device dev_ = 0;
  int ordinal_ = 0;
  drv::Context ctx_ = nullptr;
  size_t granularity_bytes_ = 0;
  std::vector<drv::Stream> streams_;
  std::mutex mu_;
  std::vector<drv::Event> events_;
  std::vector<int> free_events_;
  struct Mapping {
    size_t size = 0;
    drv::Handle handle = 0;
    bool owned = true;  // created by Map (released with the mapping), not MapHandle's caller's
  };
  std::map<DevicePtr, Mapping> maps_;

  drv::Result (*init_)(unsigned) = nullptr;
  drv::Result (*device_get_)(drv::Device*, int) = nullptr;
  drv::Result (*device_name_)(char*, int, drv::Device) = nullptr;
  drv::Result (*primary_retain_)(drv::Context*, drv::Device) = nullptr;
  drv::Result (*primary_release_)(drv::Device) = nullptr;
  drv::Result (*ctx_push_)(drv::Context) = nullptr;
  drv::Result (*ctx_pop_)(drv::Context*) = nullptr;
  drv::Result (*granularity_)(size_t*, const drv::AllocationProp*, int) = nullptr;
  drv::Result (*reserve_)(DevicePtr*, size_t, size_t, DevicePtr, unsigned long long) = nullptr;
  drv::Result (*address_free_)(DevicePtr, size_t) = nullptr;
  drv::Result (*mem_create_)(drv::Handle*, size_t, const drv::AllocationProp*, unsigned long long) = nullptr;
  drv::Result (*mem_release_)(drv::Handle) = nullptr;
  drv::Result (*mem_map_)(DevicePtr, size_t, size_t, drv::Handle, unsigned long long) = nullptr;
  drv::Result (*mem_unmap_)(DevicePtr, size_t) = nullptr;
  drv::Result (*set_access_)(DevicePtr, size_t, const drv::AccessDesc*, size_t) = nullptr;
  drv::Result (*host_alloc_)(void**, size_t, unsigned) = nullptr;
  drv::Result (*free_host_)(void*) = nullptr;
  drv::Result (*stream_create_)(drv::Stream*, unsigned) = nullptr;
  drv::Result (*stream_destroy_)(drv::Stream) = nullptr;
  drv::Result (*copy_h2d_async_)(DevicePtr, const void*, size_t, drv::Stream) = nullptr;
  drv::Result (*copy_d2h_)(void*, DevicePtr, size_t) = nullptr;
  drv::Result (*event_create_)(drv::Event*, unsigned) = nullptr;
  drv::Result (*event_destroy_)(drv::Event) = nullptr;
  drv::Result (*event_record_)(drv::Event, drv::Stream) = nullptr;
  drv::Result (*event_sync_)(drv::Event) = nullptr;
  drv::Result (*stream_sync_)(drv::Stream) = nullptr;
  drv::Result (*error_name_)(drv::Result, const char**) = nullptr;
  drv::Result (*host_register_)(void*, size_t, unsigned) = nullptr;
  drv::Result (*host_unregister_)(void*) = nullptr;
  drv::Result (*export_)(void*, drv::Handle, int, unsigned long long) = nullptr;
  drv::Result (*import_)(drv::Handle*, void*, int) = nullptr;
};

}  // namespace

Result<std::unique_ptr<Device>> OpenCudaDevice(int ordinal, int streams) {
  auto d = std::make_unique<CudaDevice>();
  HB_RETURN_IF_ERROR(d->Open(ordinal, streams));
  return std::unique_ptr<Device>(std::move(d));
}

}  // namespace hotboot::gpu
