// XXH64 (seed 0) of a run of bytes, written once for the host and the
// device. The GPU model's digest hashes every 64 KiB block of its weights
// where they are, in device memory (kernels_gpu.h BlockHashes), and reads
// back 8 bytes per block instead of the weights; the tests hold this code
// to the xxHash library's own XXH64, on the CPU and on the GPU.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define HB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HB_HOST_DEVICE inline
#endif

namespace hotboot::kernels::xxh64 {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL, kP3 = 0x165667B19E3779F9ULL,
                   kP4 = 0x85EBCA77C2B2AE63ULL, kP5 = 0x27D4EB2F165667C5ULL;

// A little-endian load. On the device `p` must be aligned to sizeof(T)
// (BlockHashes guarantees it); the host takes any address.
template <typename T>
HB_HOST_DEVICE T Load(const unsigned char* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const T*>(p);
#else
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
#endif
}

HB_HOST_DEVICE uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

HB_HOST_DEVICE uint64_t Round(uint64_t acc, uint64_t lane) { return Rotl(acc + lane * kP2, 31) * kP1; }

HB_HOST_DEVICE uint64_t Merge(uint64_t acc, uint64_t v) { return (acc ^ Round(0, v)) * kP1 + kP4; }

HB_HOST_DEVICE uint64_t Hash(const unsigned char* p, uint64_t len) {
  const unsigned char* const end = p + len;
  uint64_t h;
  if (len >= 32) {
    uint64_t v1 = kP1 + kP2, v2 = kP2, v3 = 0, v4 = 0 - kP1;
    const unsigned char* const limit = end - 32;
    do {
      v1 = Round(v1, Load<uint64_t>(p));
      v2 = Round(v2, Load<uint64_t>(p + 8));
      v3 = Round(v3, Load<uint64_t>(p + 16));
      v4 = Round(v4, Load<uint64_t>(p + 24));
      p += 32;
    } while (p <= limit);
    h = Rotl(v1, 1) + Rotl(v2, 7) + Rotl(v3, 12) + Rotl(v4, 18);
    h = Merge(Merge(Merge(Merge(h, v1), v2), v3), v4);
  } else {
    h = kP5;
  }
  h += len;
  for (; end - p >= 8; p += 8) h = Rotl(h ^ Round(0, Load<uint64_t>(p)), 27) * kP1 + kP4;
  if (end - p >= 4) {
    h = Rotl(h ^ static_cast<uint64_t>(Load<uint32_t>(p)) * kP1, 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) h = Rotl(h ^ static_cast<uint64_t>(*p) * kP5, 11) * kP1;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

}  // namespace hotboot::kernels::xxh64
