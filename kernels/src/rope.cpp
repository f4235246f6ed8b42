// Rotary position embedding ("rotate_half" pairing, as in HF Llama).
#include <cmath>

#include "internal.h"

namespace hotboot::kernels {
namespace {

void RopeRowScalar(float* x, int n_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const float x0 = v[i], x1 = v[i + half];
      const float a = x0 * cos[i], b = x1 * sin[i], c = x0 * sin[i], d = x1 * cos[i];
      v[i] = a - b;
      v[i + half] = c + d;
    }
  }
}

}  // namespace

bool BuildRopeTable(int max_pos, int head_dim, float theta, RopeTable* t) {
  if (max_pos <= 0 || head_dim <= 0 || head_dim % 2 != 0) return false;
  const int half = head_dim / 2;
  if (!t->cos.Reset(static_cast<size_t>(max_pos) * half) || !t->sin.Reset(static_cast<size_t>(max_pos) * half)) {
    return false;
  }
  t->max_pos = max_pos;
  t->half = half;
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
    for (int p = 0; p < max_pos; ++p) {
      const double a = p * freq;
      t->cos[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(a));
      t->sin[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(a));
    }
  }
  return true;
}

void Rope(float* x, int64_t ldx, int64_t rows, int n_heads, int head_dim, const int32_t* pos,
          const RopeTable& t) {
  const bool avx2 = ActiveIsa() == Isa::kAvx2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = t.cos.data() + static_cast<int64_t>(pos[r]) * t.half;
    const float* s = t.sin.data() + static_cast<int64_t>(pos[r]) * t.half;
    if (avx2) {
      internal::RopeRowAvx2(x + r * ldx, n_heads, head_dim, c, s);
    } else {
      RopeRowScalar(x + r * ldx, n_heads, head_dim, c, s);
    }
  }
}

}  // namespace hotboot::kernels
