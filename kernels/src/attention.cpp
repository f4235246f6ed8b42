// Causal grouped-query attention over a KV cache.
#include <algorithm>

#include "internal.h"

namespace hotboot::kernels {
namespace {

void AttentionItemScalar(const float* q, const float* k, const float* v, int64_t n_ctx, int head_dim,
                         float scale, float* scores, float* out) {
  for (int64_t t = 0; t < n_ctx; ++t) {
    float lanes[8] = {};
    const float* kt = k + t * head_dim;
    for (int d = 0; d < head_dim; ++d) lanes[d % 8] = std::fma(q[d], kt[d], lanes[d % 8]);
    scores[t] = internal::ReduceLanes(lanes) * scale;
  }
  float mx = scores[0];
  for (int64_t t = 1; t < n_ctx; ++t) mx = scores[t] > mx ? scores[t] : mx;
  float lanes[8] = {};
  for (int64_t t = 0; t < n_ctx; ++t) {
    scores[t] = internal::ExpScalar(scores[t] - mx);
    lanes[t % 8] += scores[t];
  }
  const float sum = internal::ReduceLanes(lanes);
  for (int d = 0; d < head_dim; ++d) {
    float acc = 0;
    for (int64_t t = 0; t < n_ctx; ++t) acc = std::fma(scores[t], v[t * head_dim + d], acc);
    out[d] = acc / sum;
  }
}

// Cost model for the fixed partition: context length plus a constant per item.
constexpr int64_t kItemOverhead = 16;

}  // namespace

int64_t AttentionScratchFloats(int threads, int64_t max_context) {
  return static_cast<int64_t>(std::max(threads, 1)) * (max_context + 8);
}

void Attention(std::span<const AttentionSeq> seqs, const AttentionShape& shape, float* scratch,
               ThreadPool* pool) {
  const int hd = shape.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;
  int64_t max_ctx = 0, total = 0;
  for (const AttentionSeq& s : seqs) {
    max_ctx = std::max<int64_t>(max_ctx, s.pos0 + s.n_q);
    // sum over queries i of (pos0 + i + 1 + overhead), times heads
    total += shape.n_heads * (static_cast<int64_t>(s.n_q) * (s.pos0 + 1 + kItemOverhead) +
                              static_cast<int64_t>(s.n_q) * (s.n_q - 1) / 2);
  }
  const int threads = (pool == nullptr || total < 4096) ? 1 : pool->size();
  const bool avx2 = ActiveIsa() == Isa::kAvx2;
  auto work = [&](int t) {
    const Range mine = Split(total, threads, t);
    float* sc = scratch + static_cast<int64_t>(t) * (max_ctx + 8);
    int64_t cum = 0;
    for (const AttentionSeq& s : seqs) {
      for (int i = 0; i < s.n_q; ++i) {
        const int64_t n_ctx = s.pos0 + i + 1;
        const int64_t cost = n_ctx + kItemOverhead;
        // Skip whole rows of heads that end before this thread's window.
        if (cum + cost * shape.n_heads <= mine.begin) {
          cum += cost * shape.n_heads;
          continue;
        }
        if (cum >= mine.end) return;
        for (int h = 0; h < shape.n_heads; ++h, cum += cost) {
          if (cum < mine.begin || cum >= mine.end) continue;  // an item belongs where it starts
          const int kvh = h / group;
          const float* q = s.q + i * s.ldq + h * hd;
          const float* k = s.k_cache + kvh * s.capacity * hd;
          const float* v = s.v_cache + kvh * s.capacity * hd;
          float* o = s.out + i * s.ldo + h * hd;
          if (avx2) {
            internal::AttentionItemAvx2(q, k, v, n_ctx, hd, shape.scale, sc, o);
          } else {
            AttentionItemScalar(q, k, v, n_ctx, hd, shape.scale, sc, o);
          }
        }
      }
    }
  };
  if (threads == 1) {
    work(0);
  } else {
    pool->Run(work);
  }
}

}  // namespace hotboot::kernels
