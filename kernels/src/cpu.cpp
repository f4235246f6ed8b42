// Run-time choice between the scalar and the AVX2 paths.
#include <atomic>

#include "hotboot/kernels.h"

namespace hotboot::kernels {
namespace {

Isa Detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kScalar;
}

std::atomic<Isa>& Active() {
  static std::atomic<Isa> active{Detect()};
  return active;
}

}  // namespace

Isa DetectedIsa() {
  static const Isa detected = Detect();
  return detected;
}

Isa ActiveIsa() { return Active().load(std::memory_order_relaxed); }

bool ForceIsa(Isa isa) {
  if (isa == Isa::kAvx2 && DetectedIsa() != Isa::kAvx2) return false;
  Active().store(isa, std::memory_order_relaxed);
  return true;
}

const char* IsaName(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "scalar"; }

}  // namespace hotboot::kernels
