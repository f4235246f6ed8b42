// OrphanReaper: what is re-parented to us and exits is reaped; the children
// we had when it was made (their owners wait for them) are left alone.
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <set>
#include <fstream>
#include <string>
#include <thread>

#include "hotboot/orphans.h"

namespace hotboot::host {
namespace {

// "Z" when pid is a zombie, its state letter otherwise, "" when gone.
std::string State(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return "";
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() ? "" : line.substr(close + 2, 1);
}

bool WaitFor(const std::function<bool()>& cond) {
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10); std::chrono::steady_clock::now() < end;) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

TEST(OrphanReaper, ReapsAdoptedOrphansAndLeavesKnownChildrenToTheirOwners) {
  // As PID 1 would, we adopt orphans: a subreaper gets them instead of init.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  // A known child (the replica, say), exiting later than the reaper is made.
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t known = ::fork();
  if (known == 0) {
    ::close(go[1]);
    char c;
    (void)!::read(go[0], &c, 1);  // EOF once the test closes its end
    ::_exit(7);
  }
  ::close(go[0]);
  OrphanReaper reaper(true);

  // A child that forks a grandchild and exits: the grandchild is adopted.
  int gpipe[2];
  ASSERT_EQ(::pipe(gpipe), 0);
  pid_t middle = ::fork();
  if (middle == 0) {
    ::close(go[1]);
    ::close(gpipe[1]);
    pid_t g = ::fork();
    if (g == 0) {
      char c;
      (void)!::read(gpipe[0], &c, 1);  // EOF once the test closes its end
      ::_exit(0);
    }
    ::_exit(g > 0 ? 0 : 1);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(middle, &st, 0), middle);  // the middle one is ours to wait for in this test
  ::close(gpipe[0]);
  std::set<pid_t> adopted;
  ASSERT_TRUE(WaitFor([&] {
    adopted = Children();
    adopted.erase(known);
    return adopted.size() == 1;
  }));
  const pid_t orphan = *adopted.begin();
  EXPECT_EQ(reaper.Reap(), 0) << "still running: nothing to reap";
  ::close(gpipe[1]);  // the orphan exits
  ASSERT_TRUE(WaitFor([&] { return State(orphan) == "Z"; }));
  ::close(go[1]);  // the known child exits too
  ASSERT_TRUE(WaitFor([&] { return State(known) == "Z"; }));

  EXPECT_EQ(reaper.Reap(), 1);
  EXPECT_EQ(State(orphan), "") << "reaped";
  EXPECT_EQ(State(known), "Z") << "a known child is its owner's to wait for";
  ASSERT_EQ(::waitpid(known, &st, 0), known);
  EXPECT_EQ(WEXITSTATUS(st), 7);
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

TEST(OrphanReaper, InactiveReapsNothing) {
  OrphanReaper reaper(false);
  EXPECT_EQ(reaper.Reap(), 0);
}

}  // namespace
}  // namespace hotboot::host
