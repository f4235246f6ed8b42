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
// The device memory is the weights file's image (tensor i at base + its file
// offset), so that another process can fill it: the `hotboot restore`
// process uploads the weights (from the node cache's file or straight from
// the snapshot, overlapped with CRIU's and the driver's restore) into
// shareable memory (ShareableWeights) and the restored server maps it at its
// own reserved addresses (DeviceWeights::AdoptShareable): no copy there.
//
// The device is a seam: the real one is the CUDA driver's virtual memory
// management API (cuMemAddressReserve / cuMemCreate / cuMemMap, POSIX fd
// shareable handles), loaded at run time; tests use a host-memory fake that
// injects faults (tests/kernels/fake_gpu_device.h).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
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

  // Shareable physical memory (CUDA VMM with POSIX file descriptor handles:
  // cuMemCreate with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
  // cuMemExportToShareableHandle, cuMemImportFromShareableHandle): the
  // restorer uploads the weights into memory that the restored server then
  // maps at its own reserved addresses, with no copy. Handles are opaque.
  // Devices without it answer kUnsupported.
  //
  // New physical memory, `size` a multiple of Granularity(), that another
  // process can import; the caller releases the handle (ReleaseHandle).
  virtual Result<uint64_t> CreateShareable(size_t /*size*/) {
    return Status(Code::kUnsupported, Name() + " cannot create shareable memory");
  }
  // Maps the handle's memory at [va, va+size) of a reservation, readable and
  // writable. Unmap(va, size) undoes it; the handle stays the caller's (the
  // memory lives until it is unmapped everywhere and every handle released).
  virtual Status MapHandle(DevicePtr /*va*/, size_t /*size*/, uint64_t /*handle*/) {
    return Status(Code::kUnsupported, Name() + " cannot map shareable memory");
  }
  // A new file descriptor for the handle's memory, close-on-exec; the
  // caller closes it.
  virtual Result<int> ExportFd(uint64_t /*handle*/) {
    return Status(Code::kUnsupported, Name() + " cannot export shareable memory");
  }
  // A handle for memory another process exported (the fd stays the caller's).
  virtual Result<uint64_t> ImportFd(int /*fd*/) {
    return Status(Code::kUnsupported, Name() + " cannot import shareable memory");
  }
  virtual Status ReleaseHandle(uint64_t /*handle*/) {
    return Status(Code::kUnsupported, Name() + " has no shareable memory handles");
  }
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
  //   kDirect:       O_DIRECT reads (the file reopened through
  //                  /proc/self/fd) of page-aligned spans straight into the
  //                  pinned staging buffers, bypassing the page cache (a file
  //                  on disk that is not cached); falls back to kPread where
  //                  the filesystem refuses O_DIRECT
  enum class ReadMode { kPread, kMmap, kMmapPopulate, kRegister, kDirect };
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
    UploadOptions::ReadMode::kRegister, UploadOptions::ReadMode::kDirect};
const char* ReadModeName(UploadOptions::ReadMode m);
// "pread", "mmap", "populate", "register" or "direct"; false for anything else.
bool ParseReadMode(const std::string& s, UploadOptions::ReadMode* m);

// The general upload pipeline (the file and the snapshot paths both use it):
// `opts.readers` threads take the pieces in order, each fills a free pinned
// staging buffer (`max_piece_bytes` each, at most `opts.buffers` of them,
// allocated once beside the pipeline and reused) with the piece's bytes
// through `fill`, and this thread copies the buffers round-robin over the
// device's streams, handing each buffer back once its copy is done.
// opts.chunk_bytes and opts.mode are not used here. On failure the first
// error is returned (fill's prefixed with the piece), every copy has
// finished and no staging memory is left.
struct Piece {
  uint64_t size = 0;  // <= max_piece_bytes
  DevicePtr dst = 0;
};
// Writes piece `piece`'s `size` bytes at pinned_dst; called on any reader
// thread, concurrently for different pieces.
using FillFn = std::function<Status(size_t piece, void* pinned_dst)>;
Result<UploadStats> UploadPieces(Device& dev, const std::vector<Piece>& pieces, size_t max_piece_bytes,
                                 const FillFn& fill, const UploadOptions& opts = {});

// Streams `regions` of the open file `fd` to the device (see the top):
// pieces of opts.chunk_bytes read as opts.mode says.
Result<UploadStats> UploadFromFile(Device& dev, int fd, const std::vector<Region>& regions,
                                   const UploadOptions& opts = {});

// A snapshot section straight to the device: the section's chunks are the
// pieces (chunk k to dst + its raw offset), each decoded and checked into the
// pinned staging buffer by the reader (SHA-256 against the trust record,
// XXH3s: SnapshotReader::DecodeChunkTo), one ChunkScratch per reader thread.
// A template over the reader so that this library does not link the format
// library: use it with hotboot::snapfile::SnapshotReader
// (hotboot/snapshot_file.h). Decoding costs CPU: give it opts.readers =
// the hardware threads. dst must have the section's raw size mapped.
template <typename Reader>
Result<UploadStats> UploadSection(Device& dev, const Reader& reader, std::string_view section, DevicePtr dst,
                                  const UploadOptions& opts = {});
// Options for UploadSection: decoding is CPU-bound, so one reader per
// hardware thread, two staging buffers per reader (pinned memory: buffers x
// the section's largest chunk, 4 MiB as the writer makes them).
UploadOptions SectionUploadOptions();

// Weights on the device at addresses that outlive a capture.
class DeviceWeights {
 public:
  DeviceWeights() = default;
  ~DeviceWeights();
  DeviceWeights(DeviceWeights&& o) noexcept;
  DeviceWeights& operator=(DeviceWeights&& o) noexcept;

  // The device memory is the file's image: one reservation of image_bytes()
  // (the end of the last tensor in the file, rounded up to the granularity),
  // tensor i at base + file_offsets[i] (the GPU weights file puts every tensor
  // at a 64 KiB-aligned offset), so that whoever uploads the file's bytes in
  // order (the restorer, ShareableWeights) lays them out as this process
  // expects. Maps memory and uploads each tensor from `path`.
  static Result<DeviceWeights> Load(Device& dev, const std::string& path, const std::vector<uint64_t>& file_offsets,
                                    const std::vector<uint64_t>& sizes, const UploadOptions& opts = {});
  // The image size a file with these tensors needs (what the restorer passes
  // to ShareableWeights::Create); InvalidArgument when the lists differ in
  // length or an offset + size overflows.
  static Result<uint64_t> ImageBytes(size_t granularity, const std::vector<uint64_t>& file_offsets,
                                     const std::vector<uint64_t>& sizes);

  DevicePtr ptr(size_t i) const { return base_ + file_offsets_.at(i); }
  DevicePtr base() const { return base_; }
  size_t count() const { return file_offsets_.size(); }
  uint64_t bytes() const { return bytes_; }  // the tensors' bytes
  uint64_t image_bytes() const { return reserved_; }
  bool resident() const { return resident_; }
  const UploadStats& last_upload() const { return last_; }

  // Before a capture: the memory goes (an adopted allocation's handle
  // released too), the addresses stay.
  Status Release();
  // After a restore: memory at the same addresses, bytes streamed back from
  // `path` (the weights file, which the restore put on this host).
  Result<UploadStats> Restore(const std::string& path, const UploadOptions& opts = {});
  // After a restore, instead of Restore: the restorer already uploaded the
  // file's image into shareable memory (ShareableWeights) and handed this
  // process `fd` (its export, e.g. through pidfd_getfd): imports it and maps
  // it over the whole reservation. The fd stays the caller's to close.
  // kFailedPrecondition when resident already; on any failure nothing stays
  // mapped or imported.
  Status AdoptShareable(int fd);

 private:
  Result<UploadStats> MapAndUpload(const std::string& path, const UploadOptions& opts);
  void Reset();

  Device* dev_ = nullptr;
  DevicePtr base_ = 0;
  size_t reserved_ = 0;
  uint64_t bytes_ = 0;
  bool resident_ = false;
  bool adopted_ = false;  // resident through AdoptShareable: handle_ to release
  uint64_t handle_ = 0;
  std::vector<uint64_t> sizes_, file_offsets_;
  UploadStats last_;
};

// Device memory another process can map: what the restorer uploads the
// weights into (overlapped with CRIU's and the driver's restore) and hands
// to the restored server (DeviceWeights::AdoptShareable). A reservation
// with one shareable allocation mapped over it, in this process.
class ShareableWeights {
 public:
  ShareableWeights() = default;
  ~ShareableWeights() { Reset(); }
  ShareableWeights(ShareableWeights&& o) noexcept;
  ShareableWeights& operator=(ShareableWeights&& o) noexcept;

  // `bytes` rounded up to the granularity (DeviceWeights::ImageBytes gives
  // the size the server's DeviceWeights maps); reserved, created, mapped.
  static Result<ShareableWeights> Create(Device& dev, uint64_t bytes);

  DevicePtr base() const { return base_; }
  uint64_t bytes() const { return bytes_; }
  // A new fd for the memory (the caller closes it; send it, or let the
  // server take it with pidfd_getfd).
  Result<int> ExportFd() const;
  // Unmaps, releases the handle, frees the reservation here; the memory
  // lives on in whoever imported it.
  void Reset();

 private:
  Device* dev_ = nullptr;
  DevicePtr base_ = 0;
  uint64_t bytes_ = 0;
  uint64_t handle_ = 0;
  bool has_handle_ = false;
  bool mapped_ = false;
};

template <typename Reader>
Result<UploadStats> UploadSection(Device& dev, const Reader& reader, std::string_view section, DevicePtr dst,
                                  const UploadOptions& opts) {
  HB_ASSIGN_OR_RETURN(auto layout, reader.SectionChunks(section));
  std::vector<Piece> pieces;
  pieces.reserve(layout.chunks.size());
  for (const auto& c : layout.chunks) pieces.push_back({c.raw_size, dst + c.raw_offset});
  std::mutex mu;
  std::map<std::thread::id, std::unique_ptr<typename Reader::ChunkScratch>> scratch;
  auto fill = [&](size_t k, void* pinned) -> Status {
    typename Reader::ChunkScratch* s;
    {
      std::lock_guard l(mu);
      auto& slot = scratch[std::this_thread::get_id()];
      if (!slot) slot = std::make_unique<typename Reader::ChunkScratch>();
      s = slot.get();
    }
    return reader.DecodeChunkTo(section, k, static_cast<char*>(pinned), *s);
  };
  HB_ASSIGN_OR_RETURN(UploadStats st, UploadPieces(dev, pieces, std::max<uint64_t>(layout.max_chunk_raw, 1), fill, opts));
  st.mode = "snapshot";
  return st;
}

}  // namespace hotboot::gpu
