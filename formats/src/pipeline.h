// An ordered parallel pipeline: items are produced (compressed, decoded) on a
// few worker threads, at most `window` ahead, and consumed in order on the
// calling thread, so output is sequential and memory bounded.
#pragma once

#include <algorithm>
#include <cstdint>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::snapfile {

inline int ResolveThreads(int threads) {
  return std::max(1, threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
}

// Runs fn(i, worker) for i in [0, n) on `threads` workers, in any order;
// returns the error of the lowest failing index, so that the report does not
// depend on scheduling, and starts no index above a failed one.
inline Status ParallelFor(size_t n, int threads, const std::function<Status(size_t, int)>& fn) {
  threads = std::min<int>(ResolveThreads(threads), static_cast<int>(std::max<size_t>(n, 1)));
  std::mutex mu;
  size_t next = 0, first_bad = SIZE_MAX;
  Status first_status;
  auto work = [&](int w) {
    for (;;) {
      size_t i;
      {
        std::lock_guard lock(mu);
        if (next >= n || next > first_bad) return;
        i = next++;
      }
      Status s = fn(i, w);
      if (!s.ok()) {
        std::lock_guard lock(mu);
        if (i < first_bad) {
          first_bad = i;
          first_status = s;
        }
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
  return first_status;
}

// produce(i, worker, &item) runs on worker `worker` (0..threads-1);
// consume(i, item) runs on the caller's thread for i = 0, 1, ... in order.
// Returns the first error in index order; nothing is consumed after it.
template <typename T>
Status RunOrdered(size_t n, int threads, const std::function<Status(size_t, int, T*)>& produce,
                  const std::function<Status(size_t, T&)>& consume) {
  threads = ResolveThreads(threads);
  if (threads == 1 || n <= 1) {  // no pool for one worker or one item
    for (size_t i = 0; i < n; ++i) {
      T item{};
      HB_RETURN_IF_ERROR(produce(i, 0, &item));
      HB_RETURN_IF_ERROR(consume(i, item));
    }
    return Status::Ok();
  }
  const size_t window = static_cast<size_t>(threads) * 2;
  struct Slot {
    Status status;
    T item;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<size_t, Slot> ready;
  size_t next = 0, consumed = 0;
  bool stop = false;
  auto worker = [&](int id) {
    for (;;) {
      size_t i;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || next >= n || next < consumed + window; });
        if (stop || next >= n) return;
        i = next++;
      }
      Slot slot;
      slot.status = produce(i, id, &slot.item);
      std::lock_guard lock(mu);
      ready.emplace(i, std::move(slot));
      cv.notify_all();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  Status st;
  while (consumed < n && st.ok()) {
    Slot slot;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return ready.count(consumed) > 0; });
      auto it = ready.find(consumed);
      slot = std::move(it->second);
      ready.erase(it);
    }
    st = slot.status.ok() ? consume(consumed, slot.item) : slot.status;
    std::lock_guard lock(mu);
    ++consumed;
    cv.notify_all();
  }
  {
    std::lock_guard lock(mu);
    stop = true;
    cv.notify_all();
  }
  for (auto& t : pool) t.join();
  return st;
}

}  // namespace hotboot::snapfile
