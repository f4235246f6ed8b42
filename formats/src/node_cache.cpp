#include "hotboot/node_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <utility>
#include <vector>

#include "hotboot/manifest.h"
#include "xxh3_fast.h"

namespace hotboot {

namespace {

std::string Octal(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

// The fd's directory, checked: owned by `euid`, not group/other-writable.
Status CheckDirFd(int fd, const std::string& path) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return ErrnoError("stat " + path, errno);
  if (!S_ISDIR(st.st_mode)) return Incompatible(path + " is not a directory: remove it (rm " + path + ")");
  const uid_t euid = ::geteuid();
  if (st.st_uid != euid) {
    return Incompatible("the weights directory " + path + " is owned by uid " + std::to_string(st.st_uid) +
                              ", not by uid " + std::to_string(euid) + " (this process): someone else made it " +
                              "first; remove it (rm -r " + path + ") or give it to uid " + std::to_string(euid) +
                              " (chown " + std::to_string(euid) + " " + path + ") if you trust what is in it");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    return Incompatible("the weights directory " + path + " (mode " + Octal(st.st_mode) +
                              ") is writable by group or others, who could replace the files replicas map: " +
                              "chmod go-w " + path);
  }
  return Status::Ok();
}

}  // namespace

std::string ResolveWeightsDir(const std::string& configured) {
  if (!configured.empty()) return configured;
  const char* env = std::getenv("HOTBOOT_WEIGHTS_DIR");
  return env && *env ? env : kDefaultWeightsDir;
}

SafeDir& SafeDir::operator=(SafeDir&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

SafeDir::~SafeDir() {
  if (fd_ >= 0) ::close(fd_);
}

Result<SafeDir> SafeDir::Open(const std::string& path_in, bool create) {
  if (path_in.empty() || path_in[0] != '/') {
    return InvalidArgument("the weights directory '" + path_in + "' must be an absolute path");
  }
  std::string path = std::filesystem::path(path_in).lexically_normal().string();
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  bool made = false;
  if (create) {
    // Its parents are this host's configuration (HOTBOOT_WEIGHTS_DIR), made
    // as for any configured directory; the directory itself is made 0755
    // here and checked below like one found in place.
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (::mkdir(path.c_str(), 0755) == 0) {
      made = true;
    } else if (errno != EEXIST) {
      return ErrnoError("create the weights directory " + path, errno);
    }
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      return Incompatible("the weights directory " + path + " is a symbolic link, which hotboot does not " +
                                "follow (someone may steer its writes elsewhere): remove it (rm " + path + ")");
    }
    if (err == ENOTDIR) return Incompatible(path + " is not a directory: remove it (rm " + path + ")");
    return ErrnoError("open the weights directory " + path, err);
  }
  SafeDir d;
  d.fd_ = fd;
  d.path_ = path;
  // The umask may have taken bits from the 0755 asked for; never added any.
  if (made) ::fchmod(fd, 0755);
  HB_RETURN_IF_ERROR(CheckDirFd(fd, path));
  return d;
}

Result<uint64_t> SafeDir::FreeBytes() const {
  struct statvfs v{};
  if (::fstatvfs(fd_, &v) != 0) return ErrnoError("statvfs " + path_, errno);
  return static_cast<uint64_t>(v.f_bavail) * static_cast<uint64_t>(v.f_frsize);
}

Result<int> SafeDir::CreateTemp(const std::string& prefix, std::string* name) const {
  static std::atomic<unsigned> seq{0};
  for (int attempt = 0; attempt < 16; ++attempt) {
    *name = prefix + "." + std::to_string(::getpid()) + "." + std::to_string(seq++);
    const int fd = ::openat(fd_, name->c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) return fd;
    if (errno != EEXIST) return ErrnoError("create " + PathOf(*name), errno);
  }
  return IoError("create a temporary file in " + path_ + ": every name tried exists");
}

Status SafeDir::Rename(const std::string& from, const std::string& to) const {
  if (::renameat(fd_, from.c_str(), fd_, to.c_str()) != 0) return ErrnoError("rename " + PathOf(from) + " to " + to, errno);
  return Status::Ok();
}

void SafeDir::Unlink(const std::string& name) const { ::unlinkat(fd_, name.c_str(), 0); }

NameLock::NameLock(NameLock&& o) noexcept
    : dir_fd_(o.dir_fd_), fd_(std::exchange(o.fd_, -1)), lock_name_(std::move(o.lock_name_)) {}

NameLock& NameLock::operator=(NameLock&& o) noexcept {
  if (this != &o) {
    Release();
    dir_fd_ = o.dir_fd_;
    fd_ = std::exchange(o.fd_, -1);
    lock_name_ = std::move(o.lock_name_);
  }
  return *this;
}

NameLock::~NameLock() { Release(); }

void NameLock::Release() {
  if (fd_ < 0) return;
  // Removed while still held, so that whoever opens the name next makes a
  // new file, and a waiter on this one sees it is gone (Acquire).
  ::unlinkat(dir_fd_, lock_name_.c_str(), 0);
  ::close(std::exchange(fd_, -1));
}

Result<NameLock> NameLock::Acquire(const SafeDir& dir, const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
    return InvalidArgument("no lock for '" + name + "': not a plain file name");
  }
  NameLock lock;
  lock.dir_fd_ = dir.fd();
  lock.lock_name_ = "." + name + ".lock";
  for (;;) {
    const int fd = ::openat(dir.fd(), lock.lock_name_.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return ErrnoError("open the lock " + dir.PathOf(lock.lock_name_), errno);
    int rc;
    do rc = ::flock(fd, LOCK_EX);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      const int e = errno;
      ::close(fd);
      return ErrnoError("flock " + dir.PathOf(lock.lock_name_), e);
    }
    // Still the file the name holds? Its last holder removes it before it
    // lets go: then this lock guards nothing, and the name is tried again.
    struct stat held{}, now{};
    if (::fstat(fd, &held) == 0 && ::fstatat(dir.fd(), lock.lock_name_.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0 &&
        held.st_dev == now.st_dev && held.st_ino == now.st_ino) {
      lock.fd_ = fd;
      return lock;
    }
    ::close(fd);
  }
}

Result<std::string> HashFileXxh128(int fd, const std::string& what) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return ErrnoError("stat " + what, errno);
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  // Read in 1 MiB pieces, not mapped: a fresh mapping pays a page fault per
  // 4 KiB (about 1 GB/s), a read from the page cache a copy (about 10 GB/s).
  std::vector<char> buf(1u << 20);
  uint64_t left = static_cast<uint64_t>(st.st_size), off = 0;
  while (left > 0) {
    const size_t want = left < buf.size() ? static_cast<size_t>(left) : buf.size();
    const ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read " + what, errno);
    if (n == 0) return IoError("read " + what + ": it shrank while being hashed");
    XXH3_128bits_update(&state, buf.data(), static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
    left -= static_cast<uint64_t>(n);
  }
  const XXH128_hash_t h = XXH3_128bits_digest(&state);
  return snapfile::Digest128{h.high64, h.low64}.Hex();
}

Result<std::string> HashPathXxh128(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  auto h = HashFileXxh128(fd, path);
  ::close(fd);
  return h;
}

Result<CacheEntry> CheckCacheFile(const SafeDir& dir, const std::string& name, uint64_t size,
                                  const std::string& content_hash, bool verify_content, double* hash_ms) {
  const std::string path = dir.PathOf(name);
  const int fd = ::openat(dir.fd(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return CacheEntry::kMissing;
    if (errno == ELOOP) {
      return Incompatible(path + " is a symbolic link, not a weights file hotboot wrote: remove it (rm " + path +
                                ")");
    }
    return ErrnoError("open " + path, errno);
  }
  struct stat st{};
  Status s;
  CacheEntry out = CacheEntry::kPresent;
  if (::fstat(fd, &st) != 0) {
    s = ErrnoError("stat " + path, errno);
  } else if (!S_ISREG(st.st_mode)) {
    s = Incompatible(path + " is not a regular file: remove it (rm " + path + ")");
  } else if (static_cast<uint64_t>(st.st_size) != size) {
    out = CacheEntry::kWrongSize;
  } else if (verify_content) {
    const auto t0 = std::chrono::steady_clock::now();
    auto h = HashFileXxh128(fd, path);
    if (hash_ms) *hash_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!h.ok()) {
      s = h.status();
    } else if (*h != content_hash) {
      out = CacheEntry::kWrongContent;
    }
  }
  ::close(fd);
  if (!s.ok()) return s;
  return out;
}

namespace {

// "dev ino size ctime_sec ctime_nsec" of `name` in `dir`, not following a
// symlink; empty when it is not a regular file.
std::string Identity(const SafeDir& dir, const std::string& name) {
  struct stat st{};
  if (::fstatat(dir.fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) return "";
  return std::to_string(st.st_dev) + " " + std::to_string(st.st_ino) + " " + std::to_string(st.st_size) + " " +
         std::to_string(st.st_ctim.tv_sec) + " " + std::to_string(st.st_ctim.tv_nsec) + "\n";
}

std::string MarkName(const std::string& name) { return "." + name + ".signed"; }

}  // namespace

bool HasSignedMark(const SafeDir& dir, const std::string& name) {
  const std::string id = Identity(dir, name);
  if (id.empty()) return false;
  const int fd = ::openat(dir.fd(), MarkName(name).c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st{};
  char buf[128];
  ssize_t n = -1;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  return n > 0 && std::string(buf, static_cast<size_t>(n)) == id;
}

Status WriteSignedMark(const SafeDir& dir, const std::string& name) {
  const std::string id = Identity(dir, name);
  if (id.empty()) return Internal(dir.PathOf(name) + " is not a regular file to mark");
  std::string tmp;
  HB_ASSIGN_OR_RETURN(const int fd, dir.CreateTemp(".mark", &tmp));
  Status s;
  if (::write(fd, id.data(), id.size()) != static_cast<ssize_t>(id.size())) s = ErrnoError("write " + dir.PathOf(tmp), errno);
  ::close(fd);
  if (s.ok()) s = dir.Rename(tmp, MarkName(name));
  if (!s.ok()) dir.Unlink(tmp);
  return s;
}

Status ExtractToCache(const snapfile::SnapshotReader& reader, const std::string& section, const SafeDir& dir,
                      const std::string& name, int threads) {
  const snapfile::SectionInfo* sec = reader.FindSection(section);
  if (!sec) return Corrupt(reader.path() + ": no section '" + section + "'");
  HB_ASSIGN_OR_RETURN(const uint64_t avail, dir.FreeBytes());
  if (avail < sec->raw_size) {
    return IoError("the weights directory " + dir.path() + " has " + std::to_string(avail) + " bytes free, " + name +
                   " needs " + std::to_string(sec->raw_size) + ": set HOTBOOT_WEIGHTS_DIR to a directory with room " +
                   "(on the build host too: the path is in the snapshot's images) or free space there");
  }
  std::string tmp;
  HB_ASSIGN_OR_RETURN(const int fd, dir.CreateTemp(".extract-" + name.substr(0, 64), &tmp));
  Status s = reader.ExtractSectionToFd(section, fd, threads);
  // The mode the file had on the build host (CRIU's restore checks a mapped
  // file's mode against the dump's), never more than rw-r--r--.
  const mode_t mode = static_cast<mode_t>(sec->mode & 0644);
  if (s.ok() && ::fchmod(fd, mode) != 0) s = ErrnoError("chmod " + dir.PathOf(tmp), errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + dir.PathOf(tmp), errno);
  if (s.ok()) s = dir.Rename(tmp, name);
  if (!s.ok()) dir.Unlink(tmp);
  return s;
}

}  // namespace hotboot
