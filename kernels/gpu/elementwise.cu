// The small elementwise ops: SwiGLU, residual add, row gather.
#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

__global__ void SwiGluKernel(const float* gu, int rows, int h, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * h) return;
  const int64_t r = i / h, c = i % h;
  const float g = gu[r * 2 * h + c], u = gu[r * 2 * h + h + c];
  out[i] = g / (1.0f + __expf(-g)) * u;
}

__global__ void AddKernel(float* y, const float* x, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void GatherKernel(const float* src, int cols, const int32_t* idx, float* dst) {
  const float* s = src + static_cast<int64_t>(idx[blockIdx.x]) * cols;
  float* d = dst + static_cast<int64_t>(blockIdx.x) * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = s[i];
}

int Blocks(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

}  // namespace

Status SwiGlu(const float* gu, int rows, int h, float* out, Stream s) {
  const int64_t n = static_cast<int64_t>(rows) * h;
  if (n <= 0) return Status();
  SwiGluKernel<<<Blocks(n, 256), 256, 0, detail::S(s)>>>(gu, rows, h, out);
  return detail::Launched("swiglu");
}

Status Add(float* y, const float* x, int64_t n, Stream s) {
  if (n <= 0) return Status();
  AddKernel<<<Blocks(n, 256), 256, 0, detail::S(s)>>>(y, x, n);
  return detail::Launched("add");
}

Status GatherRows(const float* src, int cols, const int32_t* idx, int n, float* dst, Stream s) {
  if (n <= 0) return Status();
  GatherKernel<<<n, 256, 0, detail::S(s)>>>(src, cols, idx, dst);
  return detail::Launched("gather_rows");
}

}  // namespace hotboot::kernels::gpu
