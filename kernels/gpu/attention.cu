#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

// One block per (row, head). Scores for positions 0..pos live in shared
// memory (max_context floats); a block-wide max and sum give the softmax;
// each thread then owns output elements and sums over positions in order.
__global__ void AttentionKernel(const float* qkv, int ld, int n_heads, const int32_t* slot, const int32_t* pos,
                                int layer, KvLayout kv, const float* k_cache, const float* v_cache, float scale,
                                float* out, int ldo) {
  extern __shared__ float scores[];
  __shared__ float red[32];
  const int row = blockIdx.x, head = blockIdx.y;
  const int group = n_heads / kv.kv_heads, kvh = head / group, hd = kv.head_dim;
  const float* q = qkv + static_cast<int64_t>(row) * ld + head * hd;
  const int n = pos[row] + 1;
  const int64_t base = ((static_cast<int64_t>(slot[row]) * kv.layers + layer) * kv.kv_heads + kvh) * kv.capacity * hd;
  const float* kc = k_cache + base;
  const float* vc = v_cache + base;
  // Scores: a warp per position, lanes over the head dimension.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int t = warp; t < n; t += warps) {
    float d = 0.f;
    for (int i = lane; i < hd; i += 32) d += q[i] * kc[static_cast<int64_t>(t) * hd + i];
    d = detail::WarpSum(d);
    if (lane == 0) scores[t] = d * scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < n; t += blockDim.x) mx = fmaxf(mx, scores[t]);
  mx = detail::BlockMax(mx, red);
  float sum = 0.f;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const float e = __expf(scores[t] - mx);
    scores[t] = e;
    sum += e;
  }
  sum = detail::BlockSum(sum, red);  // its __syncthreads also publishes scores
  const float inv = 1.0f / sum;
  float* o = out + static_cast<int64_t>(row) * ldo + head * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.f;
    for (int t = 0; t < n; ++t) acc += scores[t] * vc[static_cast<int64_t>(t) * hd + i];
    o[i] = acc * inv;
  }
}

}  // namespace

Status Attention(const float* qkv, int ld, int rows, int n_heads, const int32_t* slot, const int32_t* pos, int layer,
                 const KvLayout& kv, const float* k_cache, const float* v_cache, float scale, int max_context,
                 float* out, int ldo, Stream s) {
  if (rows <= 0) return Status();
  if (kv.kv_heads <= 0 || n_heads % kv.kv_heads) {
    return InvalidArgument("attention: " + std::to_string(n_heads) + " heads over " + std::to_string(kv.kv_heads) +
                           " kv heads");
  }
  const size_t shared = static_cast<size_t>(max_context) * sizeof(float);
  if (shared > 48 * 1024) {
    // Beyond the default shared-memory window: ask for more (up to 227 KiB on H100).
    cudaFuncSetAttribute(AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  }
  const dim3 grid(rows, n_heads);
  AttentionKernel<<<grid, 128, shared, detail::S(s)>>>(qkv, ld, n_heads, slot, pos, layer, kv, k_cache, v_cache, scale,
                                                       out, ldo);
  return detail::Launched("attention");
}

}  // namespace hotboot::kernels::gpu
