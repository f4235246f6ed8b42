// bf16 / fp16 <-> fp32. The scalar versions round exactly as the F16C and
// AVX2 instructions do (nearest even), so both paths agree bit for bit.
#include "internal.h"

namespace hotboot::kernels {

using internal::Bits;
using internal::FromBits;

uint16_t F32ToBf16(float f) {
  uint32_t u = Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToF32(uint16_t h) {
  uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return FromBits(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0u));
  if (exp != 0) return FromBits(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return FromBits(sign);
  // Subnormal: mant * 2^-24, exact in fp32.
  float f = static_cast<float>(mant) * FromBits(0x33800000u);  // 2^-24
  return FromBits(sign | Bits(f));
}

uint16_t F32ToF16(float f) {
  // After F. Giesen's float_to_half_fast3_rtne.
  uint32_t u = Bits(f);
  uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t o;
  if (u >= (127u + 16u) << 23) {  // >= 65536 (or inf/NaN)
    o = u > 0x7f800000u ? static_cast<uint16_t>(0x7e00u | ((u >> 13) & 0x3ffu)) : 0x7c00u;
  } else if (u < (113u << 23)) {  // result is subnormal or zero
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    float g = FromBits(u) + FromBits(magic);
    o = static_cast<uint16_t>(Bits(g) - magic);
  } else {
    uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    u += mant_odd;
    o = static_cast<uint16_t>(u >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

void Bf16ToF32(const uint16_t* src, float* dst, size_t n) {
  if (ActiveIsa() == Isa::kAvx2) return internal::Bf16ToF32Avx2(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
}

void F16ToF32(const uint16_t* src, float* dst, size_t n) {
  if (ActiveIsa() == Isa::kAvx2) return internal::F16ToF32Avx2(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(src[i]);
}

void F32ToBf16(const float* src, uint16_t* dst, size_t n) {
  if (ActiveIsa() == Isa::kAvx2) return internal::F32ToBf16Avx2(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = F32ToBf16(src[i]);
}

void F32ToF16(const float* src, uint16_t* dst, size_t n) {
  if (ActiveIsa() == Isa::kAvx2) return internal::F32ToF16Avx2(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = F32ToF16(src[i]);
}

}  // namespace hotboot::kernels
