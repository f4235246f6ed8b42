// A persistent pool: workers spin briefly after each job (decode steps issue
// hundreds of small parallel calls per token), then sleep on a futex-backed
// std::atomic wait so an idle server costs no CPU.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "hotboot/thread_pool.h"

namespace hotboot {
namespace {

constexpr auto kSpin = std::chrono::microseconds(200);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Waits until `a` differs from `old`: spins for kSpin, then blocks.
template <typename T>
T WaitChange(const std::atomic<T>& a, T old) {
  auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    T v = a.load(std::memory_order_acquire);
    if (v != old) return v;
    CpuRelax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() - start > kSpin) break;
  }
  for (;;) {
    a.wait(old, std::memory_order_acquire);
    T v = a.load(std::memory_order_acquire);
    if (v != old) return v;
  }
}

}  // namespace

struct ThreadPool::Shared {
  std::vector<std::thread> threads;
  const std::function<void(int)>* fn = nullptr;
  std::atomic<uint32_t> generation{0};
  std::atomic<uint32_t> pending{0};
  std::atomic<bool> stop{false};
};

ThreadPool::ThreadPool(int threads) : n_(threads), shared_(new Shared) {
  if (n_ <= 0) n_ = static_cast<int>(std::thread::hardware_concurrency());
  if (n_ <= 0) n_ = 1;
  shared_->threads.reserve(n_ - 1);
  for (int i = 1; i < n_; ++i) shared_->threads.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  shared_->stop.store(true, std::memory_order_release);
  shared_->generation.fetch_add(1, std::memory_order_acq_rel);
  shared_->generation.notify_all();
  for (auto& t : shared_->threads) t.join();
  delete shared_;
}

void ThreadPool::Run(const std::function<void(int)>& fn) {
  if (n_ == 1) {
    fn(0);
    return;
  }
  Shared& s = *shared_;
  s.fn = &fn;
  s.pending.store(static_cast<uint32_t>(n_ - 1), std::memory_order_relaxed);
  s.generation.fetch_add(1, std::memory_order_acq_rel);
  s.generation.notify_all();
  fn(0);
  uint32_t p = s.pending.load(std::memory_order_acquire);
  while (p != 0) p = WaitChange(s.pending, p);
}

void ThreadPool::WorkerLoop(int index) {
  Shared& s = *shared_;
  // Generation 0 is the pool's state at construction: a Run that starts
  // before this thread gets here must still be seen as new work.
  uint32_t seen = 0;
  for (;;) {
    seen = WaitChange(s.generation, seen);
    if (s.stop.load(std::memory_order_acquire)) return;
    (*s.fn)(index);
    if (s.pending.fetch_sub(1, std::memory_order_acq_rel) == 1) s.pending.notify_one();
  }
}

void ParallelFor(ThreadPool* pool, int64_t total, const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  if (pool == nullptr || pool->size() == 1 || total == 1) {
    fn(0, total);
    return;
  }
  const int parts = pool->size();
  pool->Run([&](int t) {
    Range r = Split(total, parts, t);
    if (r.begin < r.end) fn(r.begin, r.end);
  });
}

}  // namespace hotboot
