// safetensors files (the weights format of the Hugging Face ecosystem): an
// 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the tensors' bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/status.h"

namespace hotboot {

enum class DType { kF32, kF16, kBF16, kI32, kU8 };
const char* DTypeName(DType t);  // "F32", "F16", "BF16", "I32", "U8"
size_t DTypeSize(DType t);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // absolute file offset of the data
  uint64_t nbytes = 0;
  uint64_t numel() const;
};

class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  // Parses and validates the header; keeps the file open for Read.
  static Result<SafetensorsFile> Open(const std::string& path);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Reads exactly t.nbytes into dst.
  Status Read(const TensorInfo& t, void* dst) const;
  uint64_t file_size() const { return file_size_; }
  const std::string& path() const { return path_; }
  // The open file, for callers that read many ranges at once (pread is
  // thread-safe); tensors' ranges were checked against the file by Open.
  int fd() const { return fd_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
 public:
  // Fills exactly dst.size() bytes: the whole tensor, in one call.
  using FillFn = std::function<Status(std::span<std::byte> dst)>;
  // Fills bytes [offset, offset + dst.size()) of one tensor. The writer cuts
  // a tensor into chunks and fills them on several threads at once, so the
  // function must be thread-safe and give the same bytes for a byte range
  // however the tensor is cut (e.g. a random stream per fixed-size block).
  using RangeFillFn = std::function<Status(uint64_t offset, std::span<std::byte> dst)>;
  void SetMetadata(std::string key, std::string value);
  // Both kinds of fill may run concurrently with other tensors' fills.
  void AddTensor(std::string name, DType dtype, std::vector<int64_t> shape, FillFn fill);
  void AddTensorRanges(std::string name, DType dtype, std::vector<int64_t> shape, RangeFillFn fill);

  struct WriteOptions {
    int threads = 0;                    // fill-and-write threads; <= 0: one per online CPU
    size_t chunk_bytes = 8u << 20;      // a range-filled tensor's chunk: memory is threads x chunk
    // Bytes of tensor data written so far, out of the total; called from the
    // writing threads, one call at a time.
    std::function<void(uint64_t done, uint64_t total)> progress;
  };
  // Writes path + ".tmp.<pid>" (its file system's free space checked first:
  // a full disk fails before any tensor is made), fills and writes the tensors in
  // parallel at their offsets (pwrite: the header fixes them up front; no
  // whole-file buffer), fsyncs, renames; removes the temporary on failure.
  // The bytes do not depend on the thread count or the chunk size.
  Status WriteAtomic(const std::string& path, const WriteOptions& opts);
  Status WriteAtomic(const std::string& path) { return WriteAtomic(path, WriteOptions{}); }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    FillFn fill;        // one of the two
    RangeFillFn range;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Pending> tensors_;
};

}  // namespace hotboot
