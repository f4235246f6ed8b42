// Residual add. Plain elementwise adds: any vectorization gives the same bits.
#include "hotboot/kernels.h"

namespace hotboot::kernels {

void Add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace hotboot::kernels
