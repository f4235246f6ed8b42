// Taking a file descriptor out of another process (pidfd_getfd(2)): how a
// restored server gets the device memory its restorer filled (CONTROL.md
// "Weights handoff"). The caller needs ptrace access to the process (same
// user and no Yama restriction, or the process named us with
// PR_SET_PTRACER, or CAP_SYS_PTRACE).
#pragma once

#include "hotboot/status.h"

namespace hotboot {

// A new fd here (close-on-exec) for fd `fd` of process `pid`; the caller
// closes it. Errors name the call and say what to check: no such process or
// no such fd there (kNotFound), no ptrace access (kFailedPrecondition), a
// kernel before 5.6 (kUnsupported), pid <= 1 or fd < 0 (kInvalidArgument).
Result<int> TakeFdFromProcess(int pid, int fd);

}  // namespace hotboot
