// The node cache: what a host keeps of the snapshots it fetched, shared by
// every snapshot and replica on it, addressed by content.
//
//   <dir>/blobs/sha256/<hex>     complete blobs, each checked against its
//                                digest before it got its name (0444)
//   <dir>/tmp/<hex>.<pid>.<n>    blobs being fetched (O_EXCL; removed on
//                                failure; a dead owner's are swept by gc)
//   <dir>/locks/<hex>.lock       flock(2): exclusive while a blob is fetched
//                                (single flight), shared while it is read
//   <dir>/refs/<sha256 of ref>.json  what a reference last resolved to
//
// The weights a snapshot provides live decoded in the weights directory
// (hotboot/node_cache.h), named by their XXH3-128 content hash; `ls`, `gc`
// and `prune` cover them too, and never remove a file a running process maps.
// A blob's mtime is its last use (set on every use; atime is unreliable).
//
// The directory is $HOTBOOT_CACHE_DIR, or --cache-dir, else
// /var/lib/hotboot/cache; created 0755, owned by this euid, not writable by
// others (SafeDir's checks), so only this user ever names a file there.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::host {
class Job;
}

namespace hotboot::fetch {

inline constexpr const char* kDefaultCacheDir = "/var/lib/hotboot/cache";
// `flag` when set, else $HOTBOOT_CACHE_DIR when set, else kDefaultCacheDir.
std::string ResolveCacheDir(const std::string& flag = "");

// True for "sha256:" followed by 64 lowercase hex digits, the only digest
// form the cache accepts (a digest becomes a file name).
bool IsValidDigest(const std::string& digest);

// An flock on locks/<hex>.lock, released when destroyed (or moved from).
class BlobLock {
 public:
  BlobLock() = default;
  BlobLock(BlobLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  BlobLock& operator=(BlobLock&& o) noexcept;
  ~BlobLock();
  bool held() const { return fd_ >= 0; }

 private:
  friend class NodeCache;
  explicit BlobLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// A blob being fetched: a sized file in tmp/, open read-write.
struct PartialBlob {
  std::string digest;  // sha256:<hex>
  uint64_t size = 0;
  int fd = -1;
  std::string path;  // absolute, for the janitor and messages
};

struct CacheItem {
  std::string kind;  // "blob", "weights", "partial"
  std::string name;  // digest (blob), file name (weights, partial)
  std::string path;
  uint64_t bytes = 0;  // allocated on disk (st_blocks * 512)
  int64_t last_used_unix = 0;
  bool in_use = false;  // mapped by a running process, or locked by a fetch or read now
  std::vector<std::string> refs;  // references whose last resolved manifest lists this blob
};

struct CacheReport {
  std::vector<CacheItem> removed;
  uint64_t freed_bytes = 0;
  uint64_t kept_bytes = 0;
  std::vector<std::string> skipped_in_use;  // paths not removed because they are in use
};

class NodeCache {
 public:
  ~NodeCache();
  // Creates the layout when missing and checks the directory (SafeDir).
  static Result<std::unique_ptr<NodeCache>> Open(const std::string& dir);
  // create=false: a missing directory is not made; the cache is then empty
  // (List/Gc/Prune cover the weights directory only; NewPartial, LockExclusive,
  // LockShared and RecordRef fail with kFailedPrecondition). For `cache ls`.
  static Result<std::unique_ptr<NodeCache>> Open(const std::string& dir, bool create);
  // Registers every partial with this job (AddTemporary before it is made,
  // DropTemporary once published or discarded), so a killed process leaves
  // none; without a job, gc sweeps partials no running process holds open.
  void SetJob(std::shared_ptr<host::Job> job);
  const std::string& dir() const { return dir_; }

  // The path of a complete blob, its last use set to now; nullopt when absent.
  std::optional<std::string> Find(const std::string& digest);
  // Exclusive: blocks until no one else fetches or reads the blob; the one
  // fetch that holds it downloads, the others then Find() it (single flight).
  Result<BlobLock> LockExclusive(const std::string& digest);
  // The same without blocking: nullopt while anyone holds the lock (a fetch,
  // or readers: a fetch that waits must not queue behind running replicas'
  // shared locks, which last as long as the replicas; see remote.cpp Back).
  Result<std::optional<BlobLock>> TryLockExclusive(const std::string& digest);
  // Shared: held while a complete blob is read, so that prune skips it.
  Result<BlobLock> LockShared(const std::string& digest);
  // A new O_EXCL file in tmp/ of `size` bytes (ftruncate; holes until written).
  Result<PartialBlob> NewPartial(const std::string& digest, uint64_t size);
  // SHA-256 of the whole partial file must be its digest (else kCorrupt naming
  // the digest and what the bytes hash to; the file is removed); fsync, chmod
  // 0444, rename to blobs/sha256/<hex>, fsync the directory. Closes p.fd.
  // `already_hashed`: the caller hashed the bytes as they arrived and they matched.
  Status Publish(PartialBlob& p, bool already_hashed = false);
  // Removes a partial (failure paths).
  void Discard(PartialBlob& p);
  // Records what `ref` resolved to (refs/), for ls and gc.
  Status RecordRef(const std::string& ref, const std::string& manifest_digest, const std::string& manifest_bytes);

  // Everything in the cache and the weights directory (empty: none).
  Result<std::vector<CacheItem>> List(const std::string& weights_dir);
  // Removes what is garbage: partials of dead fetches, lock files of absent
  // blobs, blobs no recorded reference lists. Never what is in use.
  Result<CacheReport> Gc(const std::string& weights_dir, bool dry_run = false);
  // Least recently used first, blobs and weights files, until the cache and
  // weights directory hold at most keep_bytes. Never what is in use.
  Result<CacheReport> Prune(uint64_t keep_bytes, const std::string& weights_dir, bool dry_run = false);

 private:
  NodeCache() = default;
  std::string dir_;
  int dir_fd_ = -1;
  std::shared_ptr<host::Job> job_;
};

}  // namespace hotboot::fetch
