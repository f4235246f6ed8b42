#include "weights_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>

#include <xxhash.h>

namespace hotboot {

namespace {

std::string Size(uint64_t bytes) {
  char mib[32];
  std::snprintf(mib, sizeof mib, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return std::string(mib) + " (" + std::to_string(bytes) + " bytes)";
}

bool UnderDevShm(const std::string& dir) {
  const std::string d = std::filesystem::path(dir).lexically_normal().string();
  return d == "/dev/shm" || d == "/dev/shm/" || d.rfind("/dev/shm/", 0) == 0;
}

// "weights directory /dev/shm/hotboot-weights has 8.0 MiB (8388608 bytes)
// free, the weights need 21.1 MiB (22151168 bytes): set ..."
Status NoRoom(const std::string& dir, uint64_t need, std::optional<uint64_t> avail, NoRoomAdvice advice,
              const std::string& detail) {
  std::string m = "weights directory " + dir + " has " + (avail ? Size(*avail) : std::string("too little space")) +
                  " free, the weights need " + Size(need);
  if (!detail.empty()) m += " (" + detail + ")";
  m += ": set HOTBOOT_WEIGHTS_DIR to a directory with room";
  if (advice == NoRoomAdvice::kOfferNone) m += " (or to \"none\": weights in anonymous memory, not shared)";
  if (UnderDevShm(dir)) {
    const uint64_t gib = uint64_t{1} << 30;
    m += ", or give the container a larger /dev/shm (podman/docker run --shm-size=" +
         std::to_string((need + gib - 1) / gib + 1) + "g; Kubernetes: an emptyDir with medium Memory on /dev/shm)";
  } else {
    m += ", or free space there";
  }
  return IoError(m);
}

}  // namespace

Result<uint64_t> FreeBytes(const std::string& dir) {
  struct statvfs v{};
  if (::statvfs(dir.c_str(), &v) != 0) return ErrnoError("statvfs " + dir, errno);
  return static_cast<uint64_t>(v.f_bavail) * static_cast<uint64_t>(v.f_frsize);
}

Status ReserveFileSpace(int fd, const std::string& path, const std::string& dir, uint64_t bytes, NoRoomAdvice advice) {
  if (bytes > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return InvalidArgument(path + ": " + std::to_string(bytes) + " bytes is more than a file can hold");
  }
  // posix_fallocate returns the error; it does not set errno.
  const int err = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (err == 0) return Status::Ok();
  if (err == EOPNOTSUPP || err == EINVAL || err == ENOSYS) {
    // No preallocation here: size the file sparse, as before.
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) return ErrnoError("size " + path, errno);
    return Status::Ok();
  }
  if (err == ENOSPC || err == EDQUOT) {
    auto avail = FreeBytes(dir);
    return NoRoom(dir, bytes, avail.ok() ? std::optional<uint64_t>(*avail) : std::nullopt, advice,
                  std::string("posix_fallocate ") + path + ": " + std::strerror(err));
  }
  return ErrnoError("posix_fallocate " + path + " (" + std::to_string(bytes) + " bytes)", err);
}

Result<MappedTemp> CreateMappedTemp(const std::string& dir, const std::string& prefix, size_t bytes,
                                    NoRoomAdvice advice, FreeBytesFn free_bytes) {
  HB_ASSIGN_OR_RETURN(SafeDir sd, SafeDir::Open(dir));
  // The quick check, with the clearest message; the reservation below is the
  // one that holds (another process may fill the directory in between).
  HB_ASSIGN_OR_RETURN(const uint64_t avail, free_bytes(dir));
  if (avail < bytes) return NoRoom(dir, bytes, avail, advice, "");
  MappedTemp t;
  std::string name;
  HB_ASSIGN_OR_RETURN(const int fd, sd.CreateTemp(prefix, &name));
  t.path = sd.PathOf(name);
  Status s = ReserveFileSpace(fd, t.path, dir, bytes, advice);
  void* p = MAP_FAILED;
  if (s.ok()) {
    p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) s = ErrnoError("map " + t.path, errno);
  }
  ::close(fd);
  if (!s.ok()) {
    sd.Unlink(name);
    return s;
  }
  t.base = static_cast<uint8_t*>(p);
  t.size = bytes;
  return t;
}

Result<std::string> PublishByContent(const std::string& dir, const std::string& tmp_path, const std::string& kind,
                                     const uint8_t* bytes, size_t size, const snapfile::Digest128* known_hash) {
  HB_ASSIGN_OR_RETURN(SafeDir sd, SafeDir::Open(dir));
  snapfile::Digest128 d;
  if (known_hash) {
    d = *known_hash;
  } else {
    const XXH128_hash_t h = XXH3_128bits(bytes, size);
    d = {h.high64, h.low64};
  }
  const std::string name = kind + "-" + d.Hex() + ".bin";
  const std::string tmp = std::filesystem::path(tmp_path).filename().string();
  // Never replace a file of that name: a replica or a build may map it, and
  // a build refuses a server that maps a deleted file. When one is there
  // already (another server of the same model published first), and it
  // holds these bytes, our mapping is moved onto it (same bytes, same
  // address) and our temporary removed: every process maps the one file.
  if (::renameat2(sd.fd(), tmp.c_str(), sd.fd(), name.c_str(), RENAME_NOREPLACE) == 0) return sd.PathOf(name);
  if (errno != EEXIST) return ErrnoError("rename " + sd.PathOf(tmp) + " to " + name, errno);
  const int fd = ::openat(sd.fd(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + sd.PathOf(name), errno);
  auto same = HashFileXxh128(fd, sd.PathOf(name));
  Status st;
  if (!same.ok()) {
    st = same.status();
  } else if (*same != name.substr(kind.size() + 1, 32)) {
    // Damaged: replace it (whoever maps it keeps its inode).
    st = sd.Rename(tmp, name);
  } else if (::mmap(const_cast<uint8_t*>(bytes), size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
    st = ErrnoError("map " + sd.PathOf(name), errno);
  } else {
    sd.Unlink(tmp);
  }
  ::close(fd);
  HB_RETURN_IF_ERROR(st);
  return sd.PathOf(name);
}

}  // namespace hotboot
