#include "hotboot/temp_files.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>

namespace hotboot {

namespace fs = std::filesystem;

namespace {
fs::path ParentOf(const std::string& path) {
  const fs::path p(path);
  return p.has_parent_path() ? p.parent_path() : fs::path(".");
}
}  // namespace

std::string TempPathFor(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

void SweepStaleTemporaries(const std::string& path) {
  const fs::path dir = ParentOf(path);
  const std::string prefix = fs::path(path).filename().string() + ".tmp.";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  DIR* d = ::fdopendir(dfd);
  if (!d) {
    ::close(dfd);
    return;
  }
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
    const long pid = std::strtol(digits.c_str(), nullptr, 10);
    if (pid <= 0) continue;
    // Ours (a leftover of an earlier process with this id), or its owner is gone.
    const bool stale = pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH);
    struct stat st{};
    if (stale && ::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))) {
      ::unlinkat(dfd, name.c_str(), 0);
    }
  }
  ::closedir(d);  // closes dfd
}

Result<int> CreateTemporary(const std::string& path, unsigned mode) {
  SweepStaleTemporaries(path);
  const std::string tmp = TempPathFor(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError("create " + tmp, errno);
  return fd;
}

void SyncParentDir(const std::string& path) {
  int dfd = ::open(ParentOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace hotboot
