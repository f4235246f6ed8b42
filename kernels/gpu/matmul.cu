#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

// Decode: a few rows of x against all of W. Memory-bound on W, so each warp
// owns one output column and streams its weight row once with 16-byte loads
// (8 bf16), applying it to all M rows of x; lanes then reduce.
template <int M>
__global__ void GemvKernel(const float* __restrict__ x, int k, const uint16_t* __restrict__ w, int n,
                           float* __restrict__ y) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= n) return;
  const uint16_t* wr = w + static_cast<int64_t>(warp) * k;
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  if ((k & 7) == 0) {
    const uint4* w4 = reinterpret_cast<const uint4*>(wr);
    for (int i = lane; i < k / 8; i += 32) {
      const uint4 p = __ldg(w4 + i);
      const uint32_t words[4] = {p.x, p.y, p.z, p.w};
      float wf[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        wf[2 * j] = __uint_as_float(words[j] << 16);
        wf[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
      }
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const float4* x4 = reinterpret_cast<const float4*>(x + static_cast<int64_t>(r) * k + 8 * i);
        const float4 a = x4[0], b = x4[1];
        acc[r] += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] + b.x * wf[4] + b.y * wf[5] + b.z * wf[6] +
                  b.w * wf[7];
      }
    }
  } else {
    for (int i = lane; i < k; i += 32) {
      const float wv = detail::Bf16(wr[i]);
#pragma unroll
      for (int r = 0; r < M; ++r) acc[r] += x[static_cast<int64_t>(r) * k + i] * wv;
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float v = detail::WarpSum(acc[r]);
    if (lane == 0) y[static_cast<int64_t>(r) * n + warp] = v;
  }
}

// Prefill: a 64 x 64 output tile per block, k in steps of 16 through shared
// memory, 4 x 4 outputs per thread.
constexpr int kTile = 64, kStep = 16;

__global__ void GemmKernel(const float* __restrict__ x, int m, int k, const uint16_t* __restrict__ w, int n,
                           float* __restrict__ y) {
  __shared__ float xs[kStep][kTile + 1];
  __shared__ float ws[kStep][kTile + 1];
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads
  float acc[4][4] = {};
  for (int k0 = 0; k0 < k; k0 += kStep) {
    for (int i = threadIdx.x; i < kTile * kStep; i += blockDim.x) {
      const int row = i / kStep, kk = i % kStep;
      const int gm = m0 + row, gn = n0 + row, gk = k0 + kk;
      xs[kk][row] = (gm < m && gk < k) ? x[static_cast<int64_t>(gm) * k + gk] : 0.f;
      ws[kk][row] = (gn < n && gk < k) ? detail::Bf16(w[static_cast<int64_t>(gn) * k + gk]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i], b[i] = ws[kk][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int gm = m0 + ty * 4 + i;
    if (gm >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gn = n0 + tx * 4 + j;
      if (gn < n) y[static_cast<int64_t>(gm) * n + gn] = acc[i][j];
    }
  }
}

template <int M>
void LaunchGemv(const float* x, int k, const uint16_t* w, int n, float* y, cudaStream_t s) {
  const int warps_per_block = 8;
  GemvKernel<M><<<(n + warps_per_block - 1) / warps_per_block, 32 * warps_per_block, 0, s>>>(x, k, w, n, y);
}

}  // namespace

Status Matmul(const float* x, int m, int k, const uint16_t* w, int n, float* y, Stream s) {
  if (m <= 0 || n <= 0) return Status();
  const cudaStream_t st = detail::S(s);
  // The vector path needs 16-byte aligned rows of x and W.
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (reinterpret_cast<uintptr_t>(w) % 16 == 0) &&
                       (k % 8 == 0);
  if (m <= 8 && aligned) {
    switch (m) {
      case 1: LaunchGemv<1>(x, k, w, n, y, st); break;
      case 2: LaunchGemv<2>(x, k, w, n, y, st); break;
      case 3: LaunchGemv<3>(x, k, w, n, y, st); break;
      case 4: LaunchGemv<4>(x, k, w, n, y, st); break;
      case 5: LaunchGemv<5>(x, k, w, n, y, st); break;
      case 6: LaunchGemv<6>(x, k, w, n, y, st); break;
      case 7: LaunchGemv<7>(x, k, w, n, y, st); break;
      default: LaunchGemv<8>(x, k, w, n, y, st); break;
    }
  } else {
    const dim3 grid((n + kTile - 1) / kTile, (m + kTile - 1) / kTile);
    GemmKernel<<<grid, 256, 0, st>>>(x, m, k, w, n, y);
  }
  return detail::Launched("matmul");
}

}  // namespace hotboot::kernels::gpu
