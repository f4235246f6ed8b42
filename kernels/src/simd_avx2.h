// Vector helpers shared by the *_avx2.cpp files only (static: never merged
// with code built for the scalar path). Each mirrors a scalar function of
// internal.h operation for operation.
#pragma once

#include <immintrin.h>

#include "internal.h"

namespace hotboot::kernels::internal {

// Mirrors ReduceLanes().
static inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Mirrors ExpScalar().
static inline __m256 Exp8(__m256 x) {
  using namespace exp_const;
  x = _mm256_min_ps(x, _mm256_set1_ps(kHi));
  x = _mm256_max_ps(x, _mm256_set1_ps(kLo));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fmadd_ps(fx, _mm256_set1_ps(-kC1), x);
  r = _mm256_fmadd_ps(fx, _mm256_set1_ps(-kC2), r);
  __m256 z = _mm256_mul_ps(r, r);
  __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP5));
  y = _mm256_fmadd_ps(y, z, r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i n = _mm256_cvttps_epi32(fx);
  __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}

// Lane-order dot product of n floats (tail elements go to lanes 0..n%8-1).
static inline float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  if (i == n) return HSum(acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (int l = 0; i < n; ++i, ++l) lanes[l] = std::fma(a[i], b[i], lanes[l]);
  return ReduceLanes(lanes);
}

}  // namespace hotboot::kernels::internal
