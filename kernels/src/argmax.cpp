// Greedy sampling's argmax: the lowest index among equal maxima; NaN loses.
#include "hotboot/kernels.h"

namespace hotboot::kernels {

int64_t Argmax(const float* x, int64_t n) {
  int64_t best = -1;
  float bv = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] != x[i]) continue;
    if (best < 0 || x[i] > bv) {
      best = i;
      bv = x[i];
    }
  }
  return best < 0 ? 0 : best;
}

}  // namespace hotboot::kernels
