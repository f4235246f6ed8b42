// Reaping what is re-parented to us. `hotboot restore` is often PID 1 (a
// container's entrypoint); without a PID namespace of its own (GPU hosts)
// the replica's orphans are re-parented to it, and nobody else will wait for
// them: each would stay a zombie for the container's life.
#pragma once

#include <sys/types.h>

#include <set>

namespace hotboot::host {

// This process's children now (/proc/self/task/*/children).
std::set<pid_t> Children();

// Remembers the children there are when it is made (the replica, janitors:
// their owners wait for them) and reaps, on each Reap(), any other child
// that has exited. Does nothing unless `active` (by default: we are PID 1).
class OrphanReaper {
 public:
  explicit OrphanReaper(bool active);
  OrphanReaper();
  // Returns how many it reaped.
  int Reap();

 private:
  bool active_;
  std::set<pid_t> known_;
};

}  // namespace hotboot::host
