// The base thread pool: every index runs once per Run, ParallelFor covers
// its range exactly once, Split is a fixed partition with no gaps.
#include "hotboot/thread_pool.h"

#include <gtest/gtest.h>

#include <mutex>
#include <vector>

namespace hotboot {
namespace {

TEST(ThreadPoolTest, RunsEveryIndexOnceManyTimes) {
  ThreadPool pool(4);
  ASSERT_EQ(pool.size(), 4);
  std::vector<int> hits(4);
  for (int it = 0; it < 2000; ++it) {
    pool.Run([&](int t) { hits[t]++; });
  }
  for (int h : hits) EXPECT_EQ(h, 2000);
  int64_t sum = 0;
  std::mutex mu;
  ParallelFor(&pool, 1000, [&](int64_t b, int64_t e) {
    int64_t s = 0;
    for (int64_t i = b; i < e; ++i) s += i;
    std::lock_guard<std::mutex> l(mu);
    sum += s;
  });
  EXPECT_EQ(sum, 999 * 1000 / 2);
}

TEST(ThreadPoolTest, SplitCoversTheRange) {
  for (int64_t total : {0, 1, 7, 100}) {
    for (int parts : {1, 2, 3, 8}) {
      int64_t next = 0;
      for (int i = 0; i < parts; ++i) {
        Range r = Split(total, parts, i);
        EXPECT_EQ(r.begin, next);
        next = r.end;
      }
      EXPECT_EQ(next, total);
    }
  }
}

TEST(ThreadPoolTest, ParallelForRunsInlineWithoutAPool) {
  std::vector<std::pair<int64_t, int64_t>> calls;
  ParallelFor(nullptr, 10, [&](int64_t b, int64_t e) { calls.emplace_back(b, e); });
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], (std::pair<int64_t, int64_t>{0, 10}));
  ParallelFor(nullptr, 0, [&](int64_t, int64_t) { ADD_FAILURE() << "nothing to do, yet called"; });
}

}  // namespace
}  // namespace hotboot
