#include "hotboot/orphans.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace hotboot::host {

std::set<pid_t> Children() {
  std::set<pid_t> out;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream in(task.path() / "children");
    for (pid_t p; in >> p;) out.insert(p);
  }
  return out;
}

OrphanReaper::OrphanReaper(bool active) : active_(active) {
  if (active_) known_ = Children();
}

OrphanReaper::OrphanReaper() : OrphanReaper(::getpid() == 1) {}

int OrphanReaper::Reap() {
  if (!active_) return 0;
  int reaped = 0;
  for (pid_t p : Children()) {
    if (known_.count(p)) continue;
    int st = 0;
    if (::waitpid(p, &st, WNOHANG) == p) ++reaped;
  }
  return reaped;
}

}  // namespace hotboot::host
