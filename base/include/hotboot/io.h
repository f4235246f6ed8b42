// Whole-buffer pread/write loops: a short read is Truncated naming the byte,
// EINTR is retried, any other errno names the path.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "hotboot/status.h"

namespace hotboot::io {

// Reads exactly len bytes at off; a short file is Truncated, naming the byte.
inline Status PreadAll(int fd, char* dst, uint64_t len, uint64_t off, const std::string& path) {
  uint64_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, dst + got, len - got, static_cast<off_t>(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read " + path, errno);
    if (n == 0) return Truncated(path + ": file ends at byte " + std::to_string(off + got));
    got += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

inline Status WriteAll(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return ErrnoError("write " + path, errno);
    c += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

}  // namespace hotboot::io
