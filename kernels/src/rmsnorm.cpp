// RMSNorm: out = x / sqrt(mean(x^2) + eps) * w.
#include "internal.h"

namespace hotboot::kernels {
namespace {

void RmsNormRowScalar(const float* x, const float* w, int64_t n, float eps, float* out) {
  float lanes[8] = {};
  for (int64_t i = 0; i < n; ++i) lanes[i % 8] = std::fma(x[i], x[i], lanes[i % 8]);
  const float mean = internal::ReduceLanes(lanes) / static_cast<float>(n) + eps;
  const float inv = 1.0f / std::sqrt(mean);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * inv) * w[i];
}

}  // namespace

void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t n, float eps,
             float* out, int64_t ldo) {
  const bool avx2 = ActiveIsa() == Isa::kAvx2;
  for (int64_t r = 0; r < rows; ++r) {
    if (avx2) {
      internal::RmsNormRowAvx2(x + r * ldx, w, n, eps, out + r * ldo);
    } else {
      RmsNormRowScalar(x + r * ldx, w, n, eps, out + r * ldo);
    }
  }
}

}  // namespace hotboot::kernels
