// Internal to hotboot_kernels: the AVX2 entry points (defined in *_avx2.cpp,
// the only files built with -mavx2 -mfma -mf16c) and the scalar mirrors of
// the vector code's rounding and reduction order.
//
// Everything defined in this header has internal linkage (static): a header
// inline function compiled once with AVX2 flags and once without must never
// be merged by the linker into one copy that a non-AVX2 CPU would then run.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "hotboot/kernels.h"

namespace hotboot::kernels::internal {

// ----- AVX2 entry points

void Bf16ToF32Avx2(const uint16_t* src, float* dst, size_t n);
void F16ToF32Avx2(const uint16_t* src, float* dst, size_t n);
void F32ToBf16Avx2(const float* src, uint16_t* dst, size_t n);
void F32ToF16Avx2(const float* src, uint16_t* dst, size_t n);

// Full panels [p0, p1) of w (k columns) for m rows; see Matmul().
void MatmulPanelsAvx2(const float* x, int64_t ldx, int64_t m, const uint16_t* w, int64_t k,
                      int64_t p0, int64_t p1, float* y, int64_t ldy, const MatmulVariant& v);

void RmsNormRowAvx2(const float* x, const float* w, int64_t n, float eps, float* out);
void RopeRowAvx2(float* x, int n_heads, int head_dim, const float* cos, const float* sin);
void SoftmaxAvx2(float* x, int64_t n);
void ExpAvx2(const float* x, float* y, int64_t n);
void SwiGluRowAvx2(const float* gate, const float* up, int64_t n, float* out);
void AttentionItemAvx2(const float* q, const float* k, const float* v, int64_t n_ctx, int head_dim,
                       float scale, float* scores, float* out);

// ----- scalar mirrors

static inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static inline float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The order _mm256 horizontal sums use: (0+4,1+5,2+6,3+7), then (a+c, b+d),
// then the last pair.
static inline float ReduceLanes(const float a[8]) {
  float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
  float u0 = t0 + t2, u1 = t1 + t3;
  return u0 + u1;
}

// Cephes-style exp, every step spelled out so that the AVX2 version
// (ExpAvx2 / Exp8 in math_avx2.cpp) performs the identical operations.
namespace exp_const {
constexpr float kHi = 88.0f;
constexpr float kLo = -87.33654f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kC1 = 0.693359375f;
constexpr float kC2 = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f;
constexpr float kP1 = 1.3981999507e-3f;
constexpr float kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f;
constexpr float kP4 = 1.6666665459e-1f;
constexpr float kP5 = 5.0000001201e-1f;
}  // namespace exp_const

static inline float ExpScalar(float x) {
  using namespace exp_const;
  x = x < kHi ? x : kHi;  // _mm256_min_ps(x, hi): NaN -> hi
  x = x > kLo ? x : kLo;  // _mm256_max_ps(x, lo)
  float fx = std::floor(std::fma(x, kLog2e, 0.5f));
  float r = std::fma(fx, -kC1, x);
  r = std::fma(fx, -kC2, r);
  float z = r * r;
  float y = std::fma(kP0, r, kP1);
  y = std::fma(y, r, kP2);
  y = std::fma(y, r, kP3);
  y = std::fma(y, r, kP4);
  y = std::fma(y, r, kP5);
  y = std::fma(y, z, r);
  y = y + 1.0f;
  int32_t n = static_cast<int32_t>(fx);
  return y * FromBits(static_cast<uint32_t>(n + 127) << 23);
}

}  // namespace hotboot::kernels::internal
