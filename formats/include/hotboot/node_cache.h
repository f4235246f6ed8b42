// The node cache: the weights directory of this host, where the files a
// snapshot provides (the server's weights) live, named by their content hash
// (`weights-<xxh3-128>.bin`). Which directory it is is local configuration
// ($HOTBOOT_WEIGHTS_DIR, else /dev/shm/hotboot-weights), never a snapshot's.
//
// The directory is treated the way OpenSSH and systemd treat theirs: created
// 0755 when missing, opened O_DIRECTORY|O_NOFOLLOW and checked on the fd
// (owned by this process's euid, not writable by group or others); files in
// it are made with openat(O_CREAT|O_EXCL|O_NOFOLLOW) and renamed into place.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "hotboot/snapshot_file.h"
#include "hotboot/status.h"

namespace hotboot {

inline constexpr const char* kDefaultWeightsDir = "/dev/shm/hotboot-weights";

// `configured` when set, else $HOTBOOT_WEIGHTS_DIR when set, else
// kDefaultWeightsDir. May be "none" (the server then keeps weights in
// anonymous memory).
std::string ResolveWeightsDir(const std::string& configured = "");

// An open, checked directory. Move-only; closes its fd.
class SafeDir {
 public:
  SafeDir() = default;
  SafeDir(SafeDir&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  SafeDir& operator=(SafeDir&& o) noexcept;
  SafeDir(const SafeDir&) = delete;
  SafeDir& operator=(const SafeDir&) = delete;
  ~SafeDir();

  // Creates `path` (0755; its parents as needed) when missing, opens it
  // without following a symlink and checks it: a directory owned by this
  // process's effective uid, not group- or other-writable. A directory that
  // fails says what to do (rm -r it, chown, chmod go-w).
  static Result<SafeDir> Open(const std::string& path, bool create = true);

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  std::string PathOf(std::string_view name) const { return path_ + "/" + std::string(name); }
  // Bytes an unprivileged writer may still use here (fstatvfs f_bavail).
  Result<uint64_t> FreeBytes() const;

  // A new file `<prefix>.<pid>.<n>` created O_EXCL|O_NOFOLLOW (mode 0644),
  // open read-write; *name gets its name.
  Result<int> CreateTemp(const std::string& prefix, std::string* name) const;
  // renameat within this directory.
  Status Rename(const std::string& from, const std::string& to) const;
  void Unlink(const std::string& name) const;

 private:
  int fd_ = -1;
  std::string path_;
};

// What a lookup of a content-named file found.
enum class CacheEntry { kMissing, kPresent, kWrongSize, kWrongContent };

// Checks `name` in `dir` without following a symlink: kPresent when it is a
// regular file of `size` bytes and, with `verify_content`, its XXH3-128 is
// `content_hash` (32 hex; about 0.2 s per GB);
// kMissing when absent; kWrongSize / kWrongContent when it is a regular file
// with other bytes (damaged: the caller extracts a good one over it; a
// process that maps the old one keeps its inode). Anything but a regular
// file there (a symlink, a device, a FIFO) is an error naming it: hotboot
// never makes one, so someone with write access to the directory did.
// *hash_ms gets the time the content check took.
Result<CacheEntry> CheckCacheFile(const SafeDir& dir, const std::string& name, uint64_t size,
                                  const std::string& content_hash, bool verify_content, double* hash_ms = nullptr);

// A file's XXH3-128 name is no proof against an attacker (XXH3 is not
// collision-resistant): a file an unsigned snapshot put there could collide
// with a signed one's. Restore under a trust policy therefore reuses an
// entry only when a sidecar `.<name>.signed`, written after the entry was
// extracted from a snapshot whose signature and chunk SHA-256s were checked,
// names this very inode (st_dev, st_ino, size, ctime); otherwise it extracts
// the file again and writes the sidecar. A file replaced since (a rename
// over it) is another inode, so an old sidecar never vouches for it.
bool HasSignedMark(const SafeDir& dir, const std::string& name);
Status WriteSignedMark(const SafeDir& dir, const std::string& name);

// XXH3-128 of an open file's bytes from offset 0 (its size as fstat says),
// 32 lowercase hex digits: the content hash the snapshot format gives a
// section of the same bytes.
Result<std::string> HashFileXxh128(int fd, const std::string& what);
// The same, of a file opened by path (a host's own file, e.g. a library).
Result<std::string> HashPathXxh128(const std::string& path);

// Single flight for one name in a directory: an exclusive flock(2) on
// `.<name>.lock` there (made O_CREAT|O_NOFOLLOW, 0600), held until the
// NameLock is destroyed, which removes the lock file and then releases it.
// N restores that start at once on a fresh host all lack the same weights
// file; each takes this lock before extracting, checks again, and finds it
// in place unless it is the first: one decode instead of N. A waiter that
// got the lock on a file already removed opens the new one and waits again.
// Blocks without a deadline: the holder is a restore, which extracts or
// fails, and a holder that dies releases it. Must not outlive `dir`.
class NameLock {
 public:
  NameLock() = default;
  NameLock(NameLock&& o) noexcept;
  NameLock& operator=(NameLock&& o) noexcept;
  NameLock(const NameLock&) = delete;
  NameLock& operator=(const NameLock&) = delete;
  ~NameLock();

  static Result<NameLock> Acquire(const SafeDir& dir, const std::string& name);

 private:
  void Release();
  int dir_fd_ = -1;  // the SafeDir's, not owned
  int fd_ = -1;
  std::string lock_name_;
};

// Extracts section `section` of `reader` into `dir` as `name`: checks that
// the directory has room for it, writes an O_EXCL temporary, has formats
// check every chunk and the section's content hash, and renames it into
// place only then (mode 0444). On failure nothing is left.
Status ExtractToCache(const snapfile::SnapshotReader& reader, const std::string& section, const SafeDir& dir,
                      const std::string& name, int threads);

}  // namespace hotboot
