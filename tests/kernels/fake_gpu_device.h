// A gpu::Device in host memory for tests: made-up device addresses (never
// dereferenced as pointers, so a stale address is caught instead of
// scribbling), memory behind them from mmap, and shareable memory that really
// crosses processes: a memfd per allocation, exported as a dup of it, mapped
// MAP_SHARED. Faults are injected by counters and flags.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "hotboot/gpu_memory.h"

namespace hotboot::gpu::testing {

class FakeDevice : public Device {
 public:
  size_t granularity = 1 << 16;
  int streams = 3;
  int fail_map_after = -1;   // Map calls that succeed before one fails
  int fail_copy_after = -1;  // copies that succeed before one fails
  bool fail_pinned = false;
  bool fail_map_handle = false, fail_import = false, fail_export = false, no_shareable = false;
  size_t pinned_now = 0, pinned_peak = 0;
  std::set<int> streams_used;
  int maps = 0, copies = 0;
  // Like the driver: overlapping registrations are refused.
  bool refuse_register = false;
  int registrations = 0;

  ~FakeDevice() override {
    for (auto& [va, m] : mapped_) ::munmap(m.p, m.n);
    for (auto& [h, fd] : handles_) ::close(fd);
  }

  std::string Name() override { return "fake"; }
  size_t Granularity() override { return granularity; }
  Result<DevicePtr> Reserve(size_t size) override {
    std::lock_guard l(mu_);
    DevicePtr va = next_;
    next_ += size + granularity;  // a gap: overruns do not land in a neighbour
    reserved_[va] = size;
    return va;
  }
  Status FreeReservation(DevicePtr va, size_t) override {
    std::lock_guard l(mu_);
    return reserved_.erase(va) ? Status() : InvalidArgument("free of an unknown reservation");
  }
  Status Map(DevicePtr va, size_t size) override {
    std::lock_guard l(mu_);
    if (fail_map_after >= 0 && maps >= fail_map_after) {
      return Internal("cuMemCreate failed: CUDA_ERROR_OUT_OF_MEMORY (2) (injected)");
    }
    ++maps;
    HB_RETURN_IF_ERROR(CheckMappable(va, size));
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return ErrnoError("fake device memory", errno);
    std::memset(p, 0xAB, size);  // fresh memory is garbage, not zeros
    mapped_[va] = {static_cast<uint8_t*>(p), size};
    return Status();
  }
  Status Unmap(DevicePtr va, size_t size) override {
    std::lock_guard l(mu_);
    auto it = mapped_.find(va);
    if (it == mapped_.end() || it->second.n != size) return InvalidArgument("unmap of an unmapped range");
    ::munmap(it->second.p, it->second.n);
    mapped_.erase(it);
    return Status();
  }

  Result<uint64_t> CreateShareable(size_t size) override {
    std::lock_guard l(mu_);
    if (no_shareable) return Unsupported("fake: no shareable memory (injected)");
    if (size == 0 || size % granularity) return InvalidArgument("shareable size not a multiple of the granularity");
    const int fd = ::memfd_create("hotboot-fake-device", MFD_CLOEXEC);
    if (fd < 0) return ErrnoError("memfd_create", errno);
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      const int e = errno;
      ::close(fd);
      return ErrnoError("ftruncate memfd", e);
    }
    handles_[next_handle_] = fd;
    return next_handle_++;
  }
  Status MapHandle(DevicePtr va, size_t size, uint64_t handle) override {
    std::lock_guard l(mu_);
    if (fail_map_handle) return Internal("cuMemMap failed: CUDA_ERROR_INVALID_VALUE (1) (injected)");
    auto h = handles_.find(handle);
    if (h == handles_.end()) return InvalidArgument("map of an unknown handle");
    HB_RETURN_IF_ERROR(CheckMappable(va, size));
    struct stat sb{};
    if (::fstat(h->second, &sb) != 0) return ErrnoError("fstat memfd", errno);
    if (static_cast<uint64_t>(sb.st_size) < size) {
      return InvalidArgument("cuMemMap failed: CUDA_ERROR_INVALID_VALUE (1): the allocation has " +
                             std::to_string(sb.st_size) + " bytes, not " + std::to_string(size));
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, h->second, 0);
    if (p == MAP_FAILED) return ErrnoError("mmap memfd", errno);
    mapped_[va] = {static_cast<uint8_t*>(p), size};
    return Status();
  }
  Result<int> ExportFd(uint64_t handle) override {
    std::lock_guard l(mu_);
    if (fail_export) return Internal("cuMemExportToShareableHandle failed (injected)");
    auto h = handles_.find(handle);
    if (h == handles_.end()) return InvalidArgument("export of an unknown handle");
    const int fd = ::fcntl(h->second, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return ErrnoError("dup memfd", errno);
    return fd;
  }
  Result<uint64_t> ImportFd(int fd) override {
    std::lock_guard l(mu_);
    if (fail_import) return Internal("cuMemImportFromShareableHandle failed (injected)");
    const int mine = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (mine < 0) return ErrnoError("import of fd " + std::to_string(fd), errno);
    handles_[next_handle_] = mine;
    return next_handle_++;
  }
  Status ReleaseHandle(uint64_t handle) override {
    std::lock_guard l(mu_);
    auto h = handles_.find(handle);
    if (h == handles_.end()) return InvalidArgument("release of an unknown handle");
    ::close(h->second);
    handles_.erase(h);
    return Status();
  }

  Result<void*> AllocPinned(size_t size) override {
    std::lock_guard l(mu_);
    if (fail_pinned) return Internal("cuMemHostAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (2) (injected)");
    // Page-aligned, as the driver's are (O_DIRECT reads land in them).
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return ErrnoError("fake pinned memory", errno);
    pinned_now += size;
    pinned_peak = std::max(pinned_peak, pinned_now);
    return p;
  }
  void FreePinned(void* p, size_t size) override {
    std::lock_guard l(mu_);
    pinned_now -= size;
    ::munmap(p, size);
  }
  int Streams() override { return streams; }
  Status CopyToDeviceAsync(DevicePtr dst, const void* src, size_t n, int stream) override {
    std::lock_guard l(mu_);
    if (fail_copy_after >= 0 && copies >= fail_copy_after) return Internal("cuMemcpyHtoDAsync failed (injected)");
    ++copies;
    streams_used.insert(stream);
    uint8_t* p = Locate(dst, n);
    if (!p) return InvalidArgument("copy to unmapped device memory at " + std::to_string(dst));
    std::memcpy(p, src, n);
    return Status();
  }
  Result<int> Record(int) override { return 0; }
  Status Wait(int) override { return Status(); }
  Status Sync() override { return Status(); }
  Status CopyToHost(void* dst, DevicePtr src, size_t n) override {
    std::lock_guard l(mu_);
    uint8_t* p = Locate(src, n);
    if (!p) return InvalidArgument("read of unmapped device memory");
    std::memcpy(dst, p, n);
    return Status();
  }
  Status RegisterHost(const void* p, size_t n) override {
    std::lock_guard l(mu_);
    if (refuse_register) return Unsupported("cuMemHostRegister failed: CUDA_ERROR_NOT_SUPPORTED (801) (injected)");
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (auto& [b, len] : registered_) {
      if (a < b + len && b < a + n) return Internal("cuMemHostRegister: CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED");
    }
    registered_[a] = n;
    ++registrations;
    return Status();
  }
  Status UnregisterHost(const void* p) override {
    std::lock_guard l(mu_);
    return registered_.erase(reinterpret_cast<uintptr_t>(p)) ? Status() : InvalidArgument("not registered");
  }

  size_t RegisteredNow() {
    std::lock_guard l(mu_);
    return registered_.size();
  }
  size_t MappedBytes() {
    std::lock_guard l(mu_);
    size_t n = 0;
    for (auto& [va, m] : mapped_) n += m.n;
    return n;
  }
  size_t HandlesNow() {
    std::lock_guard l(mu_);
    return handles_.size();
  }
  size_t ReservationsNow() {
    std::lock_guard l(mu_);
    return reserved_.size();
  }

 private:
  struct Mapping {
    uint8_t* p;
    size_t n;
  };
  // Inside one reservation, not over a mapping, a multiple of the granularity.
  Status CheckMappable(DevicePtr va, size_t size) {
    if (size % granularity) return InvalidArgument("map size not a multiple of the granularity");
    auto r = reserved_.upper_bound(va);
    if (r == reserved_.begin()) return InvalidArgument("map outside any reservation");
    --r;
    if (va + size > r->first + r->second) return InvalidArgument("map past the end of its reservation");
    auto m = mapped_.lower_bound(va);
    if (m != mapped_.end() && m->first < va + size) return InvalidArgument("map over a mapping");
    if (m != mapped_.begin() && std::prev(m)->first + std::prev(m)->second.n > va) {
      return InvalidArgument("map over a mapping");
    }
    return Status();
  }
  uint8_t* Locate(DevicePtr a, size_t n) {
    auto it = mapped_.upper_bound(a);
    if (it == mapped_.begin()) return nullptr;
    --it;
    if (a + n > it->first + it->second.n) return nullptr;
    return it->second.p + (a - it->first);
  }
  std::mutex mu_;
  DevicePtr next_ = 0x7000'0000'0000ull;
  uint64_t next_handle_ = 1;
  std::map<DevicePtr, size_t> reserved_;
  std::map<DevicePtr, Mapping> mapped_;
  std::map<uintptr_t, size_t> registered_;
  std::map<uint64_t, int> handles_;
};

}  // namespace hotboot::gpu::testing
