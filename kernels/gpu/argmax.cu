#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

// (value, index) pairs: larger value wins, then the lower index; NaN loses.
__device__ __forceinline__ void Better(float& v, int& i, float ov, int oi) {
  const bool take = !isnan(ov) && (isnan(v) || ov > v || (ov == v && oi < i));
  if (take) v = ov, i = oi;
}

__global__ void ArgmaxKernel(const float* x, int n, int32_t* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * n;
  float v = NAN;
  int idx = 0x7fffffff;
  for (int t = threadIdx.x; t < n; t += blockDim.x) Better(v, idx, row[t], t);
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    Better(v, idx, ov, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = v, si[warp] = idx;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? sv[lane] : NAN;
    idx = lane < (blockDim.x >> 5) ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
      Better(v, idx, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = isnan(v) ? 0 : idx;  // all NaN: 0, as on the CPU
  }
}

}  // namespace

Status Argmax(const float* x, int rows, int n, int32_t* out, Stream s) {
  if (rows <= 0) return Status();
  ArgmaxKernel<<<rows, 256, 0, detail::S(s)>>>(x, n, out);
  return detail::Launched("argmax");
}

}  // namespace hotboot::kernels::gpu
