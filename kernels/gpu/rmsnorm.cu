#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

// One block per row: the sum of squares is a block reduction.
__global__ void RmsNormKernel(const float* x, const float* w, int n, float eps, float* out) {
  __shared__ float red[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* o = out + static_cast<int64_t>(blockIdx.x) * n;
  float ss = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  ss = detail::BlockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

}  // namespace

Status RmsNorm(const float* x, const float* w, int rows, int n, float eps, float* out, Stream s) {
  if (rows <= 0) return Status();
  RmsNormKernel<<<rows, 256, 0, detail::S(s)>>>(x, w, n, eps, out);
  return detail::Launched("rmsnorm");
}

}  // namespace hotboot::kernels::gpu
