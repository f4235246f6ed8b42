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

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
 public:
  // Fills exactly dst.size() bytes of one tensor; called once per tensor, in
  // the order they were added, so a large file is streamed, never held.
  using FillFn = std::function<Status(std::span<std::byte> dst)>;
  void SetMetadata(std::string key, std::string value);
  void AddTensor(std::string name, DType dtype, std::vector<int64_t> shape, FillFn fill);
  // Writes path + ".tmp.<pid>", fsyncs, renames; removes the temporary on failure.
  Status WriteAtomic(const std::string& path);

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    FillFn fill;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Pending> tensors_;
};

}  // namespace hotboot
