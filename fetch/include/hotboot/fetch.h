// Snapshots from where teams keep artifacts: pushed to an OCI registry as an
// artifact whose layers are byte ranges of the snapshot file (formats/OCI.md),
// and read back -- from a registry or any HTTP(S) server with Range -- as a
// source a SnapshotReader reads while the bytes arrive: fetched in parallel
// over several connections, each read blocking only until the bytes it needs
// are there, every chunk checked by the reader (its SHA-256 from the trust
// record) before use, every blob checked against its digest before the node
// cache keeps it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hotboot/job.h"
#include "hotboot/oci.h"
#include "hotboot/snapshot_file.h"
#include "hotboot/status.h"

namespace hotboot::fetch {

// The artifact (formats/OCI.md).
inline constexpr const char* kArtifactType = "application/vnd.hotboot.snapshot.v1";
inline constexpr const char* kConfigType = "application/vnd.hotboot.snapshot.config.v1+json";
inline constexpr const char* kPartType = "application/vnd.hotboot.snapshot.part.v1";
// A section storing at least this many bytes is a blob of its own (shared by
// every snapshot holding the same bytes); smaller ones travel together.
inline constexpr uint64_t kOwnBlobMin = 16ull << 20;
// The most a pushed snapshot may claim, and the most layers it may have.
inline constexpr uint64_t kMaxArtifactBytes = 1ull << 42;  // 4 TiB
inline constexpr size_t kMaxParts = 4096;

// One layer: bytes [offset, offset + size) of the snapshot file.
struct Part {
  uint64_t offset = 0;
  uint64_t size = 0;
  std::vector<std::string> sections;  // sections whose records lie in it
  bool own_section = false;           // exactly one large section
  std::string content_hash;           // that section's XXH3-128 (own_section)
  std::string digest;                 // sha256:<hex> of the bytes (filled by push)
};
// Bytes [begin, end) of a section's records (section record .. end record).
std::pair<uint64_t, uint64_t> SectionSpan(const snapfile::SectionInfo& s);
// How a snapshot is split into layers: each section of at least kOwnBlobMin
// stored bytes alone, the bytes between them (header, manifest and small
// sections; index, trust record, trailer) in one part each. Contiguous,
// covering the file.
std::vector<Part> PartsOf(const snapfile::SnapshotReader& r);

// Progress of a transfer, for the CLI's progress line or --json events.
struct Progress {
  const char* what = "";  // "fetch", "push"
  uint64_t done = 0;      // bytes moved over the network so far
  uint64_t total = 0;     // bytes it will move (as known now)
  double elapsed_s = 0;
};
using ProgressFn = std::function<void(const Progress&)>;

struct PushOptions {
  RemoteOptions remote;
  std::vector<std::string> mount_from;  // repositories (same registry) to mount missing blobs from
  uint64_t upload_chunk = 64ull << 20;
  ProgressFn progress;
};
struct PushedPart {
  Part part;
  bool uploaded = false;
  bool mounted = false;
};
struct PushResult {
  std::string ref;
  std::string digest;  // the manifest's
  uint64_t bytes_total = 0;
  uint64_t bytes_uploaded = 0;
  std::vector<PushedPart> parts;
  std::string config_digest;
};
// Uploads `snapshot` (a file; opened and checked as a reader opens it) as an
// artifact under ref's tag: blobs the registry already has are skipped,
// others mounted from opts.mount_from when possible, else uploaded in chunks.
Result<PushResult> Push(const std::string& snapshot, const OciRef& ref, const PushOptions& opts);

struct FetchOptions {
  RemoteOptions remote;
  std::string cache_dir;  // resolved (hotboot/cache.h ResolveCacheDir)
  int connections = 8;
  uint64_t piece = 8ull << 20;  // bytes per ranged request
  int attempts = 5;             // per piece; a dropped connection resumes where it broke
  ProgressFn progress;
  // Temporaries in the node cache are registered with this job (host/job.h)
  // before they exist, so that its janitor removes them whatever ends us.
  std::shared_ptr<host::Job> job;
};

struct FetchStats {
  std::string source;           // "oci", "https"
  std::string resolved;         // oci: the manifest digest; https: the URL
  uint64_t size = 0;            // the snapshot's bytes
  uint64_t bytes_fetched = 0;   // over the network
  uint64_t bytes_from_cache = 0;
  uint64_t bytes_skipped = 0;   // never needed (weights already on this host)
  int blobs_published = 0;      // new in the node cache
  double fetch_ms = 0;          // first request to last byte
};

// A snapshot at an oci:// reference or an http(s):// URL, as a source for
// SnapshotReader::Open. Reads block until their bytes arrived; a read of
// bytes nobody asked for yet fetches them first (the header, the trailer and
// the index come that way). Cached blobs (oci) are read in place; the others
// are fetched into the node cache's tmp/, under an exclusive lock per blob, so
// concurrent fetches of one blob on one host download it once.
class RemoteSnapshot : public snapfile::ByteSource {
 public:
  ~RemoteSnapshot() override;
  static Result<std::shared_ptr<RemoteSnapshot>> Open(const std::string& ref, const FetchOptions& opts);

  uint64_t size() const override;
  const std::string& name() const override;
  Status ReadAt(uint64_t offset, size_t n, char* out) const override;
  Result<const char*> View(uint64_t offset, size_t n) const override;

  // Fetch these byte ranges in the background, in this order (what the
  // caller will read: CRIU images first, then weights); bytes never asked
  // for are never fetched.
  void Prefetch(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  // Everything but the given sections (weights this host already has).
  void PrefetchAllBut(const snapfile::SnapshotReader& r, const std::vector<std::string>& skip_sections);
  // Waits for what was asked, checks each complete blob against its digest
  // and publishes it into the node cache, records the reference; the first
  // error. Partly fetched blobs are discarded, never kept.
  Status Finish();
  FetchStats stats() const;

  class Impl;

 private:
  explicit RemoteSnapshot(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hotboot::fetch
