#include "simd_avx2.h"

namespace hotboot::kernels::internal {
namespace {

// out[0 .. 8*B) += sum_t e[t] * v[t][0 .. 8*B), in t order.
template <int B>
void WeightedSum(const float* e, const float* v, int64_t n_ctx, int head_dim, __m256* acc) {
#pragma GCC unroll 8
  for (int b = 0; b < B; ++b) acc[b] = _mm256_setzero_ps();
  for (int64_t t = 0; t < n_ctx; ++t) {
    const __m256 et = _mm256_broadcast_ss(e + t);
    const float* vt = v + t * head_dim;
#pragma GCC unroll 8
    for (int b = 0; b < B; ++b) acc[b] = _mm256_fmadd_ps(et, _mm256_loadu_ps(vt + 8 * b), acc[b]);
  }
}

}  // namespace

void AttentionItemAvx2(const float* q, const float* k, const float* v, int64_t n_ctx, int head_dim,
                       float scale, float* scores, float* out) {
  for (int64_t t = 0; t < n_ctx; ++t) scores[t] = Dot(q, k + t * head_dim, head_dim) * scale;
  float mx = scores[0];
  for (int64_t t = 1; t < n_ctx; ++t) mx = scores[t] > mx ? scores[t] : mx;
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 8 <= n_ctx; t += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), vmx));
    _mm256_storeu_ps(scores + t, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vsum);
  for (int l = 0; t < n_ctx; ++t, ++l) {
    scores[t] = ExpScalar(scores[t] - mx);
    lanes[l] += scores[t];
  }
  const float sum = ReduceLanes(lanes);
  const __m256 vs = _mm256_set1_ps(sum);

  int d = 0;
  __m256 acc[8];
  for (; d + 64 <= head_dim; d += 64) {
    WeightedSum<8>(scores, v + d, n_ctx, head_dim, acc);
    for (int b = 0; b < 8; ++b) _mm256_storeu_ps(out + d + 8 * b, _mm256_div_ps(acc[b], vs));
  }
  for (; d + 8 <= head_dim; d += 8) {
    WeightedSum<1>(scores, v + d, n_ctx, head_dim, acc);
    _mm256_storeu_ps(out + d, _mm256_div_ps(acc[0], vs));
  }
  for (; d < head_dim; ++d) {
    float a = 0;
    for (int64_t u = 0; u < n_ctx; ++u) a = std::fma(scores[u], v[u * head_dim + d], a);
    out[d] = a / sum;
  }
}

}  // namespace hotboot::kernels::internal
