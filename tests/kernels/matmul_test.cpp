// GEMM with packed bf16 weights against a double-precision reference, on
// several shapes; every variant, thread count and ISA path must agree bit for
// bit (the model's determinism rests on it).
#include <algorithm>
#include <cstring>

#include "kernel_test_util.h"

namespace hotboot::kernels {
namespace {

using testing::ExpectBitEqual;
using testing::ForEachIsa;
using testing::RandomVector;

struct Shape {
  int64_t m, n, k;
};

// Reference over the bf16-rounded weights, in double.
std::vector<double> Reference(const std::vector<float>& x, int64_t m, const std::vector<float>& w_rounded,
                              int64_t n, int64_t k) {
  std::vector<double> y(m * n);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += static_cast<double>(x[r * k + i]) * w_rounded[c * k + i];
      y[r * n + c] = s;
    }
  return y;
}

class MatmulTest : public ::testing::TestWithParam<Shape> {};

TEST_P(MatmulTest, AllVariantsMatchReferenceAndEachOther) {
  const auto [m, n, k] = GetParam();
  auto x = RandomVector(m * k, 1 + m, 1.0f);
  auto w = RandomVector(n * k, 2 + n, 0.05f);
  PackedMatrix pm;
  ASSERT_TRUE(pm.Reset(n, k));
  ThreadPool pool(3);
  pm.PackRows(0, w.data(), SrcType::kF32, n, &pool);
  // The reference sees exactly the bf16 weights the kernel uses.
  std::vector<float> wr(n * k);
  for (int64_t i = 0; i < n * k; ++i) wr[i] = Bf16ToF32(F32ToBf16(w[i]));
  const auto want = Reference(x, m, wr, n, k);
  // Error bound of an fp32 dot product of length k.
  double xnorm = 0;
  for (float v : x) xnorm = std::max<double>(xnorm, std::abs(v));
  const double atol = 1e-6 * k * xnorm * 0.05 * 4;

  std::vector<float> first;
  ForEachIsa([&](Isa) {
    for (const MatmulVariant& v : MatmulVariants()) {
      SCOPED_TRACE(MatmulVariantName(v));
      for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
        // Write into a wider output (ldy > n) to check strides; guard the gaps.
        const int64_t ldy = n + 3;
        std::vector<float> y(m * ldy, 123.0f);
        Matmul(x.data(), k, m, pm, y.data(), ldy, v, p);
        std::vector<float> packed(m * n);
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t c = 0; c < n; ++c) packed[r * n + c] = y[r * ldy + c];
          for (int64_t c = n; c < ldy; ++c) ASSERT_EQ(y[r * ldy + c], 123.0f);
        }
        if (first.empty()) {
          testing::ExpectClose(packed, want, atol, 1e-5);
          first = packed;
        } else {
          ExpectBitEqual(packed, first);
        }
      }
    }
  });
}

TEST_P(MatmulTest, RowsDoNotDependOnM) {
  const auto [m, n, k] = GetParam();
  auto x = RandomVector(m * k, 3, 1.0f);
  auto w = RandomVector(n * k, 4, 0.05f);
  PackedMatrix pm;
  ASSERT_TRUE(pm.Reset(n, k));
  pm.PackRows(0, w.data(), SrcType::kF32, n, nullptr);
  ThreadPool pool(2);
  std::vector<float> all(m * n);
  Matmul(x.data(), k, m, pm, all.data(), n, DefaultMatmulVariant(m, n, k), &pool);
  for (int64_t r = 0; r < m; r += std::max<int64_t>(1, m / 3)) {
    std::vector<float> one(n);
    Matmul(x.data() + r * k, k, 1, pm, one.data(), n, DefaultMatmulVariant(1, n, k), &pool);
    ExpectBitEqual(one, std::vector<float>(all.begin() + r * n, all.begin() + (r + 1) * n));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulTest,
                         ::testing::Values(Shape{1, 16, 8}, Shape{1, 64, 100}, Shape{2, 48, 64}, Shape{3, 37, 33},
                                           Shape{5, 130, 257}, Shape{8, 96, 384}, Shape{13, 80, 520},
                                           Shape{33, 200, 64}, Shape{64, 17, 300}),
                         [](const auto& info) {
                           return "m" + std::to_string(info.param.m) + "n" + std::to_string(info.param.n) + "k" +
                                  std::to_string(info.param.k);
                         });

TEST(PackTest, Fp16AndBf16SourcesPackLikeTheirFp32Values) {
  const int64_t n = 35, k = 19;
  auto w = RandomVector(n * k, 9, 0.1f);
  std::vector<uint16_t> h(n * k), b(n * k);
  F32ToF16(w.data(), h.data(), h.size());
  F32ToBf16(w.data(), b.data(), b.size());
  std::vector<float> hf(n * k);
  F16ToF32(h.data(), hf.data(), hf.size());
  PackedMatrix from_h, from_hf, from_b, from_f;
  ASSERT_TRUE(from_h.Reset(n, k) && from_hf.Reset(n, k) && from_b.Reset(n, k) && from_f.Reset(n, k));
  // Pack in two pieces that split a panel, to exercise row offsets.
  from_h.PackRows(0, h.data(), SrcType::kF16, 20, nullptr);
  from_h.PackRows(20, h.data() + 20 * k, SrcType::kF16, n - 20, nullptr);
  from_hf.PackRows(0, hf.data(), SrcType::kF32, n, nullptr);
  from_b.PackRows(0, b.data(), SrcType::kBf16, n, nullptr);
  from_f.PackRows(0, w.data(), SrcType::kF32, n, nullptr);
  ASSERT_EQ(0, std::memcmp(from_h.data(), from_hf.data(), from_h.size_bytes()));
  ASSERT_EQ(0, std::memcmp(from_b.data(), from_f.data(), from_b.size_bytes()));
  std::vector<float> row(k);
  for (int64_t r = 0; r < n; ++r) {
    from_b.UnpackRow(r, row.data());
    for (int64_t c = 0; c < k; ++c) ASSERT_EQ(row[c], Bf16ToF32(b[r * k + c])) << r << "," << c;
  }
}

}  // namespace
}  // namespace hotboot::kernels
