// The XXH64 that the GPU digest runs on the device (block_hash.h), held to
// the xxHash library on every length around its stripe and tail edges and
// at unaligned addresses.
#include "hotboot/block_hash.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <random>
#include <vector>

namespace hotboot::kernels {
namespace {

TEST(BlockHash, MatchesXxHash64OnEveryLengthUpTo300AndAtEveryAlignment) {
  std::mt19937_64 rng(11);
  std::vector<unsigned char> data(4096 + 16);
  for (auto& b : data) b = static_cast<unsigned char>(rng());
  for (size_t off = 0; off < 8; ++off) {
    for (uint64_t len = 0; len <= 300; ++len) {
      ASSERT_EQ(xxh64::Hash(data.data() + off, len), XXH64(data.data() + off, len, 0)) << "len " << len << " at +" << off;
    }
  }
  EXPECT_EQ(xxh64::Hash(data.data(), 4096), XXH64(data.data(), 4096, 0));
  // A 64 KiB block, as the digest uses, and one byte changed anywhere shows.
  std::vector<unsigned char> block(64 << 10);
  for (auto& b : block) b = static_cast<unsigned char>(rng());
  const uint64_t h = xxh64::Hash(block.data(), block.size());
  EXPECT_EQ(h, XXH64(block.data(), block.size(), 0));
  block[40000] ^= 1;
  EXPECT_NE(xxh64::Hash(block.data(), block.size()), h);
}

}  // namespace
}  // namespace hotboot::kernels
