#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

__device__ __forceinline__ int64_t KvAt(const KvLayout& kv, int slot, int layer, int head, int pos) {
  return (((static_cast<int64_t>(slot) * kv.layers + layer) * kv.kv_heads + head) * kv.capacity + pos) * kv.head_dim;
}

// One block per row: its k and v heads into the slot's caches.
__global__ void StoreKvKernel(const float* qkv, int ld, int n_heads, const int32_t* slot, const int32_t* pos,
                              int layer, KvLayout kv, float* k_cache, float* v_cache) {
  const float* row = qkv + static_cast<int64_t>(blockIdx.x) * ld;
  const float* k = row + n_heads * kv.head_dim;
  const float* v = k + kv.kv_heads * kv.head_dim;
  const int sl = slot[blockIdx.x], p = pos[blockIdx.x];
  for (int t = threadIdx.x; t < kv.kv_heads * kv.head_dim; t += blockDim.x) {
    const int h = t / kv.head_dim, i = t % kv.head_dim;
    const int64_t at = KvAt(kv, sl, layer, h, p) + i;
    k_cache[at] = k[t];
    v_cache[at] = v[t];
  }
}

}  // namespace

Status StoreKv(const float* qkv, int ld, int rows, int n_heads, const int32_t* slot, const int32_t* pos, int layer,
               const KvLayout& kv, float* k_cache, float* v_cache, Stream s) {
  if (rows <= 0) return Status();
  StoreKvKernel<<<rows, 128, 0, detail::S(s)>>>(qkv, ld, n_heads, slot, pos, layer, kv, k_cache, v_cache);
  return detail::Launched("store_kv");
}

}  // namespace hotboot::kernels::gpu
