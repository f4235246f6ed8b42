// bf16 / fp16 conversions: exhaustive over 16-bit inputs, scalar vs hardware
// rounding on many floats.
#include <cstring>

#include "kernel_test_util.h"

namespace hotboot::kernels {
namespace {

using testing::ForEachIsa;

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(ConvertTest, F16ToF32IsExactForEveryValue) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<std::vector<float>> results;
  ForEachIsa([&](Isa) {
    std::vector<float> out(all.size());
    F16ToF32(all.data(), out.data(), all.size());
    results.push_back(out);
  });
  for (uint32_t i = 0; i < 65536; ++i) {
    const float f = results[0][i];
    const int exp = (i >> 10) & 31, mant = i & 1023;
    const double sign = (i & 0x8000) ? -1.0 : 1.0;
    if (exp == 31) {
      EXPECT_TRUE(mant ? std::isnan(f) : std::isinf(f)) << i;
      continue;
    }
    const double want = exp == 0 ? sign * mant * std::ldexp(1.0, -24) : sign * (1024 + mant) * std::ldexp(1.0, exp - 25);
    ASSERT_EQ(static_cast<double>(f), want) << i;
    // Round trip back to fp16 is exact.
    ASSERT_EQ(F32ToF16(f), static_cast<uint16_t>(i)) << i;
  }
  for (size_t r = 1; r < results.size(); ++r) {
    for (uint32_t i = 0; i < 65536; ++i) {
      if (std::isnan(results[0][i])) {
        EXPECT_TRUE(std::isnan(results[r][i]));
      } else {
        ASSERT_EQ(Bits(results[0][i]), Bits(results[r][i])) << i;
      }
    }
  }
}

TEST(ConvertTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly half way between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808000)), 0x3f80);
  // 1.0078125 + half ulp: ties to even (1.015625).
  EXPECT_EQ(F32ToBf16(FromBits(0x3f818000)), 0x3f82);
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToBf16(INFINITY), 0x7f80);
  EXPECT_EQ(F32ToBf16(FromBits(0x7f7fffff)), 0x7f80);  // max float rounds to inf
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(NAN))));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(FromBits(0x7f800001)))));  // sNaN stays NaN
}

TEST(ConvertTest, VectorPathsMatchScalarOnManyFloats) {
  std::mt19937 rng(7);
  std::vector<float> in;
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = rng();
    // Mostly around the fp16 range, plus arbitrary bit patterns.
    if (i % 3 == 0) u = (u & 0x807fffffu) | ((100u + (u >> 27)) << 23);
    in.push_back(FromBits(u));
  }
  in.insert(in.end(), {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 5.96e-8f, 2.98e-8f, 6.1e-5f, INFINITY, -INFINITY});
  std::vector<std::vector<uint16_t>> bf, hf;
  ForEachIsa([&](Isa) {
    std::vector<uint16_t> b(in.size()), h(in.size());
    F32ToBf16(in.data(), b.data(), in.size());
    F32ToF16(in.data(), h.data(), in.size());
    bf.push_back(b);
    hf.push_back(h);
  });
  for (size_t i = 0; i < in.size(); ++i) {
    // bf16: a reference by integer arithmetic on the bits.
    if (!std::isnan(in[i])) {
      uint32_t u = Bits(in[i]);
      uint32_t want = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
      ASSERT_EQ(bf[0][i], want) << in[i];
      // fp16 reference: nearest representable, ties to even, via double.
      const float back = F16ToF32(hf[0][i]);
      const double err = std::abs(static_cast<double>(back) - in[i]);
      if (std::isfinite(back)) {
        const uint16_t other = static_cast<uint16_t>(hf[0][i] ^ 1);
        const float alt = F16ToF32(other);
        if (std::isfinite(alt) && (hf[0][i] & 0x7c00) != 0x7c00) {
          ASSERT_LE(err, std::abs(static_cast<double>(alt) - in[i])) << in[i];
        }
      } else {
        ASSERT_GE(std::abs(in[i]), 65520.0f) << in[i];
      }
    }
    for (size_t r = 1; r < bf.size(); ++r) {
      if (std::isnan(in[i])) continue;
      ASSERT_EQ(bf[0][i], bf[r][i]) << in[i];
      ASSERT_EQ(hf[0][i], hf[r][i]) << in[i];
    }
  }
}

TEST(ConvertTest, OddLengthsUseTheTail) {
  for (size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 33}) {
    auto v = testing::RandomVector(n, n);
    ForEachIsa([&](Isa) {
      std::vector<uint16_t> b(n);
      std::vector<float> back(n);
      F32ToBf16(v.data(), b.data(), n);
      Bf16ToF32(b.data(), back.data(), n);
      for (size_t i = 0; i < n; ++i) EXPECT_NEAR(back[i], v[i], std::abs(v[i]) / 128);
    });
  }
}

}  // namespace
}  // namespace hotboot::kernels
