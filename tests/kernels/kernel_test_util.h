// Shared helpers for the kernel comparison tests: seeded data, both ISA
// paths, and tolerance checks against straightforward double references.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "hotboot/kernels.h"

namespace hotboot::kernels::testing {

inline std::vector<float> RandomVector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Runs `fn` once per ISA path this CPU has, with that path forced.
template <typename Fn>
void ForEachIsa(Fn fn) {
  const Isa saved = ActiveIsa();
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    if (!ForceIsa(isa)) continue;
    SCOPED_TRACE(IsaName(isa));
    fn(isa);
  }
  ForceIsa(saved);
}

inline bool HasAvx2() { return DetectedIsa() == Isa::kAvx2; }

// |got - want| <= atol + rtol * |want|, reporting the first failure.
inline void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double atol,
                        double rtol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    if (err > atol + rtol * std::abs(want[i])) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << want[i] << " (err " << err << ")";
      return;
    }
  }
}

inline void ExpectBitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t ua, ub;
    std::memcpy(&ua, &a[i], 4);
    std::memcpy(&ub, &b[i], 4);
    if (ua != ub) {
      ADD_FAILURE() << "element " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
  }
}

}  // namespace hotboot::kernels::testing
