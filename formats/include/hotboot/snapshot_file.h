// The snapshot container, v0 (formats/SPEC.md): a header, independently
// compressed and checksummed chunks of named sections, an index with the
// manifest, and a trailer with the whole-file digest. Seekable: Open reads
// only the header, trailer and index.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::snapfile {

struct WriteOptions {
  int zstd_level = 3;
  size_t chunk_size = 4u << 20;
  int threads = 0;  // 0: all cores
};

using ProgressFn = std::function<void(uint64_t done_raw_bytes, uint64_t total_raw_bytes)>;

struct SectionSource {
  std::string name;
  std::string file_path;  // read from this file, or when empty ...
  std::string bytes;      // ... these bytes
  uint32_t mode = 0644;
};

struct ChunkInfo {
  uint64_t offset = 0;  // absolute file offset of the stored bytes
  uint64_t stored_size = 0;
  uint64_t raw_size = 0;
  uint8_t method = 0;  // kMethod* in snapshot_layout.h
  uint64_t stored_hash = 0;
  uint64_t raw_hash = 0;
};

struct SectionInfo {
  std::string name;
  uint32_t mode = 0644;
  uint64_t raw_size = 0;
  uint64_t stored_size = 0;
  std::vector<ChunkInfo> chunks;
};

// One section per regular file under dir (recursive), named "<prefix>/<path>".
Result<std::vector<SectionSource>> SectionsFromDirectory(const std::string& dir, const std::string& prefix);

// Writes to out_path + ".tmp.<pid>", fsyncs, renames, fsyncs the directory.
// On failure the temporary is removed and out_path is untouched; a process
// killed mid-write leaves only the temporary, never out_path.
Status WriteSnapshot(const std::string& out_path, const std::string& manifest_json,
                     const std::vector<SectionSource>& sections, const WriteOptions& opts = {},
                     ProgressFn progress = nullptr);

class SnapshotReader {
 public:
  ~SnapshotReader();
  static Result<std::unique_ptr<SnapshotReader>> Open(const std::string& path);

  const std::string& manifest_json() const { return manifest_; }
  const std::vector<SectionInfo>& sections() const { return sections_; }
  const SectionInfo* FindSection(std::string_view name) const;
  uint64_t file_size() const { return file_size_; }
  std::string file_digest_hex() const;
  uint16_t version_major() const { return major_; }
  uint16_t version_minor() const { return minor_; }

  // Every chunk (stored hash, decompression, raw hash) and the whole-file
  // digest; the first problem names section, chunk and file offset.
  Status Verify(int threads = 0, ProgressFn progress = nullptr) const;
  // Sections whose name starts with prefix, into dir (prefix stripped); each
  // chunk is verified before its bytes are written.
  Status ExtractTo(const std::string& dir, const std::string& prefix, int threads = 0,
                   ProgressFn progress = nullptr) const;
  Result<std::string> ReadSection(std::string_view name) const;

 private:
  SnapshotReader() = default;
  // Reads, checks and decodes one chunk into out (raw_size bytes).
  Status ReadChunk(const SectionInfo& s, size_t index, std::string* scratch, char* out) const;

  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint16_t major_ = 0, minor_ = 0;
  uint64_t digest_hi_ = 0, digest_lo_ = 0;
  uint64_t body_end_ = 0;  // where the trailer starts
  std::string manifest_;
  std::vector<SectionInfo> sections_;
};

}  // namespace hotboot::snapfile
