// kernels_gpu_compare: every CUDA op against its CPU twin (kernels.h) on
// several shapes, including the reference model presets' (tiny, small, 1b),
// within a stated tolerance; `--perf` adds GPU and CPU time per call. The
// matmul and rmsnorm kernels compiled at load time for each preset's widths
// (kernels_jit.h, NVRTC) are compared too, as "matmul (specialised)".
// `decode`: the whole model, greedy, on the GPU and on the CPU, for the test
// models (tiny and small presets, written to a temporary directory): the
// tokens must be the same.
//
//   kernels_gpu_compare [--perf] [--op NAME]
//
// One line per (op, shape): max abs error, max rel error (relative to the
// largest |ref|, the scale the tolerance is stated in: per-element relative
// error means nothing for sums that cancel), the bound atol + rtol *
// max|ref|, PASS/FAIL. Exit 0 all pass, 1 a failure, 77 no CUDA device
// (CTest: skipped).
// Tolerances: the GPU sums in another order (warp trees, tiles), contracts to
// FMA and uses the fast exp/division (--use_fast_math); fp32 rounding then
// differs by a few ulps per term. A k-term dot product drifts ~sqrt(k) ulps
// of its magnitude (1b down: k = 5632, ~1e-5 relative), and the fast exp is
// off by up to ~2 + 1.2|x| ulps, so matmul and attention allow rtol 2e-4 of
// the largest output, rmsnorm/swiglu/rope 1e-5; copies (store_kv, add,
// embedding, gather, argmax) must be exact.
// --perf: GPU ms per call (cudaEvent, median of 20 after 3 warmups), CPU ms
// (median of 5, on a pool of every online core), their ratio, and the GPU's
// GB/s over the bytes the op must move at least (memory-bound ops).
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <xxhash.h>

#include "hotboot/kernels.h"
#include "hotboot/kernels_gpu.h"
#include "hotboot/kernels_jit.h"
#include "hotboot/model.h"
#include "hotboot/presets.h"

namespace k = hotboot::kernels;
namespace g = hotboot::kernels::gpu;

namespace {

bool g_perf = false;
std::string g_only;
int g_failed = 0, g_passed = 0;
k::ThreadPool* g_pool = nullptr;

std::vector<float> Normal(size_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> Bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  k::F32ToBf16(v.data(), out.data(), v.size());
  return out;
}

// A device copy of a host vector, freed at scope end.
template <typename T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    if (cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) {
      std::fprintf(stderr, "kernels_gpu_compare: cudaMalloc of %zu bytes failed\n", n * sizeof(T));
      std::exit(1);
    }
  }
  explicit Dev(const std::vector<T>& v) : Dev(v.size()) {
    cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  T* get() { return p_; }
  std::vector<T> Host() const {
    std::vector<T> v(n_);
    cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Milliseconds per call of fn on the GPU (events, median of 20 after 3).
double GpuMs(const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return Median(t);
}

double CpuMs(const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return Median(t);
}

// Reports one comparison; `bytes` (if any) gives GB/s in --perf mode.
// `launched` is the op's own Status (and the sync after it): a failed launch
// is a FAIL with its message, not a mismatch to puzzle over.
void Report(const std::string& op, const std::string& shape, const hotboot::Status& launched,
            const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
            const std::function<void()>& gpu = nullptr, const std::function<void()>& cpu = nullptr, double bytes = 0) {
  double max_ref = 0, max_err = 0;
  bool specials_match = got.size() == want.size();
  for (size_t i = 0; specials_match && i < got.size(); ++i) {
    if (std::isfinite(want[i])) max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
  }
  for (size_t i = 0; specials_match && i < got.size(); ++i) {
    // Inf/NaN must match exactly (std::max would quietly drop a NaN error).
    if (!std::isfinite(want[i]) || !std::isfinite(got[i])) {
      specials_match = std::isnan(want[i]) ? std::isnan(got[i]) : got[i] == want[i];
      continue;
    }
    const double e = std::abs(static_cast<double>(got[i]) - want[i]);
    max_err = std::max(max_err, e);
  }
  const double bound = atol + rtol * max_ref;
  const double max_rel = max_ref > 0 ? max_err / max_ref : max_err;
  const bool ok = launched.ok() && specials_match && max_err <= bound;
  (ok ? g_passed : g_failed)++;
  std::printf("%-21s %-48s abs %.2e  rel %.2e  tol %.0e+%.0e*max|ref| = %.2e  %s", op.c_str(), shape.c_str(), max_err,
              max_rel, atol, rtol, bound, ok ? "PASS" : "FAIL");
  if (!launched.ok()) std::printf("  (%s)", launched.message().c_str());
  if (g_perf && gpu && cpu) {
    const double gms = GpuMs(gpu), cms = CpuMs(cpu);
    std::printf("  gpu %.4f ms  cpu %.4f ms  cpu/gpu %.1fx", gms, cms, cms / gms);
    if (bytes > 0) std::printf("  %.0f GB/s", bytes / gms / 1e6);
  }
  std::printf("\n");
}

bool Want(const char* op) { return g_only.empty() || g_only == op; }

std::string Shape(std::initializer_list<std::pair<const char*, long>> dims) {
  std::string s;
  for (auto& [n, v] : dims) s += (s.empty() ? "" : " ") + std::string(n) + "=" + std::to_string(v);
  return s;
}

// The op's launch status, then whatever the kernel itself hit (an illegal
// address shows up only at the sync).
hotboot::Status Synced(hotboot::Status launched, const char* op) {
  const cudaError_t e = cudaDeviceSynchronize();
  if (!launched.ok() || e == cudaSuccess) return launched;
  return hotboot::Internal(std::string(op) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void CompareMatmul(int m, int n, int kk, const std::string& what, const g::JitKernels* jit = nullptr) {
  auto x = Normal(static_cast<size_t>(m) * kk, 1);
  auto wf = Normal(static_cast<size_t>(n) * kk, 2, 0.02f);
  auto w = Bf16(wf);
  k::PackedMatrix packed;
  packed.Reset(n, kk);
  packed.PackRows(0, w.data(), k::SrcType::kBf16, n, g_pool);
  std::vector<float> want(static_cast<size_t>(m) * n);
  auto cpu = [&] { k::Matmul(x.data(), kk, m, packed, want.data(), n, k::DefaultMatmulVariant(m, n, kk), g_pool); };
  cpu();
  Dev<float> dx(x), dy(static_cast<size_t>(m) * n);
  Dev<uint16_t> dw(w);
  auto run = [&] {
    return jit ? jit->Matmul(dx.get(), m, kk, dw.get(), n, dy.get(), nullptr)
               : g::Matmul(dx.get(), m, kk, dw.get(), n, dy.get(), nullptr);
  };
  auto gpu = [&] { run(); };
  const char* op = jit ? "matmul (specialised)" : "matmul";
  const auto s = Synced(run(), op);
  // W once, x and y once: all a batch-1 GEMV can hope to move.
  const double bytes = 2.0 * n * kk + 4.0 * m * kk + 4.0 * m * n;
  Report(op, Shape({{"m", m}, {"n", n}, {"k", kk}}) + " " + what, s, dy.Host(), want, 1e-6, 2e-4, gpu, cpu, bytes);
}

void CompareRmsNorm(int rows, int n, float eps, const g::JitKernels* jit = nullptr) {
  auto x = Normal(static_cast<size_t>(rows) * n, 3), w = Normal(n, 4);
  std::vector<float> want(x.size());
  auto cpu = [&] { k::RmsNorm(x.data(), n, w.data(), rows, n, eps, want.data(), n); };
  cpu();
  Dev<float> dx(x), dw(w), dy(x.size());
  auto run = [&] {
    return jit ? jit->RmsNorm(dx.get(), dw.get(), rows, n, eps, dy.get(), nullptr)
               : g::RmsNorm(dx.get(), dw.get(), rows, n, eps, dy.get(), nullptr);
  };
  auto gpu = [&] { run(); };
  const char* op = jit ? "rmsnorm (specialised)" : "rmsnorm";
  const auto s = Synced(run(), op);
  Report(op, Shape({{"rows", rows}, {"n", n}}), s, dy.Host(), want, 1e-6, 1e-5, gpu, cpu, 4.0 * (2.0 * rows * n + n));
}

void CompareRope(int rows, int heads, int hd, int max_pos, float theta) {
  const int ld = heads * hd + 8;  // a row stride wider than the heads, as in a qkv row
  auto x = Normal(static_cast<size_t>(rows) * ld, 5);
  std::vector<int32_t> pos(rows);
  std::mt19937 rng(6);
  for (auto& p : pos) p = static_cast<int32_t>(rng() % max_pos);
  pos[0] = max_pos - 1;  // the table's last row
  k::RopeTable t;
  k::BuildRopeTable(max_pos, hd, theta, &t);
  std::vector<float> want = x;
  k::Rope(want.data(), ld, rows, heads, hd, pos.data(), t);
  Dev<float> dx(x), dc(std::vector<float>(t.cos.data(), t.cos.data() + t.cos.size())),
      ds(std::vector<float>(t.sin.data(), t.sin.data() + t.sin.size()));
  Dev<int32_t> dp(pos);
  const auto s = Synced(g::Rope(dx.get(), ld, rows, heads, hd, dp.get(), dc.get(), ds.get(), nullptr), "rope");
  // Timing rotates the buffers further; the comparison above is already done.
  auto gpu = [&] { g::Rope(dx.get(), ld, rows, heads, hd, dp.get(), dc.get(), ds.get(), nullptr); };
  auto cpu = [&] { k::Rope(want.data(), ld, rows, heads, hd, pos.data(), t); };
  Report("rope", Shape({{"rows", rows}, {"heads", heads}, {"hd", hd}}), s, dx.Host(), want, 1e-6, 1e-5, gpu, cpu,
         4.0 * rows * heads * hd * 2 + 4.0 * rows * hd);
}

// Every position of every sequence goes through StoreKv, as prefill does;
// then attention for either every row (the causal prefill check) or only the
// last position of each sequence (decode: the whole cache is read once).
// The caches hold two layers and the ops work on the second, so a wrong
// layer stride cannot pass.
void CompareAttention(int seqs, int heads, int kv_heads, int hd, int context, bool decode, const std::string& tag) {
  const int qkv_cols = (heads + 2 * kv_heads) * hd;
  const int layer = 1;
  g::KvLayout kv{2, kv_heads, context, hd};
  const int rows = seqs * context;
  auto qkv = Normal(static_cast<size_t>(rows) * qkv_cols, 7);
  std::vector<int32_t> slot(rows), pos(rows);
  for (int r = 0; r < rows; ++r) slot[r] = r / context, pos[r] = r % context;
  const size_t per_layer = static_cast<size_t>(kv_heads) * context * hd;  // one slot's layer
  const size_t cache = static_cast<size_t>(seqs) * kv.layers * per_layer;
  Dev<float> dqkv(qkv), dk(cache), dv(cache);
  Dev<int32_t> dslot(slot), dpos(pos);
  const auto stored = Synced(
      g::StoreKv(dqkv.get(), qkv_cols, rows, heads, dslot.get(), dpos.get(), layer, kv, dk.get(), dv.get(), nullptr),
      "store_kv");
  // The query rows.
  std::vector<int> qi;
  for (int r = 0; r < rows; ++r) {
    if (!decode || pos[r] == context - 1) qi.push_back(r);
  }
  const int nq = static_cast<int>(qi.size());
  std::vector<float> q(static_cast<size_t>(nq) * qkv_cols);
  std::vector<int32_t> qslot(nq), qpos(nq);
  for (int i = 0; i < nq; ++i) {
    std::copy_n(qkv.begin() + static_cast<size_t>(qi[i]) * qkv_cols, qkv_cols,
                q.begin() + static_cast<size_t>(i) * qkv_cols);
    qslot[i] = slot[qi[i]], qpos[i] = pos[qi[i]];
  }
  Dev<float> dq(q), dout(static_cast<size_t>(nq) * heads * hd);
  Dev<int32_t> dqslot(qslot), dqpos(qpos);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  auto gpu = [&] {
    return g::Attention(dq.get(), qkv_cols, nq, heads, dqslot.get(), dqpos.get(), layer, kv, dk.get(), dv.get(), scale,
                        context, dout.get(), heads * hd, nullptr);
  };
  const auto s = Synced(stored.ok() ? gpu() : stored, "attention");
  // The CPU: caches [kv head][position][hd] per sequence from the same rows.
  std::vector<std::vector<float>> kc(seqs, std::vector<float>(static_cast<size_t>(kv_heads) * context * hd)), vc = kc;
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < kv_heads; ++h) {
      for (int i = 0; i < hd; ++i) {
        const size_t at = (static_cast<size_t>(h) * context + pos[r]) * hd + i;
        kc[slot[r]][at] = qkv[static_cast<size_t>(r) * qkv_cols + heads * hd + h * hd + i];
        vc[slot[r]][at] = qkv[static_cast<size_t>(r) * qkv_cols + (heads + kv_heads) * hd + h * hd + i];
      }
    }
  }
  std::vector<float> want(static_cast<size_t>(nq) * heads * hd);
  std::vector<k::AttentionSeq> aseqs;
  for (int i = 0; i < nq; ++i) {
    k::AttentionSeq a;
    a.q = q.data() + static_cast<size_t>(i) * qkv_cols;
    a.ldq = qkv_cols;
    a.n_q = 1;
    a.pos0 = qpos[i];
    a.k_cache = kc[qslot[i]].data();
    a.v_cache = vc[qslot[i]].data();
    a.capacity = context;
    a.out = want.data() + static_cast<size_t>(i) * heads * hd;
    a.ldo = heads * hd;
    aseqs.push_back(a);
  }
  const int threads = g_pool ? g_pool->size() : 1;
  std::vector<float> scratch(static_cast<size_t>(k::AttentionScratchFloats(threads, context)));
  const k::AttentionShape shape{heads, kv_heads, hd, scale};
  auto cpu = [&] { k::Attention(aseqs, shape, scratch.data(), g_pool); };
  cpu();
  const std::string dims =
      Shape({{"seqs", seqs}, {"heads", heads}, {"kv", kv_heads}, {"hd", hd}, {"ctx", context}}) + " " + tag;
  Report(
      decode ? "attn_decode" : "attention", dims, s, dout.Host(), want, 1e-6, 2e-4, [&] { gpu(); }, cpu,
      decode ? 8.0 * seqs * per_layer : 0);
  if (decode) return;
  // The caches themselves hold exactly the rows' k and v.
  std::vector<float> want_k, want_v;
  for (auto& c : kc) want_k.insert(want_k.end(), c.begin(), c.end());
  for (auto& c : vc) want_v.insert(want_v.end(), c.begin(), c.end());
  // Layer `layer` of each slot, k then v.
  std::vector<float> got;
  for (const auto* d : {&dk, &dv}) {
    const auto all = d->Host();
    for (int sl = 0; sl < seqs; ++sl) {
      const auto at = all.begin() + static_cast<ptrdiff_t>((static_cast<size_t>(sl) * kv.layers + layer) * per_layer);
      got.insert(got.end(), at, at + static_cast<ptrdiff_t>(per_layer));
    }
  }
  want_k.insert(want_k.end(), want_v.begin(), want_v.end());
  Report("store_kv", Shape({{"rows", rows}, {"kv", kv_heads}, {"hd", hd}}) + " " + tag, stored, got, want_k, 0, 0);
}

void CompareSmallOps(int rows, int d, int h, int vocab, const std::string& tag) {
  // SwiGLU over fused gate|up rows.
  auto gu = Normal(static_cast<size_t>(rows) * 2 * h, 8);
  std::vector<float> want(static_cast<size_t>(rows) * h);
  auto cpu_swiglu = [&] { k::SwiGlu(gu.data(), gu.data() + h, 2 * h, rows, h, want.data(), h); };
  cpu_swiglu();
  Dev<float> dgu(gu), dout(want.size());
  auto gpu_swiglu = [&] { g::SwiGlu(dgu.get(), rows, h, dout.get(), nullptr); };
  auto s = Synced(g::SwiGlu(dgu.get(), rows, h, dout.get(), nullptr), "swiglu");
  Report("swiglu", Shape({{"rows", rows}, {"h", h}}) + " " + tag, s, dout.Host(), want, 1e-6, 1e-5, gpu_swiglu,
         cpu_swiglu, 12.0 * rows * h);
  // Residual add.
  auto y = Normal(static_cast<size_t>(rows) * d, 9), x = Normal(y.size(), 10);
  Dev<float> dy(y), dx(x);
  std::vector<float> sum = y;
  k::Add(sum.data(), x.data(), static_cast<int64_t>(sum.size()));
  s = Synced(g::Add(dy.get(), dx.get(), static_cast<int64_t>(y.size()), nullptr), "add");
  Report("add", Shape({{"n", static_cast<long>(y.size())}}) + " " + tag, s, dy.Host(), sum, 0, 0);
  // Embedding lookup from a bf16 table, the last id included.
  auto table = Bf16(Normal(static_cast<size_t>(vocab) * d, 11, 0.02f));
  std::vector<int32_t> ids(rows);
  for (int r = 0; r < rows; ++r) ids[r] = (r * 7919) % vocab;
  ids[rows - 1] = vocab - 1;
  k::PackedMatrix packed;
  packed.Reset(vocab, d);
  packed.PackRows(0, table.data(), k::SrcType::kBf16, vocab, g_pool);
  std::vector<float> emb(static_cast<size_t>(rows) * d);
  auto cpu_emb = [&] { k::EmbeddingLookup(packed, ids.data(), rows, emb.data(), d); };
  cpu_emb();
  Dev<uint16_t> dtable(table);
  Dev<int32_t> dids(ids);
  Dev<float> demb(emb.size());
  auto gpu_emb = [&] { g::Embedding(dtable.get(), dids.get(), rows, d, demb.get(), nullptr); };
  s = Synced(g::Embedding(dtable.get(), dids.get(), rows, d, demb.get(), nullptr), "embedding");
  Report("embedding", Shape({{"rows", rows}, {"dim", d}, {"vocab", vocab}}) + " " + tag, s, demb.Host(), emb, 0, 0,
         gpu_emb, cpu_emb, 6.0 * rows * d);
  // Argmax per row: a tie in row 0 (the lower index wins), NaNs around the
  // maximum in row 1 (NaN never wins), row 2 all NaN (0, as on the CPU).
  auto logits = Normal(static_cast<size_t>(rows) * vocab, 12);
  logits[5] = logits[17] = 100.f;
  if (rows > 2) {
    float* r1 = logits.data() + vocab;
    r1[0] = r1[9] = NAN;
    r1[vocab / 2] = 50.f;
    std::fill_n(logits.data() + 2 * static_cast<size_t>(vocab), vocab, NAN);
  }
  std::vector<float> want_idx(rows);
  auto cpu_argmax = [&] {
    for (int r = 0; r < rows; ++r) {
      want_idx[r] = static_cast<float>(k::Argmax(logits.data() + static_cast<size_t>(r) * vocab, vocab));
    }
  };
  cpu_argmax();
  Dev<float> dl(logits);
  Dev<int32_t> didx(rows);
  auto gpu_argmax = [&] { g::Argmax(dl.get(), rows, vocab, didx.get(), nullptr); };
  s = Synced(g::Argmax(dl.get(), rows, vocab, didx.get(), nullptr), "argmax");
  auto got_idx = didx.Host();
  Report("argmax", Shape({{"rows", rows}, {"n", vocab}}) + " " + tag, s,
         std::vector<float>(got_idx.begin(), got_idx.end()), want_idx, 0, 0, gpu_argmax, cpu_argmax,
         4.0 * rows * vocab);
  // The rows the sampler keeps (the last, then the first).
  std::vector<int32_t> pick = {rows - 1, 0};
  Dev<int32_t> dpick(pick);
  Dev<float> dg(2 * static_cast<size_t>(vocab));
  s = Synced(g::GatherRows(dl.get(), vocab, dpick.get(), 2, dg.get(), nullptr), "gather_rows");
  std::vector<float> want_g(logits.end() - vocab, logits.end());
  want_g.insert(want_g.end(), logits.begin(), logits.begin() + vocab);
  Report("gather_rows", Shape({{"n", 2}, {"cols", vocab}}) + " " + tag, s, dg.Host(), want_g, 0, 0);
}

// The digest's block hashes: each must equal the xxHash library's XXH64 of
// the same bytes (compared as four exact 16-bit pieces per hash).
void CompareBlockHashes(uint64_t bytes, uint64_t block) {
  std::mt19937_64 rng(bytes);
  std::vector<uint64_t> words((bytes + 7) / 8);
  for (auto& w : words) w = rng();
  const auto* data = reinterpret_cast<const unsigned char*>(words.data());
  const uint64_t blocks = (bytes + block - 1) / block;
  std::vector<uint64_t> want_h(blocks);
  auto cpu = [&] {
    for (uint64_t i = 0; i < blocks; ++i) want_h[i] = XXH64(data + i * block, std::min(block, bytes - i * block), 0);
  };
  cpu();
  Dev<uint64_t> dd(words), dh(blocks);
  auto run = [&] { return g::BlockHashes(dd.get(), bytes, block, dh.get(), nullptr); };
  const auto st = Synced(run(), "block_hashes");
  const auto got_h = dh.Host();
  std::vector<float> got, want;
  for (uint64_t i = 0; i < blocks; ++i) {
    for (int q = 0; q < 4; ++q) {
      got.push_back(static_cast<float>((got_h[i] >> (16 * q)) & 0xffff));
      want.push_back(static_cast<float>((want_h[i] >> (16 * q)) & 0xffff));
    }
  }
  Report("block_hashes", Shape({{"bytes", static_cast<int>(bytes)}, {"block", static_cast<int>(block)}}), st, got,
         want, 0, 0, [&] { run(); }, cpu, static_cast<double>(bytes));
}

// Greedy decoding of the whole model on both devices: token for token equal.
void CompareDecode(const char* preset, const std::string& dir) {
  const std::string path = dir + "/" + preset + ".safetensors";
  auto cfg = hotboot::PresetConfig(preset);
  hotboot::Status st = cfg.ok() ? hotboot::WriteModel(path, *cfg, 7, nullptr) : cfg.status();
  std::unique_ptr<hotboot::Model> models[2];
  double ms[2] = {0, 0};
  std::vector<std::vector<int32_t>> out[2];
  const std::vector<std::string> texts = {"The quick brown fox", "Once upon a time", "hotboot restores replicas",
                                          "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"};
  for (int d = 0; d < 2 && st.ok(); ++d) {
    hotboot::LoadOptions o;
    o.device = d == 0 ? "cpu" : "cuda";
    o.weights_dir = dir;
    auto m = hotboot::Model::Load(path, o, nullptr);
    if (!m.ok()) {
      st = m.status().Prefixed(std::string("loading on ") + o.device);
      break;
    }
    models[d] = std::move(*m);
    const int sizes[] = {1, 4};
    st = models[d]->Tune(sizes);
    // Batch 1 (each prompt alone), then all four together.
    for (int b : {1, 4}) {
      for (size_t first = 0; st.ok() && first < texts.size(); first += b) {
        std::vector<hotboot::GenerateRequest> batch;
        for (size_t i = first; i < first + b && i < texts.size(); ++i) {
          hotboot::GenerateRequest r;
          r.prompt = {models[d]->tokenizer().bos()};
          for (int32_t t : models[d]->tokenizer().Encode(texts[i])) r.prompt.push_back(t);
          r.max_tokens = 24;
          batch.push_back(std::move(r));
        }
        const auto t0 = std::chrono::steady_clock::now();
        auto res = models[d]->Generate(batch);
        ms[d] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (!res.ok()) {
          st = res.status().Prefixed(std::string("decoding on ") + o.device);
          break;
        }
        for (auto& r : *res) out[d].push_back(std::move(r.tokens));
      }
    }
  }
  std::string diff;
  for (size_t i = 0; st.ok() && diff.empty() && i < out[0].size(); ++i) {
    const auto &a = out[0][i], &b = i < out[1].size() ? out[1][i] : a;
    size_t j = 0;
    while (j < a.size() && j < b.size() && a[j] == b[j]) ++j;
    if (j < a.size() || j < b.size() || out[1].size() != out[0].size()) {
      diff = "sequence " + std::to_string(i) + " differs from token " + std::to_string(j);
    }
  }
  const bool ok = st.ok() && diff.empty() && !out[0].empty();
  (ok ? g_passed : g_failed)++;
  std::printf("%-21s %-48s %zu sequences x 24 tokens, batch 1 and 4: %s", "decode",
              (std::string("(") + preset + ")").c_str(), out[0].size(), ok ? "same tokens  PASS" : "FAIL");
  if (!st.ok()) std::printf("  (%s)", st.message().c_str());
  if (!diff.empty()) std::printf("  (%s)", diff.c_str());
  if (ok) std::printf("  gpu %.0f ms  cpu %.0f ms  [%s]", ms[1], ms[0], models[1]->PlanDescription().c_str());
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--perf") {
      g_perf = true;
    } else if (a == "--op" && i + 1 < argc) {
      g_only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: kernels_gpu_compare [--perf] [--op "
                   "matmul|rmsnorm|rope|attention|small|hash|decode]\n");
      return 2;
    }
  }
  if (g::DeviceCount() == 0) {
    std::printf("kernels_gpu_compare: no CUDA device (N/A here); nothing compared\n");
    // A driver older than this runtime also reads as "no device": say which
    // (cudaDriverGetVersion gives 0 when no driver is installed at all).
    int n = 0, driver = 0, runtime = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    if (e != cudaSuccess && e != cudaErrorNoDevice) {
      std::printf(
          "kernels_gpu_compare: cudaGetDeviceCount: %s; %s\n", cudaGetErrorName(e),
          driver == 0
              ? "no CUDA driver on this host"
              : ("driver " + std::to_string(driver) + " is older than runtime " + std::to_string(runtime)).c_str());
    }
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  // The CPU twins run on every core, as the CPU model does.
  k::ThreadPool pool(0);
  g_pool = &pool;
  std::printf(
      "kernels_gpu_compare on %s (sm %d.%d, driver %d, runtime %d), "
      "CPU path %s on %d threads\n",
      prop.name, prop.major, prop.minor, driver, runtime, k::IsaName(k::ActiveIsa()), pool.size());
  for (const char* preset : {"tiny", "small", "1b"}) {
    auto c = hotboot::PresetConfig(preset);
    if (!c.ok()) continue;
    const int d = c->dim, hd = c->dim / c->n_heads, h = c->hidden_dim;
    const int qkv = (c->n_heads + 2 * c->n_kv_heads) * hd;
    const std::string tag = std::string("(") + preset + ")";
    // The kernels the GPU model compiles at load for this preset.
    std::unique_ptr<g::JitKernels> jit;
    if (Want("matmul") || Want("rmsnorm")) {
      g::JitSpec spec;
      spec.arch = prop.major * 10 + prop.minor;
      spec.gemv_k = {d, c->n_heads * hd, h};
      spec.norm_n = d;
      auto img = g::JitCompile(spec);
      auto loaded =
          img.ok() ? g::JitKernels::Load(*img) : hotboot::Result<std::unique_ptr<g::JitKernels>>(img.status());
      if (loaded.ok()) {
        jit = std::move(*loaded);
        std::printf("specialised kernels %s: %d compiled in %.0f ms by NVRTC %s\n", tag.c_str(), img->kernels,
                    img->compile_ms, img->nvrtc.c_str());
      } else if (loaded.status().code() == hotboot::Code::kNotFound) {
        std::printf("specialised kernels %s: not compared: %s\n", tag.c_str(), loaded.status().message().c_str());
      } else {
        Report("specialise", tag, loaded.status(), {}, {}, 0, 0, nullptr, nullptr, 0);
      }
    }
    if (Want("matmul")) {
      // 1..8 rows: the GEMV path; 9 and up: the tiled GEMM.
      for (int m : {1, 4, 8, 9, 33}) {
        CompareMatmul(m, qkv, d, tag + " qkv");
        CompareMatmul(m, 2 * h, d, tag + " gate_up");
        CompareMatmul(m, d, h, tag + " down");
      }
      CompareMatmul(1, c->vocab_size, d, tag + " lm_head");
      CompareMatmul(200, d, d, tag + " prefill");
      for (int m : jit ? std::vector<int>{1, 2, 4, 8} : std::vector<int>{}) {
        CompareMatmul(m, qkv, d, tag + " qkv", jit.get());
        CompareMatmul(m, 2 * h, d, tag + " gate_up", jit.get());
        CompareMatmul(m, d, h, tag + " down", jit.get());
      }
      if (jit) CompareMatmul(1, c->vocab_size, d, tag + " lm_head", jit.get());
    }
    if (Want("rmsnorm")) {
      CompareRmsNorm(1, d, c->norm_eps), CompareRmsNorm(65, d, c->norm_eps);
      if (jit) CompareRmsNorm(1, d, c->norm_eps, jit.get()), CompareRmsNorm(65, d, c->norm_eps, jit.get());
    }
    if (Want("rope")) CompareRope(9, c->n_heads, hd, c->max_seq_len, c->rope_theta);
    if (Want("attention")) {
      CompareAttention(2, c->n_heads, c->n_kv_heads, hd, std::min(c->max_seq_len, 300), false, tag);
      CompareAttention(4, c->n_heads, c->n_kv_heads, hd, c->max_seq_len, true, tag);
    }
    if (Want("small")) CompareSmallOps(8, d, h, c->vocab_size, tag);
  }
  if (Want("matmul")) CompareMatmul(3, 100, 37, "(odd k: GEMM path)");
  // Past the 48 KiB of shared memory a block gets by default (16384 scores).
  if (Want("attention")) CompareAttention(1, 6, 2, 64, 16384, true, "(long context)");
  if (Want("hash")) {
    CompareBlockHashes(64 << 10, 64 << 10);              // one whole block
    CompareBlockHashes((3 << 20) + 77, 64 << 10);        // a short last block, with every tail step
    CompareBlockHashes(29, 64 << 10);                    // shorter than one stripe
    CompareBlockHashes(size_t{256} << 20, 64 << 10);     // the digest's size class: timed with --perf
  }
  if (Want("decode")) {
    char tmpl[] = "/tmp/hotboot-gpu-compare-XXXXXX";
    if (::mkdtemp(tmpl)) {
      for (const char* preset : {"tiny", "small"}) CompareDecode(preset, tmpl);
      std::system(("rm -rf '" + std::string(tmpl) + "'").c_str());
    } else {
      Report("decode", "(temporary directory)", hotboot::Internal("mkdtemp failed"), {}, {}, 0, 0);
    }
  }
  std::printf("kernels_gpu_compare: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
