#include "simd_avx2.h"

namespace hotboot::kernels::internal {

void RmsNormRowAvx2(const float* x, const float* w, int64_t n, float eps, float* out) {
  const float mean = Dot(x, x, n) / static_cast<float>(n) + eps;
  const float inv = 1.0f / std::sqrt(mean);
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) out[i] = (x[i] * inv) * w[i];
}

}  // namespace hotboot::kernels::internal
