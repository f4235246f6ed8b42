// A small persistent thread pool and a fixed-partition ParallelFor: the
// kernels split every op over it, and anyone else who needs a fork-join over
// an index range without per-call thread creation can use it too.
#pragma once

#include <cstdint>
#include <functional>

namespace hotboot {

// A small persistent pool. Run(fn) calls fn(0..size()-1) once each, index 0
// on the calling thread, and returns when all are done. Work is split by the
// caller with Split(), a fixed partition, never by who is fastest, so sums
// happen in the same order whatever the timing. Not reentrant: one Run at a
// time (the model serializes its calls).
class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // <= 0: one per online CPU
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }
  void Run(const std::function<void(int)>& fn);

 private:
  struct Shared;
  void WorkerLoop(int index);
  int n_;
  Shared* shared_;
};

// [begin, end) of part `i` when `total` items are cut into `parts` near-equal
// contiguous parts.
struct Range {
  int64_t begin, end;
};
inline Range Split(int64_t total, int parts, int i) {
  return {total * i / parts, total * (i + 1) / parts};
}
// Runs fn(begin, end) over a fixed partition of [0, total) on `pool` (or
// inline when pool is null or total is small).
void ParallelFor(ThreadPool* pool, int64_t total, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace hotboot
