// SwiGLU: silu(gate) * up, silu(g) = g / (1 + exp(-g)).
#include "internal.h"

namespace hotboot::kernels {

void SwiGlu(const float* gate, const float* up, int64_t ld_in, int64_t rows, int64_t n, float* out,
            int64_t ldo) {
  const bool avx2 = ActiveIsa() == Isa::kAvx2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + r * ld_in;
    const float* u = up + r * ld_in;
    float* o = out + r * ldo;
    if (avx2) {
      internal::SwiGluRowAvx2(g, u, n, o);
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      const float s = g[i] / (1.0f + internal::ExpScalar(-g[i]));
      o[i] = s * u[i];
    }
  }
}

}  // namespace hotboot::kernels
