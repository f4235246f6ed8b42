// Aligned buffers. Large ones are anonymous mappings (zero pages for free,
// 2 MiB aligned so transparent huge pages can back them).
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "hotboot/kernels.h"

namespace hotboot::kernels {
namespace {

constexpr size_t kHuge = size_t{2} << 20;
constexpr size_t kMapThreshold = size_t{1} << 20;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

Arena* g_arena = nullptr;  // where new large buffers go, if set
// Every arena handed out memory until its owner forgets it: frees of its
// buffers are no-ops even after allocation moved on.
std::mutex g_arenas_mu;
std::vector<std::pair<const uint8_t*, size_t>> g_arenas;

bool InArena(const void* p) {
  auto* b = static_cast<const uint8_t*>(p);
  std::lock_guard lock(g_arenas_mu);
  for (const auto& [base, size] : g_arenas) {
    if (b >= base && b < base + size) return true;
  }
  return false;
}

void* Alloc(size_t bytes) {
  if (g_arena != nullptr && bytes >= kMapThreshold) {
    const size_t at = RoundUp(g_arena->used, 4096);
    if (at + bytes > g_arena->size) return nullptr;
    g_arena->used = at + bytes;
    std::memset(g_arena->base + at, 0, bytes);
    return g_arena->base + at;
  }
  if (bytes < kMapThreshold) {
    void* p = std::aligned_alloc(64, RoundUp(bytes, 64));
    if (p != nullptr) std::memset(p, 0, bytes);
    return p;
  }
  const size_t size = RoundUp(bytes, kHuge);
  void* raw = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  auto base = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = RoundUp(base, kHuge);
  if (aligned > base) munmap(raw, aligned - base);
  uintptr_t end = base + size + kHuge;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

void Free(void* p, size_t bytes) {
  if (p == nullptr || InArena(p)) return;  // the arena's owner unmaps it
  if (bytes < kMapThreshold) {
    std::free(p);
  } else {
    munmap(p, RoundUp(bytes, kHuge));
  }
}

}  // namespace

void SetArena(Arena* arena) {
  g_arena = arena;
  if (arena == nullptr) return;
  std::lock_guard lock(g_arenas_mu);
  g_arenas.emplace_back(arena->base, arena->size);
}

void ForgetArena(const Arena* arena) {
  if (g_arena == arena) g_arena = nullptr;
  std::lock_guard lock(g_arenas_mu);
  std::erase_if(g_arenas, [&](const auto& e) { return e.first == arena->base; });
}
size_t ArenaBytes(size_t bytes) { return RoundUp(bytes, 4096); }

template <typename T>
void* Buffer<T>::AllocBytes(size_t bytes) {
  return Alloc(bytes);
}
template <typename T>
void Buffer<T>::FreeBytes(void* p, size_t bytes) {
  Free(p, bytes);
}

template class Buffer<float>;
template class Buffer<uint16_t>;

}  // namespace hotboot::kernels
