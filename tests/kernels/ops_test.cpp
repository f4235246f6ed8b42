// RMSNorm, RoPE, softmax/exp, SwiGLU, add, embedding and argmax against
// scalar double references; the scalar and AVX2 paths must agree bit for bit.
#include <algorithm>

#include "kernel_test_util.h"

namespace hotboot::kernels {
namespace {

using testing::ExpectBitEqual;
using testing::ExpectClose;
using testing::ForEachIsa;
using testing::RandomVector;

// Runs `op` (which fills `out`) under each ISA path, checks them against
// `want` and against each other.
template <typename Op>
void CheckOp(const std::vector<double>& want, double atol, double rtol, Op op) {
  std::vector<float> first;
  ForEachIsa([&](Isa) {
    std::vector<float> out = op();
    ExpectClose(out, want, atol, rtol);
    if (first.empty()) {
      first = out;
    } else {
      ExpectBitEqual(out, first);
    }
  });
}

TEST(ExpTest, AccurateOverItsRange) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.00731) {
    const float f = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(f));
    worst = std::max(worst, std::abs(Exp(f) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(Exp(0.0f), 1.0f);
  EXPECT_GT(Exp(-1000.0f), 0.0f);
  EXPECT_LT(Exp(-1000.0f), 1.2e-38f);
  EXPECT_TRUE(std::isfinite(Exp(1000.0f)));
}

TEST(RmsNormTest, MatchesReference) {
  for (int64_t n : {1, 7, 8, 64, 100, 384}) {
    const int64_t rows = 3;
    auto x = RandomVector(rows * n, n, 2.0f);
    auto w = RandomVector(n, n + 1, 1.0f);
    const float eps = 1e-5f;
    std::vector<double> want(rows * n);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += double{x[r * n + i]} * x[r * n + i];
      const double inv = 1.0 / std::sqrt(ss / n + eps);
      for (int64_t i = 0; i < n; ++i) want[r * n + i] = x[r * n + i] * inv * w[i];
    }
    SCOPED_TRACE(n);
    CheckOp(want, 1e-6, 1e-5, [&] {
      std::vector<float> out(rows * n);
      RmsNorm(x.data(), n, w.data(), rows, n, eps, out.data(), n);
      return out;
    });
    // In place gives the same bits.
    std::vector<float> a(rows * n), b = x;
    RmsNorm(x.data(), n, w.data(), rows, n, eps, a.data(), n);
    RmsNorm(b.data(), n, w.data(), rows, n, eps, b.data(), n);
    ExpectBitEqual(a, b);
  }
}

TEST(RopeTest, MatchesReferenceAndPreservesNorm) {
  for (int hd : {2, 8, 16, 64, 128, 24}) {
    const int heads = 3, rows = 5, max_pos = 300;
    const float theta = 10000.0f;
    RopeTable t;
    ASSERT_TRUE(BuildRopeTable(max_pos, hd, theta, &t));
    const int64_t ld = heads * hd + 5;
    auto x = RandomVector(rows * ld, hd, 1.0f);
    std::vector<int32_t> pos = {0, 1, 17, 255, 299};
    std::vector<double> want(rows * ld);
    for (int r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < ld; ++i) want[r * ld + i] = x[r * ld + i];
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < hd / 2; ++i) {
          const double a = pos[r] * std::pow(double{theta}, -2.0 * i / hd);
          const double x0 = x[r * ld + h * hd + i], x1 = x[r * ld + h * hd + i + hd / 2];
          want[r * ld + h * hd + i] = x0 * std::cos(a) - x1 * std::sin(a);
          want[r * ld + h * hd + i + hd / 2] = x0 * std::sin(a) + x1 * std::cos(a);
        }
    }
    SCOPED_TRACE(hd);
    CheckOp(want, 2e-6, 1e-5, [&] {
      std::vector<float> y = x;
      Rope(y.data(), ld, rows, heads, hd, pos.data(), t);
      return y;
    });
  }
}

TEST(SoftmaxTest, MatchesReference) {
  for (int64_t n : {1, 5, 8, 9, 100, 1000}) {
    auto x = RandomVector(n, n, 3.0f);
    double mx = *std::max_element(x.begin(), x.end()), s = 0;
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) s += want[i] = std::exp(x[i] - mx);
    for (auto& v : want) v /= s;
    SCOPED_TRACE(n);
    CheckOp(want, 1e-9, 2e-6, [&] {
      std::vector<float> y = x;
      Softmax(y.data(), n);
      return y;
    });
  }
}

TEST(SwiGluTest, MatchesReference) {
  for (int64_t n : {1, 8, 13, 1024}) {
    const int64_t rows = 2, ld = 2 * n;
    auto gu = RandomVector(rows * ld, n, 4.0f);
    gu[0] = 100.0f;  // exp underflow side
    if (n > 1) gu[1] = -100.0f;
    std::vector<double> want(rows * n);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < n; ++i) {
        const double g = gu[r * ld + i], u = gu[r * ld + n + i];
        want[r * n + i] = g / (1 + std::exp(-g)) * u;
      }
    SCOPED_TRACE(n);
    CheckOp(want, 1e-6, 1e-5, [&] {
      std::vector<float> out(rows * n);
      SwiGlu(gu.data(), gu.data() + n, ld, rows, n, out.data(), n);
      return out;
    });
  }
}

TEST(AddTest, Adds) {
  std::vector<float> y = {1, 2, 3}, x = {0.5f, -2, 10};
  Add(y.data(), x.data(), 3);
  EXPECT_EQ(y, (std::vector<float>{1.5f, 0, 13}));
}

TEST(EmbeddingTest, LooksUpPackedRows) {
  const int64_t vocab = 37, dim = 24;
  auto table = RandomVector(vocab * dim, 5, 1.0f);
  PackedMatrix pm;
  ASSERT_TRUE(pm.Reset(vocab, dim));
  pm.PackRows(0, table.data(), SrcType::kF32, vocab, nullptr);
  std::vector<int32_t> ids = {0, 36, 15, 16, 17, 0};
  std::vector<float> out(ids.size() * dim);
  EmbeddingLookup(pm, ids.data(), static_cast<int64_t>(ids.size()), out.data(), dim);
  for (size_t r = 0; r < ids.size(); ++r)
    for (int64_t c = 0; c < dim; ++c)
      ASSERT_EQ(out[r * dim + c], Bf16ToF32(F32ToBf16(table[ids[r] * dim + c]))) << r << "," << c;
}

TEST(ArgmaxTest, LowestIndexWinsTiesAndNanLoses) {
  EXPECT_EQ(Argmax(nullptr, 0), 0);
  std::vector<float> v = {1, 3, 3, -1};
  EXPECT_EQ(Argmax(v.data(), 4), 1);
  v = {NAN, 2, NAN, 5, 5};
  EXPECT_EQ(Argmax(v.data(), 5), 3);
  v = {NAN, NAN};
  EXPECT_EQ(Argmax(v.data(), 2), 0);
  v = {-INFINITY, -5};
  EXPECT_EQ(Argmax(v.data(), 2), 1);
  auto r = RandomVector(32000, 3);
  EXPECT_EQ(Argmax(r.data(), 32000), std::max_element(r.begin(), r.end()) - r.begin());
}

}  // namespace
}  // namespace hotboot::kernels
