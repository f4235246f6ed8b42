#include "fd_handoff.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace hotboot {

namespace {

// Debian 12's glibc (2.36) has pidfd_open but not pidfd_getfd: both through
// syscall(2), by their numbers from <sys/syscall.h>.
int PidfdOpen(int pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
int PidfdGetfd(int pidfd, int fd) { return static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0)); }

}  // namespace

Result<int> TakeFdFromProcess(int pid, int fd) {
  if (pid <= 1) return InvalidArgument("pid " + std::to_string(pid) + " is not a process to take an fd from");
  if (fd < 0) return InvalidArgument("fd " + std::to_string(fd) + " is not a file descriptor");
  const std::string what = "fd " + std::to_string(fd) + " of process " + std::to_string(pid);
  const int pidfd = PidfdOpen(pid);
  if (pidfd < 0) {
    const int e = errno;
    if (e == ESRCH) return NotFound("pidfd_open: process " + std::to_string(pid) + " does not exist");
    if (e == ENOSYS) return Unsupported("pidfd_open: this kernel has no pidfds (Linux 5.6 or later needed)");
    return ErrnoError("pidfd_open " + std::to_string(pid), e);
  }
  const int got = PidfdGetfd(pidfd, fd);
  const int e = errno;
  ::close(pidfd);
  if (got >= 0) return got;
  if (e == EBADF) return NotFound("pidfd_getfd: process " + std::to_string(pid) + " has no fd " + std::to_string(fd));
  if (e == ESRCH) return NotFound("pidfd_getfd: process " + std::to_string(pid) + " exited");
  if (e == EPERM) {
    return FailedPrecondition("pidfd_getfd " + what +
                              ": no ptrace access to it (the process must run as this user and allow us: "
                              "prctl(PR_SET_PTRACER) under Yama, or give this process CAP_SYS_PTRACE)");
  }
  if (e == ENOSYS) return Unsupported("pidfd_getfd: this kernel lacks it (Linux 5.6 or later needed)");
  return ErrnoError("pidfd_getfd " + what, e);
}

}  // namespace hotboot
