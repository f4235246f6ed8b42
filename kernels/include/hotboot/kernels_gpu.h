// CUDA twins of the CPU ops in kernels.h that the reference model runs
// (one op per file in kernels/gpu/, compared with its twin by
// tests/kernels/gpu_compare.cpp). Every pointer is device memory; every op
// is enqueued on `stream` (a cudaStream_t; null: the default stream) and
// returns the launch's error as a Status, naming the op. Nothing aborts,
// nothing prints. Results match the CPU twins within the tolerances the
// harness states, not bit for bit: sums run in another order.
//
// Built only when the CUDA toolkit is found (HOTBOOT_CUDA); this header is
// plain C++ so that host code needs no CUDA headers to call the ops.
#pragma once

#include <cstdint>

#include "hotboot/status.h"

namespace hotboot::kernels::gpu {

using Stream = void*;  // cudaStream_t

// Devices the CUDA runtime sees; 0 without a driver or a GPU (never fails).
int DeviceCount();

// out[r][:] = table[ids[r]][:] (bf16 -> fp32); ids must be in range.
Status Embedding(const uint16_t* table, const int32_t* ids, int rows, int dim, float* out, Stream s);

// out = x / sqrt(mean(x^2) + eps) * w, rows of n; out may be x.
Status RmsNorm(const float* x, const float* w, int rows, int n, float eps, float* out, Stream s);

// y[m x n] = x[m x k] * W^T, W bf16 row-major [n x k] (PyTorch's Linear),
// fp32 accumulation. Small m (decode) streams W once with 16-byte loads;
// large m (prefill) runs a shared-memory tiled kernel.
Status Matmul(const float* x, int m, int k, const uint16_t* w, int n, float* y, Stream s);

// Rotates pairs (i, i + head_dim/2) of n_heads heads in each row of x (row
// stride ld floats); row r is at position pos[r]; cos/sin are [max_pos x
// head_dim/2] tables as the CPU's RopeTable.
Status Rope(float* x, int ld, int rows, int n_heads, int head_dim, const int32_t* pos, const float* cos,
            const float* sin, Stream s);

// The KV caches of every sequence slot: [slot][layer][kv head][capacity][head dim].
struct KvLayout {
  int layers = 0, kv_heads = 0, capacity = 0, head_dim = 0;
};
// Stores the k and v parts of each qkv row (q: n_heads * head_dim values,
// then k, then v) at its slot's position in layer `layer`'s caches.
Status StoreKv(const float* qkv, int ld, int rows, int n_heads, const int32_t* slot, const int32_t* pos, int layer,
               const KvLayout& kv, float* k_cache, float* v_cache, Stream s);

// Causal attention: row r's query (in qkv, n_heads heads) attends to
// positions 0..pos[r] of its slot's layer-`layer` caches, which must hold
// them already; GQA (head h reads kv head h / (n_heads / kv_heads)).
// out rows are n_heads * head_dim (stride ldo). max_context bounds pos + 1.
Status Attention(const float* qkv, int ld, int rows, int n_heads, const int32_t* slot, const int32_t* pos, int layer,
                 const KvLayout& kv, const float* k_cache, const float* v_cache, float scale, int max_context,
                 float* out, int ldo, Stream s);

// out[r][i] = silu(gu[r][i]) * gu[r][h + i] for rows of 2h (gate, then up).
Status SwiGlu(const float* gu, int rows, int h, float* out, Stream s);

// y[i] += x[i]
Status Add(float* y, const float* x, int64_t n, Stream s);

// dst row i = src row idx[i] (rows of `cols`).
Status GatherRows(const float* src, int cols, const int32_t* idx, int n, float* dst, Stream s);

// out[r] = index of the largest of row r's n values; ties: the lowest
// index; NaN never wins.
Status Argmax(const float* x, int rows, int n, int32_t* out, Stream s);

// out[i] = XXH64 (seed 0) of bytes [i*block, min((i+1)*block, bytes)) of
// `data` (block_hash.h, the same code the host runs): ceil(bytes/block)
// hashes. `block` a multiple of 32, `data` 8-byte aligned. Exact: the
// harness compares each hash with the xxHash library's.
Status BlockHashes(const void* data, uint64_t bytes, uint64_t block, uint64_t* out, Stream s);

}  // namespace hotboot::kernels::gpu
