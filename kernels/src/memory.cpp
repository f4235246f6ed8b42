// Aligned buffers. Large ones are anonymous mappings (zero pages for free,
// 2 MiB aligned so transparent huge pages can back them).
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "hotboot/kernels.h"

namespace hotboot::kernels {
namespace {

constexpr size_t kHuge = size_t{2} << 20;
constexpr size_t kMapThreshold = size_t{1} << 20;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

void* Alloc(size_t bytes) {
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
  if (p == nullptr) return;
  if (bytes < kMapThreshold) {
    std::free(p);
  } else {
    munmap(p, RoundUp(bytes, kHuge));
  }
}

}  // namespace

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
