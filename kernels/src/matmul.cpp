// GEMM with bf16 packed weights: variants, dispatch, and the scalar path.
//
// Every output y[r][n] is acc = fma(w[n][kk], x[r][kk], acc) for kk = 0..K-1
// from acc = 0, in both paths and in every variant (a k-blocked variant keeps
// the fp32 partial sum in y between blocks, which is exact). So the variant,
// the thread count and M change the speed and never a bit of the result.
#include <algorithm>
#include <array>
#include <cmath>

#include "internal.h"

namespace hotboot::kernels {
namespace {

constexpr std::array<MatmulVariant, 12> kVariants = {{
    {1, 4, 0},
    {1, 2, 0},
    {1, 1, 0},
    {2, 2, 0},
    {3, 2, 0},
    {2, 1, 0},
    {4, 1, 0},
    {6, 1, 0},
    {3, 2, 256},
    {4, 1, 256},
    {6, 1, 256},
    {6, 1, 512},
}};

constexpr int kPanel = PackedMatrix::kPanel;

// Panels [p0, p1) for m rows; handles a partial last panel (n % 16 != 0).
void MatmulPanelsScalar(const float* x, int64_t ldx, int64_t m, const PackedMatrix& w, int64_t p0,
                        int64_t p1, float* y, int64_t ldy) {
  const int64_t k = w.cols();
  for (int64_t p = p0; p < p1; ++p) {
    const uint16_t* panel = w.data() + p * kPanel * k;
    const int n_valid = static_cast<int>(std::min<int64_t>(kPanel, w.rows() - p * kPanel));
    for (int64_t r = 0; r < m; ++r) {
      float acc[kPanel] = {};
      const float* xr = x + r * ldx;
      for (int64_t kk = 0; kk < k; ++kk) {
        const uint16_t* g = panel + kk * kPanel;
        const float xv = xr[kk];
        for (int j = 0; j < kPanel; ++j) acc[j] = std::fma(Bf16ToF32(g[PackedMatrix::Slot(j)]), xv, acc[j]);
      }
      float* yr = y + r * ldy + p * kPanel;
      for (int j = 0; j < n_valid; ++j) yr[j] = acc[j];
    }
  }
}

}  // namespace

std::span<const MatmulVariant> MatmulVariants() { return kVariants; }

std::string MatmulVariantName(const MatmulVariant& v) {
  return "m" + std::to_string(v.mr) + "n" + std::to_string(v.np) + "k" + std::to_string(v.kc);
}

MatmulVariant DefaultMatmulVariant(int64_t m, int64_t n, int64_t k) {
  if (m == 1) return {1, 4, 0};
  if (m <= 3) return {m == 2 ? 2 : 3, 2, 0};
  if (m <= 8) return {4, 1, 0};
  return {6, 1, 256};
}

bool SameWorkAt(const MatmulVariant& a, const MatmulVariant& b, int64_t m) {
  const int64_t ma = std::min<int64_t>(a.mr, m), mb = std::min<int64_t>(b.mr, m);
  return ma == mb && a.np == b.np && a.kc == b.kc;
}

void Matmul(const float* x, int64_t ldx, int64_t m, const PackedMatrix& w, float* y, int64_t ldy,
            const MatmulVariant& v, ThreadPool* pool) {
  if (m <= 0 || w.rows() == 0) return;
  const int64_t k = w.cols();
  const int64_t panels = w.panels();
  const int64_t full = w.rows() / kPanel;  // panels without padding
  const bool avx2 = ActiveIsa() == Isa::kAvx2;
  MatmulVariant var = v;
  if (var.mr < 1 || var.np < 1 || var.mr * var.np > 6 || (var.np != 1 && var.np != 2 && var.np != 4)) {
    var = DefaultMatmulVariant(m, w.rows(), k);
  }
  // Small problems are not worth waking the pool.
  ThreadPool* p = (m * w.rows() * k < (int64_t{1} << 15)) ? nullptr : pool;
  ParallelFor(p, panels, [&](int64_t b, int64_t e) {
    if (avx2) {
      const int64_t fe = std::min(e, full);
      if (b < fe) internal::MatmulPanelsAvx2(x, ldx, m, w.data(), k, b, fe, y, ldy, var);
      if (e > full) MatmulPanelsScalar(x, ldx, m, w, std::max(b, full), e, y, ldy);
    } else {
      MatmulPanelsScalar(x, ldx, m, w, b, e, y, ldy);
    }
  });
}

}  // namespace hotboot::kernels
