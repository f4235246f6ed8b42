// Softmax and the exp it is built on.
#include "internal.h"

namespace hotboot::kernels {

float Exp(float x) { return internal::ExpScalar(x); }

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  if (ActiveIsa() == Isa::kAvx2) return internal::SoftmaxAvx2(x, n);
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  float lanes[8] = {};
  for (int64_t i = 0; i < n; ++i) {
    x[i] = internal::ExpScalar(x[i] - mx);
    lanes[i % 8] += x[i];
  }
  const float sum = internal::ReduceLanes(lanes);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / sum;
}

}  // namespace hotboot::kernels
