// The AVX2/FMA GEMM micro-kernels (built with -mavx2 -mfma -mf16c).
//
// One 32-byte load holds 16 bf16 weights of one k column for a panel's 16
// rows (see PackedMatrix); a 32-bit left shift by 16 yields the fp32 weights
// of rows 0-7 and a mask of the high halves those of rows 8-15. Each of MR
// rows of x is broadcast and FMA'd into 2*NP accumulators.
#include <immintrin.h>

#include "internal.h"

namespace hotboot::kernels::internal {
namespace {

constexpr int kPanel = 16;

template <int MR, int NP>
void Micro(const float* x, int64_t ldx, const uint16_t* w, int64_t pstride, int64_t kc, float* y,
           int64_t ldy, bool accumulate) {
  __m256 c[MR][NP][2];
  if (accumulate) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        c[r][p][0] = _mm256_loadu_ps(y + r * ldy + p * kPanel);
        c[r][p][1] = _mm256_loadu_ps(y + r * ldy + p * kPanel + 8);
      }
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) c[r][p][0] = c[r][p][1] = _mm256_setzero_ps();
  }
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t kk = 0; kk < kc; ++kk) {
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * pstride + kk * kPanel));
      const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(wv, 16));
      const __m256 hi = _mm256_castsi256_ps(_mm256_and_si256(wv, hi_mask));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 xb = _mm256_broadcast_ss(x + r * ldx + kk);
        c[r][p][0] = _mm256_fmadd_ps(lo, xb, c[r][p][0]);
        c[r][p][1] = _mm256_fmadd_ps(hi, xb, c[r][p][1]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      _mm256_storeu_ps(y + r * ldy + p * kPanel, c[r][p][0]);
      _mm256_storeu_ps(y + r * ldy + p * kPanel + 8, c[r][p][1]);
    }
}

using MicroFn = void (*)(const float*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t, bool);

// kMicro[np index][rows - 1]; only rows * np <= 6 exist.
constexpr MicroFn kMicro[3][6] = {
    {Micro<1, 1>, Micro<2, 1>, Micro<3, 1>, Micro<4, 1>, Micro<5, 1>, Micro<6, 1>},
    {Micro<1, 2>, Micro<2, 2>, Micro<3, 2>, nullptr, nullptr, nullptr},
    {Micro<1, 4>, nullptr, nullptr, nullptr, nullptr, nullptr},
};

}  // namespace

void MatmulPanelsAvx2(const float* x, int64_t ldx, int64_t m, const uint16_t* w, int64_t k,
                      int64_t p0, int64_t p1, float* y, int64_t ldy, const MatmulVariant& v) {
  const int64_t kc = (v.kc <= 0 || v.kc > k) ? k : v.kc;
  const int64_t pstride = k * kPanel;
  for (int64_t p = p0; p < p1;) {
    int np = v.np;
    while (p + np > p1) np /= 2;
    const int npi = np == 4 ? 2 : np == 2 ? 1 : 0;
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
      const int64_t kcur = k - k0 < kc ? k - k0 : kc;
      for (int64_t r0 = 0; r0 < m; r0 += v.mr) {
        const int64_t rows = m - r0 < v.mr ? m - r0 : v.mr;
        kMicro[npi][rows - 1](x + r0 * ldx + k0, ldx, w + p * pstride + k0 * kPanel, pstride, kcur,
                              y + r0 * ldy + p * kPanel, ldy, k0 > 0);
      }
    }
    p += np;
  }
}

}  // namespace hotboot::kernels::internal
