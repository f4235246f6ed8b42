// A job: one `hotboot build` or `hotboot restore` (or a test) and everything
// it starts or creates on the host, so that nothing outlives it unasked.
//
// What runs where:
//   - the job process (hotboot) makes one cgroup per server tree it starts,
//     <own cgroup>/hotboot-<kind>.<pid>.<start>.<n> (see cgroup.h for why
//     under our own cgroup), and moves the server into it before it execs
//     (LaunchReplica) or starts CRIU's restore inside it (criu.h);
//   - a janitor process (janitor.h) is told every cgroup and temporary as it
//     is made, and ends/removes them if the job dies (SIGKILL included);
//   - a journal, <state_dir>/jobs/<pid>.<start>, records the same lines on
//     disk before each is made, for the worst case: job and janitor both
//     killed (a kill of their whole cgroup, a reboot of the janitor's...).
//     The next job of any kind (build or restore) sweeps at its start every
//     journal whose owner is gone, and every hotboot-* cgroup beside its own
//     whose owner is gone.
// A job's owner is a pid and its start time (/proc/PID/stat field 22), so a
// recycled pid is never mistaken for a live owner.
//
// A detached replica outlives its job: HandOver() tells the janitor to
// forget its cgroup and writes <state_dir>/replicas/<cgroup name>, naming
// the cgroup and its pid, so an operator (or a later hotboot) finds it:
//   cat /run/hotboot/replicas/*; echo 1 > <cgroup>/cgroup.kill
// The sweep removes a handed-over cgroup (and its record) once it is empty.
//
// Limits: where cgroup v2 is not usable (no cgroup2 mount, read-only, not
// root) servers run without one (warning() says so) and only their process
// group is killed: what they setsid() escapes. The janitor itself dies with
// a kill of its own cgroup (then the journal and the next job's sweep do its
// work) and cannot outlive a reboot (nothing to do then but files: /run is
// cleared, /dev/shm too; other temporaries are swept by journal).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "hotboot/cgroup.h"
#include "hotboot/janitor.h"
#include "hotboot/status.h"

namespace hotboot::host {

inline constexpr const char* kDefaultStateDir = "/run/hotboot";
inline constexpr const char* kCgroupPrefix = "hotboot-";

struct JobOptions {
  std::string kind = "job";    // "build", "restore": names its cgroups
  std::string cgroup_parent;   // where its cgroups go; empty: our own cgroup's directory
  std::string state_dir = kDefaultStateDir;  // journals and hand-over records
  bool sweep = true;           // sweep what dead jobs left, first
};

// The start time of a process in clock ticks since boot (/proc/PID/stat
// field 22); 0 when there is no such process.
uint64_t ProcessStartTime(pid_t pid);
// True when pid runs and started at `start_time`.
bool OwnerAlive(pid_t pid, uint64_t start_time);

struct SweepReport {
  int journals = 0;   // dead jobs' journals replayed
  int cgroups = 0;    // cgroups ended and removed
  int paths = 0;      // temporaries removed
};
// Ends and removes what dead jobs left: their journals' cgroups and paths,
// and hotboot-* cgroups under cgroup_parent (empty: none) whose owner is
// gone (handed-over ones only once empty). Best effort: never fails.
SweepReport SweepStale(const std::string& state_dir, const std::string& cgroup_parent);

// Temporaries named by the older, journal-less scheme, in `dir`, whose
// owner pid no longer runs: "hotboot-restore.PID.*" (a restore's work dir)
// and ".hotboot-build.NAME.PID" (a build's). Best effort.
int SweepNamedTemporaries(const std::string& dir);

// Why servers cannot get a cgroup of their own here (empty: they can).
std::string ContainmentProblem(const std::string& cgroup_parent = "");

class Job {
 public:
  static Result<std::shared_ptr<Job>> Start(const JobOptions& opts);
  // Ends every cgroup it still owns, removes its temporaries and journal,
  // and tells the janitor it is done.
  ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  // Empty when every server gets a cgroup; else why not (say it once).
  const std::string& warning() const { return warning_; }
  bool contained() const { return warning_.empty(); }
  const SweepReport& swept() const { return swept_; }
  pid_t janitor_pid() const { return janitor_ ? janitor_->pid() : -1; }
  const std::string& journal() const { return journal_; }

  // A new cgroup for one server tree, registered before it is made. Null
  // when containment is reduced (see warning()).
  Result<std::shared_ptr<Cgroup>> NewCgroup();
  // Kills and removes it, and forgets it.
  Status EndCgroup(Cgroup& cg);
  // Hands it over (a detached replica): forgotten by the janitor and the
  // journal, recorded in <state_dir>/replicas/. Returns that record's path.
  Result<std::string> HandOver(Cgroup& cg, pid_t pid, const std::string& what);

  // Registers a path about to be created (file or directory tree): removed
  // if the job dies, or when the Job ends.
  Status AddTemporary(const std::string& path);
  // It is gone (removed, or renamed into place): forget it.
  void DropTemporary(const std::string& path);

 private:
  Job() = default;
  Status Record(const std::string& line);
  JobOptions opts_;
  std::string warning_;
  std::string parent_;    // where cgroups go (when contained)
  std::string owner_;     // "<pid>.<start>"
  std::string journal_;   // empty: no journal (state dir unusable)
  int journal_fd_ = -1;
  SweepReport swept_;
  std::unique_ptr<Janitor> janitor_;
  std::mutex mu_;
  std::set<std::string> cgroups_, temporaries_;
};

}  // namespace hotboot::host
