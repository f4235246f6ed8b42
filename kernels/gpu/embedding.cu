#include "common.cuh"

namespace hotboot::kernels::gpu {
namespace {

__global__ void EmbeddingKernel(const uint16_t* table, const int32_t* ids, int dim, float* out) {
  const uint16_t* row = table + static_cast<int64_t>(ids[blockIdx.x]) * dim;
  float* o = out + static_cast<int64_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = detail::Bf16(row[i]);
}

}  // namespace

Status Embedding(const uint16_t* table, const int32_t* ids, int rows, int dim, float* out, Stream s) {
  if (rows <= 0) return Status();
  EmbeddingKernel<<<rows, 256, 0, detail::S(s)>>>(table, ids, dim, out);
  return detail::Launched("embedding");
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace hotboot::kernels::gpu
