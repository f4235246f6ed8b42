// Shared by the CUDA ops: launch checking and warp reductions.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "hotboot/kernels_gpu.h"

namespace hotboot::kernels::gpu::detail {

inline cudaStream_t S(Stream s) { return static_cast<cudaStream_t>(s); }

// The launch's error (bad configuration, no device...) as a Status.
inline Status Launched(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status();
  return Internal(std::string("CUDA op ") + op + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

__device__ __forceinline__ float Bf16(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
// gets the result. `shared` holds 32 floats.
__device__ __forceinline__ float BlockSum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? shared[lane] : 0.f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? shared[lane] : -INFINITY;
  return WarpMax(v);
}

}  // namespace hotboot::kernels::gpu::detail
