// Device memory for weights that survive a snapshot without passing through
// the CUDA driver's checkpoint copy (DESIGN.md, cooperative mode).
//
// Weights live in one reserved device address range. Before a capture the
// server releases their physical memory but keeps the addresses (kernels,
// CUDA graphs and pointers in host structures stay valid); after a restore
// it maps fresh memory at the same addresses and streams the bytes back from
// the weights file: parallel reads into pinned staging buffers, copies on
// several streams, reads of the next chunks overlapped with copies of the
// previous ones.
//
// The device is a seam: the real one is the CUDA driver's virtual memory
// management API (cuMemAddressReserve / cuMemCreate / cuMemMap), loaded at
// run time; tests use a host-memory fake that injects faults.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::gpu {

using DevicePtr = uint64_t;

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string Name() = 0;
  // Physical allocations and mappings are multiples of this (2 MiB on
  // current NVIDIA GPUs).
  virtual size_t Granularity() = 0;
  // A range of device addresses with no memory behind it.
  virtual Result<DevicePtr> Reserve(size_t size) = 0;
  virtual Status FreeReservation(DevicePtr va, size_t size) = 0;
  // Backs [va, va+size) with new physical memory, readable and writable.
  virtual Status Map(DevicePtr va, size_t size) = 0;
  // Releases the physical memory behind [va, va+size); the addresses stay reserved.
  virtual Status Unmap(DevicePtr va, size_t size) = 0;

  virtual Result<void*> AllocPinned(size_t size) = 0;  // page-locked host memory
  virtual void FreePinned(void* p, size_t size) = 0;
  virtual int Streams() = 0;  // streams available for copies, >= 1
  virtual Status CopyToDeviceAsync(DevicePtr dst, const void* src, size_t n, int stream) = 0;
  // A marker after everything queued on `stream` so far; Wait blocks on it.
  virtual Result<int> Record(int stream) = 0;
  virtual Status Wait(int event) = 0;
  // Blocks until everything queued on every stream is done (error paths:
  // no buffer is freed or unlocked while a copy may still read it).
  virtual Status Sync() = 0;
  virtual Status CopyToHost(void* dst, DevicePtr src, size_t n) = 0;  // synchronous
  // Page-locks existing host pages (read-only for the device: a mapping of a
  // file opened read-only) so copies from them need no staging; ranges may
  // not overlap one already registered. kUnsupported where the device cannot.
  virtual Status RegisterHost(const void* p, size_t n) = 0;
  virtual Status UnregisterHost(const void* p) = 0;
};

// The CUDA device `ordinal` through libcuda.so.1 (primary context, `streams`
// copy streams). kNotFound when there is no driver or device. Eight streams:
// the weight upload reached 25 GB/s with 8 vs 16 with 2 on an H100 host.
Result<std::unique_ptr<Device>> OpenCudaDevice(int ordinal = 0, int streams = 8);

struct UploadOptions {
  // Defaults from `hotboot bench gpu --sweep` on an H100 host (README): many
  // readers copying small chunks out of a mapping of the file (page-cache
  // reads do not scale per thread; small chunks stay in cache and need
  // little pinned memory).
  size_t chunk_bytes = 1u << 20;  // one read and one copy
  int buffers = 32;               // pinned staging buffers (memory bound: buffers * chunk)
  int readers = 16;               // threads reading the file
  // How the bytes get from the file to the copy engine:
  //   kPread:        pread() into pinned staging buffers
  //   kMmap:         memcpy from a read-only mapping of the file into them
  //   kMmapPopulate: the same, each chunk's pages faulted in at once first
  //                  (MADV_POPULATE_READ) instead of one fault at a time
  //   kRegister:     no staging: each reader page-locks a window of the
  //                  mapped file (chunk_bytes, page-aligned) and the copies
  //                  read the page cache directly; falls back to kMmap when
  //                  the device cannot register read-only host memory
  enum class ReadMode { kPread, kMmap, kMmapPopulate, kRegister };
  ReadMode mode = ReadMode::kMmap;
};

struct UploadStats {
  uint64_t bytes = 0;
  double seconds = 0;  // first read to last copy done, staging allocation included
  // Where the time went: allocating the pinned staging buffers (overlapped
  // with the reads: the first buffer starts the pipeline), reading the file
  // (summed over the readers) and waiting for copies to finish.
  double staging_seconds = 0;
  double read_seconds = 0;
  double copy_wait_seconds = 0;
  int staging_buffers = 0;
  std::string mode;  // the read mode used (ReadModeName), or why another was
  double GBps() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
};

// One region of the weights file and where it goes on the device.
struct Region {
  uint64_t file_offset = 0;
  uint64_t size = 0;
  DevicePtr dst = 0;
};

inline constexpr UploadOptions::ReadMode kReadModes[] = {
    UploadOptions::ReadMode::kPread, UploadOptions::ReadMode::kMmap, UploadOptions::ReadMode::kMmapPopulate,
    UploadOptions::ReadMode::kRegister};
const char* ReadModeName(UploadOptions::ReadMode m);
// "pread", "mmap", "populate" or "register"; false for anything else.
bool ParseReadMode(const std::string& s, UploadOptions::ReadMode* m);

// Streams `regions` of the open file `fd` to the device (see the top).
Result<UploadStats> UploadFromFile(Device& dev, int fd, const std::vector<Region>& regions,
                                   const UploadOptions& opts = {});

// Weights on the device at addresses that outlive a capture.
class DeviceWeights {
 public:
  DeviceWeights() = default;
  ~DeviceWeights();
  DeviceWeights(DeviceWeights&& o) noexcept;
  DeviceWeights& operator=(DeviceWeights&& o) noexcept;

  // Reserves one range for `sizes` (each aligned to the granularity), maps
  // memory and uploads each tensor i from `file_offsets[i]` of `path`.
  static Result<DeviceWeights> Load(Device& dev, const std::string& path, const std::vector<uint64_t>& file_offsets,
                                    const std::vector<uint64_t>& sizes, const UploadOptions& opts = {});

  DevicePtr ptr(size_t i) const { return base_ + offsets_.at(i); }
  size_t count() const { return offsets_.size(); }
  uint64_t bytes() const { return bytes_; }
  bool resident() const { return resident_; }
  const UploadStats& last_upload() const { return last_; }

  // Before a capture: the memory goes, the addresses stay.
  Status Release();
  // After a restore: memory at the same addresses, bytes streamed back from
  // `path` (the weights file, which the restore put on this host).
  Result<UploadStats> Restore(const std::string& path, const UploadOptions& opts = {});

 private:
  Result<UploadStats> MapAndUpload(const std::string& path, const UploadOptions& opts);
  void Reset();

  Device* dev_ = nullptr;
  DevicePtr base_ = 0;
  size_t reserved_ = 0;
  uint64_t bytes_ = 0;
  bool resident_ = false;
  std::vector<uint64_t> offsets_, sizes_, file_offsets_;
  UploadStats last_;
};

}  // namespace hotboot::gpu
