// Where the packed weights are written: a temporary file in the weights
// directory, mapped shared and filled through the mapping. A store through a
// shared mapping cannot fail with ENOSPC; on a full tmpfs (a container's
// 64 MiB /dev/shm) it is a SIGBUS at the first page the file system cannot
// back. So the space is checked (statvfs) and reserved (posix_fallocate)
// before the first store, and a directory without room is an error that says
// what to do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "hotboot/node_cache.h"  // ResolveWeightsDir, kDefaultWeightsDir, SafeDir
#include "hotboot/status.h"

namespace hotboot {

// What the error for a directory without room advises besides another
// directory and a larger /dev/shm: whether "none" (anonymous memory) is a way
// out for this caller (the CPU model's; the GPU model always needs its file).
enum class NoRoomAdvice { kOfferNone, kNeedAFile };

// Bytes an unprivileged writer may still use in `dir` (statvfs f_bavail).
Result<uint64_t> FreeBytes(const std::string& dir);
using FreeBytesFn = Result<uint64_t> (*)(const std::string& dir);

// Sets open file `fd` (`path`, in `dir`) to `bytes` with every block
// allocated, so that stores through a mapping of it cannot fault for want of
// space. Where the file system cannot preallocate (EOPNOTSUPP, EINVAL) it
// only sets the size, and the caller's free-space check is the only guard.
Status ReserveFileSpace(int fd, const std::string& path, const std::string& dir, uint64_t bytes, NoRoomAdvice advice);

// A temporary file mapped shared, read-write; its owner unmaps and unlinks it.
struct MappedTemp {
  std::string path;
  uint8_t* base = nullptr;
  size_t size = 0;
};

// Creates `dir` when missing and checks it as restore does (SafeDir: not a
// symlink, owned by this process's euid, not group/other-writable), checks
// that it has `bytes` free (`free_bytes`: a seam for tests), creates
// <dir>/<prefix>.<pid>.<n> with openat(O_EXCL|O_NOFOLLOW), reserves its space
// and maps it. On failure nothing is left behind.
// Publishes `tmp_path` (from CreateMappedTemp, mapped at `bytes`) under its
// content-hash name `<kind>-<XXH3-128 of the whole file>.bin` in `dir`
// (checked again) and returns that path. A file of that name already there
// with the same bytes is kept, and the caller's mapping is moved onto it
// (MAP_FIXED, read-only, same address), so the process maps the published
// file and never a deleted one.
// `known_hash`: the XXH3-128 of the bytes when the caller computed it already
// (while writing them), so it is not computed again.
Result<std::string> PublishByContent(const std::string& dir, const std::string& tmp_path, const std::string& kind,
                                     const uint8_t* bytes, size_t size, const snapfile::Digest128* known_hash = nullptr);

Result<MappedTemp> CreateMappedTemp(const std::string& dir, const std::string& prefix, size_t bytes,
                                    NoRoomAdvice advice, FreeBytesFn free_bytes = &FreeBytes);

}  // namespace hotboot
