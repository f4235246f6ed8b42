// kernels_gpu_compare: every CUDA op against its CPU twin (kernels.h) on
// several shapes, including the reference model presets' (tiny, small, 1b),
// within a stated tolerance; `--perf` adds GPU and CPU time per call.
//
//   kernels_gpu_compare [--perf] [--op NAME]
//
// One line per (op, shape): max abs error, the bound atol + rtol * max|ref|,
// PASS/FAIL. Exit 0 all pass, 1 a failure, 77 no CUDA device (CTest: skipped).
// Tolerances: the GPU sums in another order (warp trees, tiles) and uses the
// fast exp; fp32 rounding then differs by a few ulps per term, so matmul and
// attention allow rtol 2e-4 of the largest output, the other ops 1e-5.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "hotboot/kernels.h"
#include "hotboot/kernels_gpu.h"
#include "hotboot/presets.h"

namespace k = hotboot::kernels;
namespace g = hotboot::kernels::gpu;

namespace {

bool g_perf = false;
std::string g_only;
int g_failed = 0, g_passed = 0;

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
void Report(const std::string& op, const std::string& shape, const std::vector<float>& got,
            const std::vector<float>& want, double atol, double rtol, const std::function<void()>& gpu = nullptr,
            const std::function<void()>& cpu = nullptr, double bytes = 0) {
  double max_ref = 0, max_err = 0;
  bool finite = got.size() == want.size();
  for (size_t i = 0; finite && i < got.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
    if (!std::isfinite(got[i])) finite = false;
    max_err = std::max(max_err, std::abs(static_cast<double>(got[i]) - want[i]));
  }
  const double bound = atol + rtol * max_ref;
  const bool ok = finite && max_err <= bound;
  (ok ? g_passed : g_failed)++;
  std::printf("%-12s %-34s max err %.3e  bound %.3e  %s", op.c_str(), shape.c_str(), max_err, bound,
              ok ? "PASS" : "FAIL");
  if (g_perf && gpu && cpu) {
    const double gms = GpuMs(gpu), cms = CpuMs(cpu);
    std::printf("  gpu %.4f ms  cpu %.3f ms  (%.0fx)", gms, cms, cms / gms);
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

void CompareMatmul(int m, int n, int kk, const char* what) {
  auto x = Normal(static_cast<size_t>(m) * kk, 1);
  auto wf = Normal(static_cast<size_t>(n) * kk, 2, 0.02f);
  auto w = Bf16(wf);
  k::PackedMatrix packed;
  packed.Reset(n, kk);
  packed.PackRows(0, w.data(), k::SrcType::kBf16, n, nullptr);
  std::vector<float> want(static_cast<size_t>(m) * n);
  auto cpu = [&] { k::Matmul(x.data(), kk, m, packed, want.data(), n, k::DefaultMatmulVariant(m, n, kk), nullptr); };
  cpu();
  Dev<float> dx(x), dy(static_cast<size_t>(m) * n);
  Dev<uint16_t> dw(w);
  auto gpu = [&] { g::Matmul(dx.get(), m, kk, dw.get(), n, dy.get(), nullptr); };
  hotboot::Status s = g::Matmul(dx.get(), m, kk, dw.get(), n, dy.get(), nullptr);
  cudaDeviceSynchronize();
  if (!s.ok()) std::printf("matmul: %s\n", s.message().c_str());
  Report("matmul", Shape({{"m", m}, {"n", n}, {"k", kk}}) + " " + what, dy.Host(), want, 1e-6, 2e-4, gpu, cpu,
         2.0 * n * kk);
}

void CompareRmsNorm(int rows, int n) {
  auto x = Normal(static_cast<size_t>(rows) * n, 3), w = Normal(n, 4);
  std::vector<float> want(x.size());
  auto cpu = [&] { k::RmsNorm(x.data(), n, w.data(), rows, n, 1e-5f, want.data(), n); };
  cpu();
  Dev<float> dx(x), dw(w), dy(x.size());
  auto gpu = [&] { g::RmsNorm(dx.get(), dw.get(), rows, n, 1e-5f, dy.get(), nullptr); };
  gpu();
  Report("rmsnorm", Shape({{"rows", rows}, {"n", n}}), dy.Host(), want, 1e-6, 1e-5, gpu, cpu);
}

void CompareRope(int rows, int heads, int hd, int max_pos) {
  const int ld = heads * hd + 8;
  auto x = Normal(static_cast<size_t>(rows) * ld, 5);
  std::vector<int32_t> pos(rows);
  std::mt19937 rng(6);
  for (auto& p : pos) p = static_cast<int32_t>(rng() % max_pos);
  k::RopeTable t;
  k::BuildRopeTable(max_pos, hd, 10000.f, &t);
  std::vector<float> want = x;
  k::Rope(want.data(), ld, rows, heads, hd, pos.data(), t);
  Dev<float> dx(x), dc(std::vector<float>(t.cos.data(), t.cos.data() + t.cos.size())),
      ds(std::vector<float>(t.sin.data(), t.sin.data() + t.sin.size()));
  Dev<int32_t> dp(pos);
  g::Rope(dx.get(), ld, rows, heads, hd, dp.get(), dc.get(), ds.get(), nullptr);
  Report("rope", Shape({{"rows", rows}, {"heads", heads}, {"hd", hd}}), dx.Host(), want, 1e-6, 1e-5);
}

// StoreKv, then attention over the caches, against the CPU's attention.
void CompareAttention(int seqs, int heads, int kv_heads, int hd, int context) {
  const int qkv_cols = (heads + 2 * kv_heads) * hd;
  g::KvLayout kv{1, kv_heads, context, hd};
  // Every position of every sequence goes through StoreKv, as prefill does.
  const int rows = seqs * context;
  auto qkv = Normal(static_cast<size_t>(rows) * qkv_cols, 7);
  std::vector<int32_t> slot(rows), pos(rows);
  for (int r = 0; r < rows; ++r) slot[r] = r / context, pos[r] = r % context;
  Dev<float> dqkv(qkv), dk(static_cast<size_t>(seqs) * kv_heads * context * hd),
      dv(static_cast<size_t>(seqs) * kv_heads * context * hd), dout(static_cast<size_t>(rows) * heads * hd);
  Dev<int32_t> dslot(slot), dpos(pos);
  g::StoreKv(dqkv.get(), qkv_cols, rows, heads, dslot.get(), dpos.get(), 0, kv, dk.get(), dv.get(), nullptr);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  auto gpu = [&] {
    g::Attention(dqkv.get(), qkv_cols, rows, heads, dslot.get(), dpos.get(), 0, kv, dk.get(), dv.get(), scale, context,
                 dout.get(), heads * hd, nullptr);
  };
  gpu();
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
  std::vector<float> want(static_cast<size_t>(rows) * heads * hd);
  std::vector<k::AttentionSeq> aseqs;
  for (int r = 0; r < rows; ++r) {
    k::AttentionSeq a;
    a.q = qkv.data() + static_cast<size_t>(r) * qkv_cols;
    a.ldq = qkv_cols;
    a.n_q = 1;
    a.pos0 = pos[r];
    a.k_cache = kc[slot[r]].data();
    a.v_cache = vc[slot[r]].data();
    a.capacity = context;
    a.out = want.data() + static_cast<size_t>(r) * heads * hd;
    a.ldo = heads * hd;
    aseqs.push_back(a);
  }
  std::vector<float> scratch(static_cast<size_t>(k::AttentionScratchFloats(1, context)));
  const k::AttentionShape shape{heads, kv_heads, hd, scale};
  auto cpu = [&] { k::Attention(aseqs, shape, scratch.data(), nullptr); };
  cpu();
  Report("attention", Shape({{"seqs", seqs}, {"heads", heads}, {"kv", kv_heads}, {"hd", hd}, {"ctx", context}}),
         dout.Host(), want, 1e-6, 2e-4, gpu, cpu);
  // The caches themselves hold exactly the rows' k and v.
  auto gk = dk.Host();
  std::vector<float> want_k;
  for (auto& s : kc) want_k.insert(want_k.end(), s.begin(), s.end());
  Report("store_kv", Shape({{"rows", rows}, {"kv", kv_heads}, {"hd", hd}}), gk, want_k, 0, 0);
}

void CompareSmallOps(int rows, int n, int vocab) {
  // SwiGLU over fused gate|up rows.
  auto gu = Normal(static_cast<size_t>(rows) * 2 * n, 8);
  std::vector<float> want(static_cast<size_t>(rows) * n);
  k::SwiGlu(gu.data(), gu.data() + n, 2 * n, rows, n, want.data(), n);
  Dev<float> dgu(gu), dout(want.size());
  g::SwiGlu(dgu.get(), rows, n, dout.get(), nullptr);
  Report("swiglu", Shape({{"rows", rows}, {"h", n}}), dout.Host(), want, 1e-6, 1e-5);
  // Residual add.
  auto y = Normal(static_cast<size_t>(rows) * n, 9), x = Normal(y.size(), 10);
  Dev<float> dy(y), dx(x);
  std::vector<float> sum = y;
  k::Add(sum.data(), x.data(), static_cast<int64_t>(sum.size()));
  g::Add(dy.get(), dx.get(), static_cast<int64_t>(y.size()), nullptr);
  Report("add", Shape({{"n", static_cast<long>(y.size())}}), dy.Host(), sum, 0, 0);
  // Embedding lookup from a bf16 table.
  auto table = Bf16(Normal(static_cast<size_t>(vocab) * n, 11, 0.02f));
  std::vector<int32_t> ids(rows);
  for (int r = 0; r < rows; ++r) ids[r] = (r * 7919) % vocab;
  k::PackedMatrix packed;
  packed.Reset(vocab, n);
  packed.PackRows(0, table.data(), k::SrcType::kBf16, vocab, nullptr);
  std::vector<float> emb(static_cast<size_t>(rows) * n);
  k::EmbeddingLookup(packed, ids.data(), rows, emb.data(), n);
  Dev<uint16_t> dtable(table);
  Dev<int32_t> dids(ids);
  Dev<float> demb(emb.size());
  g::Embedding(dtable.get(), dids.get(), rows, n, demb.get(), nullptr);
  Report("embedding", Shape({{"rows", rows}, {"dim", n}, {"vocab", vocab}}), demb.Host(), emb, 0, 0);
  // Argmax per row (with a tie planted in row 0) and a row gather.
  auto logits = Normal(static_cast<size_t>(rows) * vocab, 12);
  logits[5] = logits[17] = 100.f;
  std::vector<float> want_idx(rows);
  for (int r = 0; r < rows; ++r) {
    want_idx[r] = static_cast<float>(k::Argmax(logits.data() + static_cast<size_t>(r) * vocab, vocab));
  }
  Dev<float> dl(logits);
  Dev<int32_t> didx(rows);
  g::Argmax(dl.get(), rows, vocab, didx.get(), nullptr);
  auto got_idx = didx.Host();
  Report("argmax", Shape({{"rows", rows}, {"n", vocab}}), std::vector<float>(got_idx.begin(), got_idx.end()), want_idx,
         0, 0);
  std::vector<int32_t> pick = {rows - 1, 0};
  Dev<int32_t> dpick(pick);
  Dev<float> dg(2 * static_cast<size_t>(vocab));
  g::GatherRows(dl.get(), vocab, dpick.get(), 2, dg.get(), nullptr);
  std::vector<float> want_g(logits.end() - vocab, logits.end());
  want_g.insert(want_g.end(), logits.begin(), logits.begin() + vocab);
  Report("gather_rows", Shape({{"n", 2}, {"cols", vocab}}), dg.Host(), want_g, 0, 0);
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
      std::fprintf(stderr, "usage: kernels_gpu_compare [--perf] [--op NAME]\n");
      return 2;
    }
  }
  if (g::DeviceCount() == 0) {
    std::printf("kernels_gpu_compare: no CUDA device (N/A here); nothing compared\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("kernels_gpu_compare on %s (sm %d.%d), CPU path %s\n", prop.name, prop.major, prop.minor,
              k::IsaName(k::ActiveIsa()));
  for (const char* preset : {"tiny", "small", "1b"}) {
    auto c = hotboot::PresetConfig(preset);
    if (!c.ok()) continue;
    const int d = c->dim, hd = c->dim / c->n_heads, h = c->hidden_dim;
    const int qkv = (c->n_heads + 2 * c->n_kv_heads) * hd;
    const std::string tag = std::string("(") + preset + ")";
    if (Want("matmul")) {
      for (int m : {1, 4, 8, 33}) {
        CompareMatmul(m, qkv, d, (tag + " qkv").c_str());
        CompareMatmul(m, 2 * h, d, (tag + " gate_up").c_str());
        CompareMatmul(m, d, h, (tag + " down").c_str());
      }
      CompareMatmul(1, c->vocab_size, d, (tag + " lm_head").c_str());
      CompareMatmul(200, d, d, (tag + " prefill").c_str());
    }
    if (Want("rmsnorm")) CompareRmsNorm(8, d), CompareRmsNorm(65, d);
    if (Want("rope")) CompareRope(9, c->n_heads, hd, c->max_seq_len);
    if (Want("attention")) CompareAttention(2, c->n_heads, c->n_kv_heads, hd, std::min(c->max_seq_len, 300));
    if (Want("small")) CompareSmallOps(8, h, c->vocab_size);
  }
  if (Want("matmul")) CompareMatmul(3, 100, 37, "(odd k: scalar path)");
  std::printf("kernels_gpu_compare: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
