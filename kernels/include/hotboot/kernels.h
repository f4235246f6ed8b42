// Transformer ops on the CPU: bf16-weight GEMM, RMSNorm, RoPE, softmax,
// grouped-query attention over a KV cache, SwiGLU, embedding lookup, argmax,
// and the bf16/fp16 <-> fp32 conversions they need.
//
// Every op has a portable scalar path and an AVX2/FMA/F16C path chosen at run
// time (__builtin_cpu_supports). Both paths are written to perform the same
// floating-point operations in the same order, so they give bit-identical
// results; each op's comment states the order it sums in. Results never
// depend on the thread count, the matmul variant or the number of rows in a
// call: row r of an output depends only on row r of the inputs. That is what
// makes greedy decoding reproducible across calls, batch shapes and processes.
//
// Nothing here allocates per call on the hot path (callers pass scratch), and
// nothing prints, throws or exits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "hotboot/thread_pool.h"

namespace hotboot::kernels {

// ---------------------------------------------------------------- CPU paths

enum class Isa { kScalar, kAvx2 };

// The best path this CPU supports (AVX2 needs avx2 + fma + f16c).
Isa DetectedIsa();
// The path the ops use now: DetectedIsa() unless ForceIsa() lowered it.
Isa ActiveIsa();
// Selects a path for every op in the process (tests compare the two).
// Returns false, changing nothing, when the CPU does not support `isa`.
bool ForceIsa(Isa isa);
const char* IsaName(Isa isa);

// ---------------------------------------------------------------- conversion

// bf16 is the top half of an fp32; fp16 is IEEE binary16.
inline float Bf16ToF32(uint16_t h) {
  uint32_t u = uint32_t{h} << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays a (quiet) NaN.
uint16_t F32ToBf16(float f);
float F16ToF32(uint16_t h);
// Round to nearest even; overflow gives +-inf; NaN stays a NaN.
uint16_t F32ToF16(float f);

void Bf16ToF32(const uint16_t* src, float* dst, size_t n);
void F16ToF32(const uint16_t* src, float* dst, size_t n);
void F32ToBf16(const float* src, uint16_t* dst, size_t n);
void F32ToF16(const float* src, uint16_t* dst, size_t n);

// ---------------------------------------------------------------- threads

// The pool, Split and ParallelFor live in the base library (hotboot/thread_pool.h);
// the ops take them by these names.
using hotboot::ParallelFor;
using hotboot::Range;
using hotboot::Split;
using hotboot::ThreadPool;

// ---------------------------------------------------------------- memory

// A 64-byte aligned buffer (2 MiB aligned with transparent huge pages advised
// when large: weights are streamed every token, TLB misses matter).
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) { Reset(n); }
  ~Buffer() { FreeBytes(p_, n_ * sizeof(T)); }
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      FreeBytes(p_, n_ * sizeof(T));
      p_ = o.p_, n_ = o.n_, o.p_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  // Zero-filled; returns false (leaving the buffer empty) if allocation fails.
  bool Reset(size_t n) {
    FreeBytes(p_, n_ * sizeof(T));
    p_ = nullptr, n_ = 0;
    if (n == 0) return true;
    p_ = static_cast<T*>(AllocBytes(n * sizeof(T)));
    if (p_ == nullptr) return false;
    n_ = n;
    return true;
  }
  void Clear() { Reset(0); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t size_bytes() const { return n_ * sizeof(T); }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }

 private:
  static void* AllocBytes(size_t bytes);
  static void FreeBytes(void* p, size_t bytes);
  T* p_ = nullptr;
  size_t n_ = 0;
};
// Defined in memory.cpp for these types.
extern template class Buffer<float>;
extern template class Buffer<uint16_t>;

// Large buffers (>= 1 MiB) allocated while an arena is set are carved from
// it instead of fresh anonymous mappings: the model places its packed weights
// in a file-backed shared mapping this way, so a snapshot stores them once
// and restored replicas map them instead of copying them. Freeing arena
// memory is a no-op; its owner unmaps the whole arena. Not thread-safe: set
// it around single-threaded allocation only.
struct Arena {
  uint8_t* base = nullptr;
  size_t size = 0;
  size_t used = 0;
};
void SetArena(Arena* arena);  // nullptr: back to anonymous mappings
// Before unmapping an arena: its buffers must all be gone.
void ForgetArena(const Arena* arena);
// The arena space a large buffer of `bytes` takes (page-aligned).
size_t ArenaBytes(size_t bytes);

// ---------------------------------------------------------------- packed weights

enum class SrcType { kF32, kBf16, kF16 };

// A weight matrix W of n rows (outputs) by k columns (inputs) -- PyTorch's
// Linear layout -- stored bf16 in panels of 16 rows. Panel p holds rows
// 16p..16p+15 as k groups of 16 values (32 bytes, one AVX2 load); within the
// group for column c, row 16p+j sits in slot 2j when j < 8 and in slot
// 2(j-8)+1 otherwise, so a 32-bit shift and a mask turn one load into the
// fp32 values of rows 0-7 and 8-15. A last partial panel is zero-padded.
class PackedMatrix {
 public:
  static constexpr int kPanel = 16;

  PackedMatrix() = default;
  // Zero-filled. Returns false when the memory cannot be had.
  bool Reset(int64_t n, int64_t k);

  int64_t rows() const { return n_; }
  int64_t cols() const { return k_; }
  int64_t panels() const { return (n_ + kPanel - 1) / kPanel; }
  const uint16_t* data() const { return buf_.data(); }
  uint16_t* data() { return buf_.data(); }
  size_t size_bytes() const { return buf_.size_bytes(); }

  // Converts and packs rows [row0, row0 + nrows) from a row-major source of
  // nrows x cols() elements (fp32, bf16 or fp16; fp16 goes through fp32 and
  // rounds to nearest even). The source may be unaligned.
  void PackRows(int64_t row0, const void* src, SrcType type, int64_t nrows, ThreadPool* pool);
  // Row `row` as fp32.
  void UnpackRow(int64_t row, float* out) const;
  // Slot of row 16p+j inside a 16-value group.
  static constexpr int Slot(int j) { return j < 8 ? 2 * j : 2 * (j - 8) + 1; }

 private:
  int64_t n_ = 0, k_ = 0;
  Buffer<uint16_t> buf_;
};

// ---------------------------------------------------------------- matmul

// How a GEMM walks its work: mr rows of x by np panels (16 * np outputs) per
// micro-kernel call, k in blocks of kc (0: all of k at once). Variants differ
// in speed only: every output is the fp32 FMA chain over k = 0..K-1 in order,
// whatever the variant, thread count or M.
struct MatmulVariant {
  int mr = 4;
  int np = 1;
  int kc = 0;
  bool operator==(const MatmulVariant&) const = default;
};
// The variants Tune() chooses among.
std::span<const MatmulVariant> MatmulVariants();
// "m4n1k0"
std::string MatmulVariantName(const MatmulVariant& v);
// A reasonable choice without measuring.
MatmulVariant DefaultMatmulVariant(int64_t m, int64_t n, int64_t k);
// Two variants that do the very same work for m rows (e.g. mr 4 and 6 at m=1).
bool SameWorkAt(const MatmulVariant& a, const MatmulVariant& b, int64_t m);

// y[m x n] = x[m x k] * W^T, x and y row-major with row strides ldx and ldy
// (in elements). Output columns are split over the pool in whole panels.
void Matmul(const float* x, int64_t ldx, int64_t m, const PackedMatrix& w, float* y, int64_t ldy,
            const MatmulVariant& v, ThreadPool* pool);

// ---------------------------------------------------------------- small ops

// Sums below run in 8 interleaved lanes (element i into lane i % 8), then
// lanes (0+4, 1+5, 2+6, 3+7), then (a+c, b+d), then the last pair: the order
// an AVX2 register reduction has, reproduced by the scalar path.

// out = x / sqrt(mean(x^2) + eps) * w, for `rows` rows of n (strides ldx, ldo).
// In place is allowed (out == x).
void RmsNorm(const float* x, int64_t ldx, const float* w, int64_t rows, int64_t n, float eps,
             float* out, int64_t ldo);

// Rotary position embedding tables: cos/sin of pos * theta^(-2i/head_dim) for
// i < head_dim / 2, computed in double.
struct RopeTable {
  int max_pos = 0;
  int half = 0;
  Buffer<float> cos, sin;  // [max_pos x half]
};
bool BuildRopeTable(int max_pos, int head_dim, float theta, RopeTable* t);
// Rotates the "rotate_half" pairs (i, i + head_dim/2) of n_heads heads in each
// of `rows` rows of x (row stride ldx); row r is at position pos[r].
// y0 = x0*c - x1*s, y1 = x0*s + x1*c (products rounded, then the sum).
void Rope(float* x, int64_t ldx, int64_t rows, int n_heads, int head_dim, const int32_t* pos,
          const RopeTable& t);

// In-place softmax of n values: max, e = exp(x - max), lane-order sum, e / sum.
void Softmax(float* x, int64_t n);
// The exp used by softmax and silu (a Cephes-style polynomial, rel. error
// < 2e-7 over [-87, 88]); scalar and vector paths are bit-identical.
float Exp(float x);

// out[r][i] = silu(gate[r][i]) * up[r][i], silu(g) = g / (1 + exp(-g)).
// gate and up may live in one fused row (gate_up + hidden).
void SwiGlu(const float* gate, const float* up, int64_t ld_in, int64_t rows, int64_t n, float* out,
            int64_t ldo);

// y[i] += x[i]
void Add(float* y, const float* x, int64_t n);

// out row r = table row ids[r] (fp32). Ids must be in range (the caller checks).
void EmbeddingLookup(const PackedMatrix& table, const int32_t* ids, int64_t n, float* out, int64_t ldo);

// Index of the largest value; ties and NaNs: the lowest index wins, NaN never.
// Returns 0 for n == 0 or all-NaN input.
int64_t Argmax(const float* x, int64_t n);

// ---------------------------------------------------------------- attention

// One sequence's part of a causal attention call. K and V caches are laid out
// [n_kv_heads][capacity][head_dim]. Query row i (at q + i*ldq, n_heads *
// head_dim values) sits at position pos0 + i and attends to cache positions
// 0..pos0+i, which must already hold its keys and values.
struct AttentionSeq {
  const float* q = nullptr;
  int64_t ldq = 0;
  int n_q = 0;
  int pos0 = 0;
  const float* k_cache = nullptr;
  const float* v_cache = nullptr;
  int64_t capacity = 0;  // positions per kv head in the caches
  float* out = nullptr;  // n_q rows of n_heads * head_dim
  int64_t ldo = 0;
};
struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // divides n_heads; head h reads kv head h / (n_heads / n_kv_heads)
  int head_dim = 0;
  float scale = 0;  // usually 1/sqrt(head_dim)
};
// scores = (q . k_t) * scale (dot in lane order), softmax as above, out =
// sum_t e_t * v_t in t order, divided by the sum. Work items (sequence, query,
// head) are split over the pool in a fixed partition. `scratch` holds
// pool->size() * (max context + 8) floats (AttentionScratchFloats).
void Attention(std::span<const AttentionSeq> seqs, const AttentionShape& shape, float* scratch,
               ThreadPool* pool);
int64_t AttentionScratchFloats(int threads, int64_t max_context);

}  // namespace hotboot::kernels
