#include "simd_avx2.h"

namespace hotboot::kernels::internal {

void RopeRowAvx2(float* x, int n_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    int i = 0;
    for (; i + 8 <= half; i += 8) {
      const __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
      const __m256 c = _mm256_loadu_ps(cos + i), s = _mm256_loadu_ps(sin + i);
      _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
      _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)));
    }
    for (; i < half; ++i) {
      const float x0 = v[i], x1 = v[i + half];
      const float a = x0 * cos[i], b = x1 * sin[i], c = x0 * sin[i], d = x1 * cos[i];
      v[i] = a - b;
      v[i + half] = c + d;
    }
  }
}

}  // namespace hotboot::kernels::internal
