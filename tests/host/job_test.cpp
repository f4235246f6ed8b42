// The janitor, the cgroup of a job, the owner rule and the sweep, on the
// real cgroup v2 of this host (skipped where it is not writable).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "hotboot/cgroup.h"
#include "hotboot/job.h"

namespace hotboot::host {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string Scratch(const std::string& name) {
  std::string d = (fs::temp_directory_path() / ("hotboot-host-test." + std::to_string(::getpid()) + "." + name)).string();
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string CgroupParentOrSkip() {
  if (::geteuid() != 0) return "";
  auto own = OwnCgroupDir();
  if (!own.ok() || !CheckCgroupParent(*own).ok()) return "";
  return *own;
}

// Running (a zombie is not: pid 1 here may be slow to reap what it inherits).
bool Alive(pid_t p) { return OwnerAlive(p, ProcessStartTime(p)); }

// Starts in `cg` a shell that forks a child which setsid()s (it leaves our
// process group and session, as a daemonizing server does); returns the
// shell's pid and writes the grandchild's to *grandchild.
// Returns once the child is in the cgroup: a caller that ends the cgroup
// right away must not find it still empty (the child, moved in later,
// would then escape it and outlive the test: CI saw a test wait 300 s on it).
pid_t StartEscapingTree(Cgroup& cg, const std::string& pidfile) {
  int in[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return -1;
  pid_t p = ::fork();
  if (p == 0) {
    ::close(in[0]);
    if (::write(cg.procs_fd(), "0", 1) != 1) ::_exit(126);
    (void)!::write(in[1], "k", 1);
    ::execl("/bin/sh", "sh", "-c", ("setsid sh -c 'echo $$ > " + pidfile + "; exec sleep 300' & exec sleep 300").c_str(),
            nullptr);
    ::_exit(127);
  }
  ::close(in[1]);
  char c = 0;
  const bool moved = p > 0 && ::read(in[0], &c, 1) == 1;
  ::close(in[0]);
  if (!moved && p > 0) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
    return -1;
  }
  return p;
}

pid_t WaitForPidFile(const std::string& path) {
  for (int i = 0; i < 200; ++i) {
    std::ifstream in(path);
    long p = 0;
    if (in >> p && p > 0) return static_cast<pid_t>(p);
    ::usleep(10 * 1000);
  }
  return -1;
}

TEST(Owner, StartTimeTellsALiveOwnerFromARecycledPid) {
  const uint64_t mine = ProcessStartTime(::getpid());
  ASSERT_GT(mine, 0u);
  EXPECT_TRUE(OwnerAlive(::getpid(), mine));
  EXPECT_FALSE(OwnerAlive(::getpid(), mine + 1)) << "same pid, other start time: a recycled pid";
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  const uint64_t cs = ProcessStartTime(child);
  ::waitpid(child, nullptr, 0);
  EXPECT_FALSE(OwnerAlive(child, cs)) << "a reaped process is not alive";
  EXPECT_EQ(ProcessStartTime(child), 0u);
}

TEST(Janitor, KillingTheJobWithSigkillEndsItsCgroupAndRemovesItsTemporaries) {
  const std::string parent = CgroupParentOrSkip();
  if (parent.empty()) GTEST_SKIP() << "needs root and a writable cgroup v2";
  const std::string dir = Scratch("janitor");
  const std::string temp = dir + "/work", info = dir + "/info", gpid = dir + "/grandchild";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t job_pid = ::fork();
  if (job_pid == 0) {
    // The "job": a process that starts a tree in a cgroup, registers a
    // temporary, then is killed with SIGKILL (no destructor runs).
    JobOptions o;
    o.kind = "test";
    o.state_dir = dir + "/state";
    auto job = Job::Start(o);
    if (!job.ok() || !(*job)->contained()) ::_exit(2);
    auto cg = (*job)->NewCgroup();
    if (!cg.ok() || !*cg) ::_exit(3);
    if (!(*job)->AddTemporary(temp).ok()) ::_exit(4);
    fs::create_directories(temp + "/a/b");
    std::ofstream(temp + "/a/b/f") << "x";
    pid_t shell = StartEscapingTree(**cg, gpid);
    std::ofstream(info) << (*cg)->path() << "\n" << shell << "\n" << (*job)->janitor_pid() << "\n" << (*job)->journal() << "\n";
    (void)!::write(ready[1], "k", 1);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1) << "the job process failed to set up";
  ::close(ready[0]);
  std::ifstream in(info);
  std::string cg_path, journal;
  pid_t shell = 0, janitor = 0;
  in >> cg_path >> shell >> janitor >> journal;
  const pid_t grandchild = WaitForPidFile(gpid);
  ASSERT_GT(grandchild, 0);
  ASSERT_TRUE(fs::exists(cg_path));
  ASSERT_TRUE(Alive(grandchild));
  EXPECT_NE(::getsid(grandchild), ::getsid(0)) << "the grandchild left our session";
  EXPECT_TRUE(fs::exists(journal));

  const auto t0 = Clock::now();
  ::kill(job_pid, SIGKILL);
  ::waitpid(job_pid, nullptr, 0);
  // The janitor ends the cgroup as a whole: the setsid()ed grandchild too.
  // The deadline is generous because ctest runs this beside other suites on
  // 2 cores; the 1 s bar of issue 12 is checked by Kill.* in the integration
  // suite, and the time taken here is recorded as cleanup_ms.
  while (Clock::now() - t0 < std::chrono::seconds(10) &&
         (fs::exists(cg_path) || Alive(grandchild) || fs::exists(temp) || fs::exists(journal))) {
    ::usleep(5 * 1000);
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  EXPECT_FALSE(fs::exists(cg_path)) << "cgroup left after " << ms << " ms";
  EXPECT_FALSE(Alive(grandchild)) << "the setsid() grandchild outlived the job";
  EXPECT_FALSE(Alive(shell));
  EXPECT_FALSE(fs::exists(temp)) << "temporary left";
  EXPECT_FALSE(fs::exists(journal)) << "journal left";
  ::waitpid(shell, nullptr, WNOHANG);
  RecordProperty("cleanup_ms", std::to_string(ms));
  fs::remove_all(dir);
}

TEST(Janitor, AJobThatEndsNormallyLeavesNothingAndTheJanitorExits) {
  const std::string parent = CgroupParentOrSkip();
  if (parent.empty()) GTEST_SKIP() << "needs root and a writable cgroup v2";
  const std::string dir = Scratch("normal");
  std::string cg_path, journal;
  pid_t janitor;
  {
    JobOptions o;
    o.kind = "test";
    o.state_dir = dir + "/state";
    auto job = Job::Start(o);
    ASSERT_TRUE(job.ok()) << job.status().ToString();
    auto cg = (*job)->NewCgroup();
    ASSERT_TRUE(cg.ok() && *cg);
    cg_path = (*cg)->path();
    journal = (*job)->journal();
    janitor = (*job)->janitor_pid();
    ASSERT_TRUE((*job)->AddTemporary(dir + "/t").ok());
    fs::create_directories(dir + "/t");
  }
  EXPECT_FALSE(fs::exists(cg_path));
  EXPECT_FALSE(fs::exists(dir + "/t"));
  EXPECT_FALSE(fs::exists(journal));
  EXPECT_NE(::kill(janitor, 0), 0) << "the janitor was reaped";
  fs::remove_all(dir);
}

TEST(Sweep, ADeadJobsJournalIsReplayedAndALiveOnesIsLeftAlone) {
  const std::string shared = CgroupParentOrSkip();
  if (shared.empty()) GTEST_SKIP() << "needs root and a writable cgroup v2";
  // A parent of this test's own: every Job::Start sweeps dead owners'
  // cgroups under its parent, so one that another test process starts
  // meanwhile (ctest -j) would end this dead owner's cgroup first and this
  // sweep would find nothing to count (CI saw exactly that).
  const std::string parent = shared + "/sweep-test." + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(parent.c_str(), 0755), 0) << parent << ": " << std::strerror(errno);
  struct RemoveParent {
    std::string path;
    ~RemoveParent() { ::rmdir(path.c_str()); }
  } remove_parent{parent};
  const std::string dir = Scratch("sweep");
  const std::string state = dir + "/state";
  fs::create_directories(state + "/jobs");
  fs::permissions(state, fs::perms::owner_all, fs::perm_options::replace);
  fs::permissions(state + "/jobs", fs::perms::owner_all, fs::perm_options::replace);
  // A dead owner: a child that ran and was reaped.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  const uint64_t dead_start = ProcessStartTime(dead);
  ::waitpid(dead, nullptr, 0);
  const std::string owner = std::to_string(dead) + "." + std::to_string(dead_start);
  // What a job killed together with its janitor leaves: a populated cgroup,
  // a work dir in any place under any name, and its journal.
  auto cg = Cgroup::Create(parent + "/" + kCgroupPrefix + "build." + owner + ".0");
  ASSERT_TRUE(cg.ok()) << cg.status().ToString();
  pid_t sleeper = StartEscapingTree(**cg, dir + "/gp");
  const pid_t grandchild = WaitForPidFile(dir + "/gp");
  fs::create_directories(dir + "/anyname.work/images");
  std::ofstream(dir + "/out.hbsnap.tmp.1") << "partial";
  std::ofstream(state + "/jobs/" + owner) << "cgroup " << (*cg)->path() << "\npath " << dir
                                           << "/anyname.work\npath " << dir << "/out.hbsnap.tmp.1\npath " << dir
                                           << "/released\nrelease " << dir << "/released\n";
  fs::create_directories(dir + "/released");
  // A live owner's journal (ours) names a path that must stay.
  const std::string live = std::to_string(::getpid()) + "." + std::to_string(ProcessStartTime(::getpid()));
  fs::create_directories(dir + "/live.work");
  std::ofstream(state + "/jobs/" + live) << "path " << dir << "/live.work\n";

  SweepReport rep = SweepStale(state, parent);
  EXPECT_EQ(rep.journals, 1);
  EXPECT_GE(rep.cgroups, 1);
  EXPECT_EQ(rep.paths, 2);
  EXPECT_FALSE(fs::exists((*cg)->path()));
  EXPECT_FALSE(Alive(grandchild));
  ::waitpid(sleeper, nullptr, 0);
  EXPECT_FALSE(fs::exists(dir + "/anyname.work"));
  EXPECT_FALSE(fs::exists(dir + "/out.hbsnap.tmp.1"));
  EXPECT_TRUE(fs::exists(dir + "/released")) << "a released path is not the sweep's";
  EXPECT_FALSE(fs::exists(state + "/jobs/" + owner));
  EXPECT_TRUE(fs::exists(dir + "/live.work")) << "a live job's temporary was swept";
  EXPECT_TRUE(fs::exists(state + "/jobs/" + live));
  fs::remove_all(dir);
}

TEST(Sweep, AHandedOverCgroupOutlivesItsJobAndItsRecordGoesWithIt) {
  const std::string parent = CgroupParentOrSkip();
  if (parent.empty()) GTEST_SKIP() << "needs root and a writable cgroup v2";
  const std::string dir = Scratch("handover");
  const std::string state = dir + "/state";
  std::string handed;
  pid_t replica = -1;
  {
    JobOptions o;
    o.kind = "test";
    o.state_dir = state;
    auto job = Job::Start(o);
    ASSERT_TRUE(job.ok());
    auto cg = (*job)->NewCgroup();
    ASSERT_TRUE(cg.ok() && *cg);
    replica = StartEscapingTree(**cg, dir + "/gp");
    auto record = (*job)->HandOver(**cg, replica, "test replica");
    ASSERT_TRUE(record.ok());
    EXPECT_EQ(*record, state + "/replicas/" + fs::path((*cg)->path()).filename().string());
    handed = (*cg)->path();
  }
  // The job ended; its handed-over cgroup and replica live on.
  ASSERT_TRUE(fs::exists(handed));
  EXPECT_TRUE(Alive(replica));
  // Our own pid is alive, so make the owner look dead to the sweep: the
  // record is what keeps a populated cgroup of a dead owner alive. Here the
  // owner is alive, so nothing is touched at all.
  SweepStale(state, parent);
  EXPECT_TRUE(fs::exists(handed));
  // Its processes end; once empty, a sweep by a job whose owner differs
  // removes it... only when its owner is gone, which in this process it is
  // not: remove it as an operator would.
  ASSERT_EQ(internal::KillAndRemoveCgroup(handed.c_str(), 2000), 0);
  ::waitpid(replica, nullptr, 0);
  EXPECT_FALSE(Alive(replica));
  SweepStale(state, parent);
  EXPECT_TRUE(fs::is_empty(state + "/replicas")) << "the record of a removed cgroup stays";
  fs::remove_all(dir);
}

TEST(KillAndRemove, ACgroupWithCgroupsMadeInsideItIsRemovedWhole) {
  const std::string parent = CgroupParentOrSkip();
  if (parent.empty()) GTEST_SKIP() << "needs root and a writable cgroup v2";
  // As when a restore runs inside a job's cgroup (a bench's) and gives its
  // replica a cgroup there: the inner one, with a process, two levels down.
  const std::string outer = parent + "/hotboot-nested-test." + std::to_string(::getpid());
  auto cg = Cgroup::Create(outer);
  ASSERT_TRUE(cg.ok()) << cg.status().ToString();
  ASSERT_TRUE(Cgroup::Create(outer + "/hotboot-restore.1").ok());
  auto inner = Cgroup::Create(outer + "/hotboot-restore.1/replica");
  ASSERT_TRUE(inner.ok()) << inner.status().ToString();
  const std::string dir = Scratch("nested");
  pid_t sh = StartEscapingTree(**inner, dir + "/grandchild");
  ASSERT_GT(sh, 0);
  const pid_t grandchild = WaitForPidFile(dir + "/grandchild");
  ASSERT_GT(grandchild, 0);
  EXPECT_EQ(internal::KillAndRemoveCgroup(outer.c_str(), 5000), 0);
  EXPECT_FALSE(fs::exists(outer)) << "removed with the cgroups inside it";
  ::waitpid(sh, nullptr, 0);
  EXPECT_FALSE(Alive(grandchild));
  fs::remove_all(dir);
}

TEST(Fallback, ACgroupParentThatIsNotACgroupGivesReducedContainmentNotAFailure) {
  const std::string dir = Scratch("fallback");
  for (const std::string& parent : {dir, std::string("/proc"), dir + "/missing"}) {
    JobOptions o;
    o.kind = "test";
    o.cgroup_parent = parent;
    o.state_dir = dir + "/state";
    auto job = Job::Start(o);
    ASSERT_TRUE(job.ok()) << job.status().ToString();
    EXPECT_FALSE((*job)->contained()) << parent;
    EXPECT_NE((*job)->warning().find("containment reduced"), std::string::npos) << (*job)->warning();
    auto cg = (*job)->NewCgroup();
    ASSERT_TRUE(cg.ok());
    EXPECT_EQ(*cg, nullptr);
    EXPECT_FALSE(ContainmentProblem(parent).empty());
  }
  fs::remove_all(dir);
}

TEST(RemoveTree, RemovesATreeWithoutFollowingSymlinks) {
  const std::string dir = Scratch("tree");
  const std::string outside = dir + "/outside";
  fs::create_directories(outside);
  std::ofstream(outside + "/keep") << "k";
  fs::create_directories(dir + "/t/a/b/c");
  for (int i = 0; i < 300; ++i) std::ofstream(dir + "/t/a/f" + std::to_string(i)) << i;
  fs::create_directory_symlink(outside, dir + "/t/a/link");
  EXPECT_EQ(internal::RemoveTree((dir + "/t").c_str()), 0);
  EXPECT_FALSE(fs::exists(dir + "/t"));
  EXPECT_TRUE(fs::exists(outside + "/keep"));
  EXPECT_EQ(internal::RemoveTree((dir + "/t").c_str()), 0) << "a missing path is not an error";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hotboot::host
