#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

// One block per row; a thread per (head, i) pair.
__global__ void RopeKernel(float* x, int ld, int n_heads, int head_dim, const int32_t* pos, const float* cos,
                           const float* sin) {
  const int half = head_dim / 2;
  float* row = x + static_cast<int64_t>(blockIdx.x) * ld;
  const float* c = cos + static_cast<int64_t>(pos[blockIdx.x]) * half;
  const float* s = sin + static_cast<int64_t>(pos[blockIdx.x]) * half;
  for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
    const int h = t / half, i = t % half;
    float* v = row + h * head_dim;
    const float x0 = v[i], x1 = v[i + half];
    // Products rounded, then the sums: the CPU twin's order (no FMA).
    const float a = __fmul_rn(x0, c[i]), b = __fmul_rn(x1, s[i]), cc = __fmul_rn(x0, s[i]), d = __fmul_rn(x1, c[i]);
    v[i] = a - b;
    v[i + half] = cc + d;
  }
}

}  // namespace

Status Rope(float* x, int ld, int rows, int n_heads, int head_dim, const int32_t* pos, const float* cos,
            const float* sin, Stream s) {
  if (rows <= 0) return Status();
  if (head_dim % 2) return InvalidArgument("rope: odd head_dim " + std::to_string(head_dim));
  RopeKernel<<<rows, 128, 0, detail::S(s)>>>(x, ld, n_heads, head_dim, pos, cos, sin);
  return detail::Launched("rope");
}

}  // namespace hotboot::kernels::gpu
