// Grouped-query causal attention over a KV cache, against a double reference,
// for prefill (many queries) and decode (one query) shapes and several
// sequences per call; thread counts and ISA paths must agree bit for bit.
#include <algorithm>

#include "kernel_test_util.h"

namespace hotboot::kernels {
namespace {

using testing::ExpectBitEqual;
using testing::ExpectClose;
using testing::ForEachIsa;
using testing::RandomVector;

struct SeqData {
  int n_q, pos0;
  std::vector<float> q, k, v;  // q: n_q rows; caches: [kv][cap][hd]
  int64_t cap;
};

struct Case {
  int n_heads, n_kv_heads, head_dim;
  std::vector<std::pair<int, int>> seqs;  // (n_q, pos0)
};

class AttentionTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionTest, MatchesReference) {
  const Case& c = GetParam();
  const int qdim = c.n_heads * c.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<SeqData> data;
  uint64_t seed = 1;
  int64_t max_ctx = 0;
  for (auto [n_q, pos0] : c.seqs) {
    SeqData s{n_q, pos0, {}, {}, {}, pos0 + n_q + 3};
    s.q = RandomVector(n_q * qdim, seed++, 1.0f);
    s.k = RandomVector(c.n_kv_heads * s.cap * c.head_dim, seed++, 1.0f);
    s.v = RandomVector(c.n_kv_heads * s.cap * c.head_dim, seed++, 1.0f);
    max_ctx = std::max<int64_t>(max_ctx, pos0 + n_q);
    data.push_back(std::move(s));
  }
  // Reference.
  std::vector<double> want;
  const int group = c.n_heads / c.n_kv_heads;
  for (const SeqData& s : data) {
    for (int i = 0; i < s.n_q; ++i)
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / group;
        const int n_ctx = s.pos0 + i + 1;
        std::vector<double> sc(n_ctx);
        double mx = -1e300, sum = 0;
        for (int t = 0; t < n_ctx; ++t) {
          double d = 0;
          for (int e = 0; e < c.head_dim; ++e)
            d += double{s.q[i * qdim + h * c.head_dim + e]} * s.k[(kvh * s.cap + t) * c.head_dim + e];
          sc[t] = d * scale;
          mx = std::max(mx, sc[t]);
        }
        for (auto& x : sc) sum += x = std::exp(x - mx);
        for (int e = 0; e < c.head_dim; ++e) {
          double o = 0;
          for (int t = 0; t < n_ctx; ++t) o += sc[t] * s.v[(kvh * s.cap + t) * c.head_dim + e];
          want.push_back(o / sum);
        }
      }
  }
  ThreadPool pool(3);
  std::vector<float> first;
  ForEachIsa([&](Isa) {
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      std::vector<std::vector<float>> outs;
      std::vector<AttentionSeq> seqs;
      for (const SeqData& s : data) outs.emplace_back(s.n_q * qdim, -7.0f);
      for (size_t i = 0; i < data.size(); ++i) {
        const SeqData& s = data[i];
        seqs.push_back({s.q.data(), qdim, s.n_q, s.pos0, s.k.data(), s.v.data(), s.cap, outs[i].data(), qdim});
      }
      std::vector<float> scratch(AttentionScratchFloats(p ? p->size() : 1, max_ctx));
      Attention(seqs, {c.n_heads, c.n_kv_heads, c.head_dim, scale}, scratch.data(), p);
      std::vector<float> flat;
      for (auto& o : outs) flat.insert(flat.end(), o.begin(), o.end());
      ExpectClose(flat, want, 1e-5, 1e-4);
      if (first.empty()) {
        first = flat;
      } else {
        ExpectBitEqual(flat, first);
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Case{1, 1, 8, {{1, 0}}}, Case{4, 2, 16, {{5, 0}}},
                                           Case{6, 2, 64, {{1, 40}, {1, 3}, {7, 0}}},
                                           Case{8, 8, 12, {{3, 9}}},  // head_dim not a multiple of 8
                                           Case{32, 4, 64, {{1, 100}, {1, 7}}},
                                           Case{4, 1, 128, {{70, 0}, {2, 70}}}));

}  // namespace
}  // namespace hotboot::kernels
