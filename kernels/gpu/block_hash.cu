#include "common.cuh"
#include "hotboot/block_hash.h"

namespace hotboot::kernels::gpu {
namespace {

// One thread per block, streaming it in order (XXH64 is sequential within a
// block); neighbours read blocks `block` bytes apart, every 32-byte stripe
// a whole sector.
__global__ void BlockHashKernel(const unsigned char* data, uint64_t bytes, uint64_t block, uint64_t blocks,
                                uint64_t* out) {
  const uint64_t b = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  const uint64_t start = b * block;
  out[b] = xxh64::Hash(data + start, block < bytes - start ? block : bytes - start);
}

}  // namespace

Status BlockHashes(const void* data, uint64_t bytes, uint64_t block, uint64_t* out, Stream s) {
  if (block == 0 || block % 32 != 0 || reinterpret_cast<uintptr_t>(data) % 8 != 0) {
    return InvalidArgument("BlockHashes: the block size must be a positive multiple of 32 and the data 8-byte aligned");
  }
  if (bytes == 0) return Status();
  const uint64_t blocks = (bytes + block - 1) / block;
  constexpr int kThreads = 128;
  if ((blocks + kThreads - 1) / kThreads > 0x7fffffffu) return InvalidArgument("BlockHashes: too many blocks");
  BlockHashKernel<<<static_cast<unsigned>((blocks + kThreads - 1) / kThreads), kThreads, 0, detail::S(s)>>>(
      static_cast<const unsigned char*>(data), bytes, block, blocks, out);
  return detail::Launched("block_hashes");
}

}  // namespace hotboot::kernels::gpu
