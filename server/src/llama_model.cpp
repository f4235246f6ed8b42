// The reference model: a Llama decoder over the kernels in kernels/.
// Weights are read from safetensors, converted and packed into the kernels'
// panel layout (q/k/v fused into one matrix, gate/up into another); sequences
// of a batch share every weight pass.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "bpe_tokenizer.h"
#include "gpu_model.h"
#include "hotboot/kernels.h"
#include "hotboot/model.h"
#include "hotboot/presets.h"
#include "hotboot/safetensors.h"
#include "weights_file.h"

namespace hotboot {

namespace k = kernels;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// What the CPU model says to a GPU-only model, before reading any tensor.
Status CpuRefusal(const std::string& path, const ModelConfig& c) {
  char n[32];
  std::snprintf(n, sizeof n, "%.2fe9", static_cast<double>(ParameterCount(c)) / 1e9);
  return FailedPrecondition(path + ": a model of " + n +
                            " parameters is GPU only (the CPU model serves up to 4e9): serve it on a host with a "
                            "CUDA GPU (--device cuda or auto), or make a smaller model (hotboot-mkmodel --preset 1b)");
}

enum Mat { kQkv, kO, kGateUp, kDown, kHead, kMatCount };
const char* kMatNames[kMatCount] = {"qkv", "o", "gate_up", "down", "lm_head"};

struct Layer {
  k::Buffer<float> attn_norm, mlp_norm;
  k::PackedMatrix qkv, o, gate_up, down;
};

// One sequence's slot in the KV cache: [layer][kv head][position][head dim].
struct Slot {
  k::Buffer<float> k, v;
};

// A run of rows in one Step: `n` tokens of sequence `slot` from position pos0.
struct Seg {
  int slot;
  const int32_t* tokens;
  int n;
  int pos0;
};

// The packed weights' home: a file mapped shared (see LoadOptions).
class WeightFile {
 public:
  ~WeightFile() {
    kernels::SetArena(nullptr);
    if (arena_.base) {
      kernels::ForgetArena(&arena_);
      ::munmap(arena_.base, arena_.size);
    }
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }
  // Creates and maps a file of `bytes` in dir, its space reserved (a full
  // tmpfs is an error here, not a SIGBUS while packing); the arena is then
  // active.
  Status Create(const std::string& dir, size_t bytes) {
    HB_ASSIGN_OR_RETURN(MappedTemp t, CreateMappedTemp(dir, ".loading", bytes, NoRoomAdvice::kOfferNone));
    tmp_ = std::move(t.path);
    arena_.base = t.base;
    arena_.size = t.size;
    kernels::SetArena(&arena_);
    return Status::Ok();
  }
  // Ends allocation, names the file after its content, makes it read-only.
  Status Seal(const std::string& dir) {
    kernels::SetArena(nullptr);
    // Named by the XXH3-128 of the whole file (not only the arena's used
    // part): the content hash a snapshot's section of it has, which is how
    // a restore finds and checks it in the weights directory.
    HB_ASSIGN_OR_RETURN(path_, PublishByContent(dir, tmp_, "weights", arena_.base, arena_.size));
    tmp_.clear();
    if (::mprotect(arena_.base, arena_.size, PROT_READ) != 0) return ErrnoError("mprotect weights", errno);
    return Status::Ok();
  }
  const std::string& path() const { return path_; }
  bool active() const { return arena_.base != nullptr; }

 private:
  kernels::Arena arena_;
  std::string tmp_, path_;
};

class LlamaModel final : public Model {
 public:
  static Result<std::unique_ptr<Model>> Load(const std::string& path, const LoadOptions& opts, LoadTimings* timings);

  const ModelConfig& config() const override { return cfg_; }
  const Tokenizer& tokenizer() const override { return *tok_; }
  Result<std::vector<GenerateResult>> Generate(const std::vector<GenerateRequest>& batch) override;
  Status Tune(std::span<const int> batch_sizes) override;
  std::string PlanDescription() const override;
  std::string Digest() const override;
  void ReleaseScratch() override {
    slots_.clear();
    x_.Clear(), xn_.Clear(), qkv_.Clear(), att_.Clear(), gu_.Clear(), hid_.Clear(), logits_.Clear(), scratch_.Clear();
    rows_cap_ = 0;
  }
  uint64_t parameter_count() const override { return ParameterCount(cfg_); }
  std::vector<std::string> weight_files() const override {
    if (weights_.path().empty()) return {};
    return {weights_.path()};
  }
  uint64_t weight_bytes() const override {
    uint64_t n = embed_.size_bytes() + (head_ ? head_->size_bytes() : 0) + final_norm_.size_bytes();
    for (const auto& l : layers_) {
      n += l.qkv.size_bytes() + l.o.size_bytes() + l.gate_up.size_bytes() + l.down.size_bytes() +
           l.attn_norm.size_bytes() + l.mlp_norm.size_bytes();
    }
    return n;
  }

 private:
  const k::PackedMatrix& HeadMatrix() const { return head_ ? *head_ : embed_; }
  k::MatmulVariant Pick(Mat m, int64_t rows) const;
  Status EnsureScratch(int64_t rows, int slots);
  // Runs the decoder over every segment's rows; writes the last row's logits
  // of each segment to logits_ (one row per segment).
  Status Step(const std::vector<Seg>& segs);
  void MatmulRows(Mat m, const float* x, int64_t ldx, int64_t rows, const k::PackedMatrix& w, float* y, int64_t ldy) {
    k::Matmul(x, ldx, rows, w, y, ldy, Pick(m, rows), pool_.get());
  }

  ModelConfig cfg_;
  WeightFile weights_;  // declared first: unmapped after the matrices that live in it
  std::unique_ptr<BpeTokenizer> tok_;
  std::unique_ptr<k::ThreadPool> pool_;
  k::PackedMatrix embed_;
  std::unique_ptr<k::PackedMatrix> head_;  // null when tied to embed_
  k::Buffer<float> final_norm_;
  std::vector<Layer> layers_;
  k::RopeTable rope_;
  int hd_ = 0, qkv_cols_ = 0;
  // The plan: for each matrix, the variant per batch-size bucket (rows).
  std::map<std::pair<int, int64_t>, k::MatmulVariant> plan_;
  // Scratch, re-created on demand after ReleaseScratch.
  std::vector<Slot> slots_;
  int64_t rows_cap_ = 0;
  k::Buffer<float> x_, xn_, qkv_, att_, gu_, hid_, logits_, scratch_;
};

Status ReadTensor(const SafetensorsFile& f, const std::string& name, std::vector<int64_t> shape, DType want,
                  std::vector<uint16_t>* out, double* read_ms) {
  const TensorInfo* t = f.Find(name);
  if (!t) return Corrupt(f.path() + ": tensor '" + name + "' is missing");
  if (t->dtype != want) {
    return Corrupt(f.path() + ": tensor '" + name + "' is " + DTypeName(t->dtype) + ", the config says " + DTypeName(want));
  }
  if (t->shape != shape) {
    auto str = [](const std::vector<int64_t>& s) {
      std::string o = "[";
      for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
      return o + "]";
    };
    return Corrupt(f.path() + ": tensor '" + name + "' has shape " + str(t->shape) + ", expected " + str(shape));
  }
  const auto t0 = Clock::now();
  out->resize(t->nbytes / 2);
  HB_RETURN_IF_ERROR(f.Read(*t, out->data()));
  *read_ms += MsSince(t0);
  return Status::Ok();
}

Result<std::unique_ptr<Model>> LlamaModel::Load(const std::string& path, const LoadOptions& opts, LoadTimings* timings) {
  LoadTimings lt;
  const auto t_open = Clock::now();
  HB_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
  auto it = f.metadata().find(kConfigKey);
  if (it == f.metadata().end()) return Corrupt(path + ": no '" + std::string(kConfigKey) + "' in __metadata__: not a hotboot model");
  auto cfg = ConfigFromJson(it->second);
  if (!cfg.ok()) return cfg.status().Prefixed(path);
  if (GpuOnly(*cfg)) return CpuRefusal(path, *cfg);
  auto m = std::make_unique<LlamaModel>();
  m->cfg_ = *cfg;
  const ModelConfig& c = m->cfg_;
  const DType dt = c.dtype == "fp16" ? DType::kF16 : DType::kBF16;
  const k::SrcType src = c.dtype == "fp16" ? k::SrcType::kF16 : k::SrcType::kBf16;
  m->pool_ = std::make_unique<k::ThreadPool>(opts.threads);
  k::ThreadPool* pool = m->pool_.get();
  m->hd_ = c.dim / c.n_heads;
  m->qkv_cols_ = (c.n_heads + 2 * c.n_kv_heads) * m->hd_;
  lt.read_ms += MsSince(t_open);

  // Tokenizer.
  HB_ASSIGN_OR_RETURN(m->tok_, LoadTokenizer(f, c.vocab_size));

  // Size the weight file: every matrix big enough to leave the heap.
  const std::string wdir = ResolveWeightsDir(opts.weights_dir);
  if (wdir != "none") {
    auto mat_bytes = [](int64_t n, int64_t kk) {
      const size_t b = static_cast<size_t>((n + 15) / 16 * 16 * kk * 2);
      return b >= (size_t{1} << 20) ? k::ArenaBytes(b) + 4096 : 0;
    };
    const int64_t dd = c.dim, hh = c.hidden_dim;
    size_t total = mat_bytes(c.vocab_size, dd) * (c.tied_embeddings ? 1 : 2);
    total += static_cast<size_t>(c.n_layers) *
             (mat_bytes(m->qkv_cols_, dd) + mat_bytes(dd, c.n_heads * m->hd_) + mat_bytes(2 * hh, dd) + mat_bytes(dd, hh));
    if (total > 0) HB_RETURN_IF_ERROR(m->weights_.Create(wdir, total).Prefixed("weights file"));
  }

  std::vector<uint16_t> buf;
  auto pack = [&](k::PackedMatrix& w, int64_t row0, int64_t rows) {
    const auto t = Clock::now();
    w.PackRows(row0, buf.data(), src, rows, pool);
    lt.convert_ms += MsSince(t);
  };
  auto alloc = [&](k::PackedMatrix& w, int64_t n, int64_t kk, const std::string& what) -> Status {
    if (!w.Reset(n, kk)) return Internal("out of memory packing " + what);
    return Status::Ok();
  };
  auto norm = [&](const std::string& name, k::Buffer<float>& out) -> Status {
    HB_RETURN_IF_ERROR(ReadTensor(f, name, {c.dim}, dt, &buf, &lt.read_ms));
    const auto t = Clock::now();
    if (!out.Reset(static_cast<size_t>(c.dim))) return Internal("out of memory");
    if (dt == DType::kF16) {
      k::F16ToF32(buf.data(), out.data(), buf.size());
    } else {
      k::Bf16ToF32(buf.data(), out.data(), buf.size());
    }
    lt.convert_ms += MsSince(t);
    return Status::Ok();
  };

  const int64_t d = c.dim, hd = m->hd_, h = c.hidden_dim;
  HB_RETURN_IF_ERROR(ReadTensor(f, "model.embed_tokens.weight", {c.vocab_size, d}, dt, &buf, &lt.read_ms));
  HB_RETURN_IF_ERROR(alloc(m->embed_, c.vocab_size, d, "embeddings"));
  pack(m->embed_, 0, c.vocab_size);
  m->layers_.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    Layer& L = m->layers_[static_cast<size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    HB_RETURN_IF_ERROR(norm(p + "input_layernorm.weight", L.attn_norm));
    HB_RETURN_IF_ERROR(norm(p + "post_attention_layernorm.weight", L.mlp_norm));
    HB_RETURN_IF_ERROR(alloc(L.qkv, m->qkv_cols_, d, p + "qkv"));
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "self_attn.q_proj.weight", {c.n_heads * hd, d}, dt, &buf, &lt.read_ms));
    pack(L.qkv, 0, c.n_heads * hd);
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "self_attn.k_proj.weight", {c.n_kv_heads * hd, d}, dt, &buf, &lt.read_ms));
    pack(L.qkv, c.n_heads * hd, c.n_kv_heads * hd);
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "self_attn.v_proj.weight", {c.n_kv_heads * hd, d}, dt, &buf, &lt.read_ms));
    pack(L.qkv, (c.n_heads + c.n_kv_heads) * hd, c.n_kv_heads * hd);
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "self_attn.o_proj.weight", {d, c.n_heads * hd}, dt, &buf, &lt.read_ms));
    HB_RETURN_IF_ERROR(alloc(L.o, d, c.n_heads * hd, p + "o"));
    pack(L.o, 0, d);
    HB_RETURN_IF_ERROR(alloc(L.gate_up, 2 * h, d, p + "gate_up"));
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "mlp.gate_proj.weight", {h, d}, dt, &buf, &lt.read_ms));
    pack(L.gate_up, 0, h);
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "mlp.up_proj.weight", {h, d}, dt, &buf, &lt.read_ms));
    pack(L.gate_up, h, h);
    HB_RETURN_IF_ERROR(ReadTensor(f, p + "mlp.down_proj.weight", {d, h}, dt, &buf, &lt.read_ms));
    HB_RETURN_IF_ERROR(alloc(L.down, d, h, p + "down"));
    pack(L.down, 0, d);
  }
  HB_RETURN_IF_ERROR(norm("model.norm.weight", m->final_norm_));
  if (!c.tied_embeddings) {
    m->head_ = std::make_unique<k::PackedMatrix>();
    HB_RETURN_IF_ERROR(ReadTensor(f, "lm_head.weight", {c.vocab_size, d}, dt, &buf, &lt.read_ms));
    HB_RETURN_IF_ERROR(alloc(*m->head_, c.vocab_size, d, "lm_head"));
    pack(*m->head_, 0, c.vocab_size);
  }
  if (m->weights_.active()) HB_RETURN_IF_ERROR(m->weights_.Seal(wdir).Prefixed("weights file"));
  const auto t_rope = Clock::now();
  if (!k::BuildRopeTable(c.max_seq_len, m->hd_, c.rope_theta, &m->rope_)) return Internal("out of memory (rope table)");
  lt.convert_ms += MsSince(t_rope);
  if (timings) *timings = lt;
  return std::unique_ptr<Model>(std::move(m));
}

k::MatmulVariant LlamaModel::Pick(Mat m, int64_t rows) const {
  // The tuned bucket at or below `rows` (buckets are the tuned batch sizes).
  auto it = plan_.upper_bound({m, rows});
  if (it != plan_.begin()) {
    --it;
    if (it->first.first == m) return it->second;
  }
  const k::PackedMatrix* w = nullptr;
  (void)w;
  return k::DefaultMatmulVariant(rows, 0, 0);
}

Status LlamaModel::Tune(std::span<const int> batch_sizes) {
  const k::PackedMatrix* mats[kMatCount] = {&layers_[0].qkv, &layers_[0].o, &layers_[0].gate_up, &layers_[0].down,
                                            &HeadMatrix()};
  std::vector<int64_t> sizes(batch_sizes.begin(), batch_sizes.end());
  sizes.push_back(64);  // prefill-sized blocks
  for (int m = 0; m < kMatCount; ++m) {
    const k::PackedMatrix& w = *mats[m];
    for (int64_t rows : sizes) {
      k::Buffer<float> x(static_cast<size_t>(rows * w.cols())), y(static_cast<size_t>(rows * w.rows()));
      if (!x.data() || !y.data()) return Internal("out of memory while tuning");
      for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f - 0.5f;
      double best = 1e300;
      k::MatmulVariant pick = k::DefaultMatmulVariant(rows, w.rows(), w.cols());
      for (const auto& v : k::MatmulVariants()) {
        k::Matmul(x.data(), w.cols(), rows, w, y.data(), w.rows(), v, pool_.get());  // warm the caches
        double t_best = 1e300;
        for (int rep = 0; rep < 3; ++rep) {
          const auto t = Clock::now();
          k::Matmul(x.data(), w.cols(), rows, w, y.data(), w.rows(), v, pool_.get());
          t_best = std::min(t_best, MsSince(t));
        }
        if (t_best < best) {
          best = t_best;
          pick = v;
        }
      }
      plan_[{m, rows}] = pick;
    }
  }
  return Status::Ok();
}

std::string LlamaModel::PlanDescription() const {
  std::string s;
  for (const auto& [key, v] : plan_) {
    s += (s.empty() ? "" : " ") + std::string(kMatNames[key.first]) + "@" + std::to_string(key.second) + "=" +
         k::MatmulVariantName(v);
  }
  return s.empty() ? "default" : s;
}

std::string LlamaModel::Digest() const {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  auto mat = [&](const k::PackedMatrix& w) { XXH3_128bits_update(st, w.data(), w.size_bytes()); };
  auto vec = [&](const k::Buffer<float>& b) { XXH3_128bits_update(st, b.data(), b.size_bytes()); };
  mat(embed_);
  for (const auto& l : layers_) {
    vec(l.attn_norm), vec(l.mlp_norm), mat(l.qkv), mat(l.o), mat(l.gate_up), mat(l.down);
  }
  vec(final_norm_);
  if (head_) mat(*head_);
  const std::string meta = ConfigToJson(cfg_) + "|" + PlanDescription();
  XXH3_128bits_update(st, meta.data(), meta.size());
  XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  char out[33];
  std::snprintf(out, sizeof out, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return out;
}

Status LlamaModel::EnsureScratch(int64_t rows, int slots) {
  const ModelConfig& c = cfg_;
  if (static_cast<int>(slots_.size()) < slots) {
    const size_t per = static_cast<size_t>(c.n_layers) * c.n_kv_heads * c.max_seq_len * hd_;
    while (static_cast<int>(slots_.size()) < slots) {
      Slot s;
      if (!s.k.Reset(per) || !s.v.Reset(per)) return Internal("out of memory for the KV cache");
      slots_.push_back(std::move(s));
    }
  }
  if (rows > rows_cap_) {
    const size_t r = static_cast<size_t>(rows);
    bool ok = x_.Reset(r * c.dim) && xn_.Reset(r * c.dim) && qkv_.Reset(r * qkv_cols_) && att_.Reset(r * c.dim) &&
              gu_.Reset(r * 2 * c.hidden_dim) && hid_.Reset(r * c.hidden_dim);
    if (!ok) return Internal("out of memory for activations");
    rows_cap_ = rows;
  }
  const size_t need_logits = static_cast<size_t>(std::max(slots, 1)) * c.vocab_size;
  if (logits_.size() < need_logits && !logits_.Reset(need_logits)) return Internal("out of memory for logits");
  const size_t need_scratch = static_cast<size_t>(k::AttentionScratchFloats(pool_->size(), c.max_seq_len));
  if (scratch_.size() < need_scratch && !scratch_.Reset(need_scratch)) return Internal("out of memory");
  return Status::Ok();
}

Status LlamaModel::Step(const std::vector<Seg>& segs) {
  const ModelConfig& c = cfg_;
  int64_t rows = 0;
  for (const auto& s : segs) rows += s.n;
  const int64_t d = c.dim, h = c.hidden_dim, kvd = static_cast<int64_t>(c.n_kv_heads) * hd_;
  std::vector<int32_t> tokens, pos;
  for (const auto& s : segs) {
    for (int i = 0; i < s.n; ++i) {
      tokens.push_back(s.tokens[i]);
      pos.push_back(s.pos0 + i);
    }
  }
  k::EmbeddingLookup(embed_, tokens.data(), rows, x_.data(), d);
  const size_t layer_stride = static_cast<size_t>(c.n_kv_heads) * c.max_seq_len * hd_;
  const k::AttentionShape shape{c.n_heads, c.n_kv_heads, hd_, 1.0f / std::sqrt(static_cast<float>(hd_))};
  for (int l = 0; l < c.n_layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    k::RmsNorm(x_.data(), d, L.attn_norm.data(), rows, d, c.norm_eps, xn_.data(), d);
    MatmulRows(kQkv, xn_.data(), d, rows, L.qkv, qkv_.data(), qkv_cols_);
    k::Rope(qkv_.data(), qkv_cols_, rows, c.n_heads, hd_, pos.data(), rope_);
    k::Rope(qkv_.data() + c.n_heads * hd_, qkv_cols_, rows, c.n_kv_heads, hd_, pos.data(), rope_);
    // Append keys and values to each sequence's cache.
    int64_t r = 0;
    std::vector<k::AttentionSeq> aseqs;
    for (const auto& s : segs) {
      Slot& slot = slots_[static_cast<size_t>(s.slot)];
      float* kc = slot.k.data() + l * layer_stride;
      float* vc = slot.v.data() + l * layer_stride;
      for (int i = 0; i < s.n; ++i) {
        const float* row = qkv_.data() + (r + i) * qkv_cols_;
        for (int kh = 0; kh < c.n_kv_heads; ++kh) {
          const size_t at = (static_cast<size_t>(kh) * c.max_seq_len + s.pos0 + i) * hd_;
          std::copy_n(row + c.n_heads * hd_ + kh * hd_, hd_, kc + at);
          std::copy_n(row + c.n_heads * hd_ + kvd + kh * hd_, hd_, vc + at);
        }
      }
      k::AttentionSeq a;
      a.q = qkv_.data() + r * qkv_cols_;
      a.ldq = qkv_cols_;
      a.n_q = s.n;
      a.pos0 = s.pos0;
      a.k_cache = kc;
      a.v_cache = vc;
      a.capacity = c.max_seq_len;
      a.out = att_.data() + r * d;
      a.ldo = d;
      aseqs.push_back(a);
      r += s.n;
    }
    k::Attention(aseqs, shape, scratch_.data(), pool_.get());
    MatmulRows(kO, att_.data(), d, rows, L.o, xn_.data(), d);
    k::Add(x_.data(), xn_.data(), rows * d);
    k::RmsNorm(x_.data(), d, L.mlp_norm.data(), rows, d, c.norm_eps, xn_.data(), d);
    MatmulRows(kGateUp, xn_.data(), d, rows, L.gate_up, gu_.data(), 2 * h);
    k::SwiGlu(gu_.data(), gu_.data() + h, 2 * h, rows, h, hid_.data(), h);
    MatmulRows(kDown, hid_.data(), h, rows, L.down, xn_.data(), d);
    k::Add(x_.data(), xn_.data(), rows * d);
  }
  // Logits only for each segment's last row.
  int64_t r = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    r += segs[i].n;
    k::RmsNorm(x_.data() + (r - 1) * d, d, final_norm_.data(), 1, d, c.norm_eps, xn_.data() + i * d, d);
  }
  MatmulRows(kHead, xn_.data(), d, static_cast<int64_t>(segs.size()), HeadMatrix(), logits_.data(), c.vocab_size);
  return Status::Ok();
}

}  // namespace

Status CheckBatch(const ModelConfig& c, const std::vector<GenerateRequest>& batch) {
  if (batch.size() > 8) return InvalidArgument("at most 8 sequences per batch");
  for (const auto& r : batch) {
    if (r.prompt.empty()) return InvalidArgument("empty prompt");
    if (r.max_tokens < 1) return InvalidArgument("max_tokens must be at least 1");
    if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > c.max_seq_len) {
      return InvalidArgument("prompt of " + std::to_string(r.prompt.size()) + " tokens plus " +
                             std::to_string(r.max_tokens) + " new ones exceeds max_seq_len " + std::to_string(c.max_seq_len));
    }
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= c.vocab_size) return InvalidArgument("token id " + std::to_string(t) + " out of range");
    }
  }
  return Status();
}

namespace {

Result<std::vector<GenerateResult>> LlamaModel::Generate(const std::vector<GenerateRequest>& batch) {
  const ModelConfig& c = cfg_;
  if (batch.empty()) return std::vector<GenerateResult>{};
  HB_RETURN_IF_ERROR(CheckBatch(c, batch));
  int64_t prompt_rows = 0;
  for (const auto& r : batch) prompt_rows += static_cast<int64_t>(r.prompt.size());
  // Prefill in blocks of at most 256 rows so activations stay bounded.
  const int64_t kBlock = 256;
  HB_RETURN_IF_ERROR(EnsureScratch(std::min(prompt_rows, kBlock) + static_cast<int64_t>(batch.size()),
                                   static_cast<int>(batch.size())));
  std::vector<GenerateResult> out(batch.size());
  std::vector<int32_t> next(batch.size());
  const auto t_prefill = Clock::now();
  for (size_t i = 0; i < batch.size(); ++i) {
    const auto& p = batch[i].prompt;
    for (size_t off = 0; off < p.size(); off += kBlock) {
      const int n = static_cast<int>(std::min<size_t>(kBlock, p.size() - off));
      HB_RETURN_IF_ERROR(Step({Seg{static_cast<int>(i), p.data() + off, n, static_cast<int>(off)}}));
    }
    next[i] = static_cast<int32_t>(k::Argmax(logits_.data(), c.vocab_size));
  }
  const double prefill_ms = MsSince(t_prefill);
  const auto t_decode = Clock::now();
  std::vector<int> pos(batch.size());
  std::vector<bool> done(batch.size(), false);
  for (size_t i = 0; i < batch.size(); ++i) pos[i] = static_cast<int>(batch[i].prompt.size());
  for (;;) {
    std::vector<Seg> segs;
    std::vector<size_t> who;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (done[i]) continue;
      out[i].tokens.push_back(next[i]);
      if (next[i] == tok_->eos() || static_cast<int>(out[i].tokens.size()) >= batch[i].max_tokens) {
        done[i] = true;
        continue;
      }
      segs.push_back(Seg{static_cast<int>(i), &next[i], 1, pos[i]});
      who.push_back(i);
    }
    if (segs.empty()) break;
    HB_RETURN_IF_ERROR(Step(segs));
    for (size_t s = 0; s < who.size(); ++s) {
      next[who[s]] = static_cast<int32_t>(k::Argmax(logits_.data() + s * c.vocab_size, c.vocab_size));
      ++pos[who[s]];
    }
  }
  const double decode_ms = MsSince(t_decode);
  for (auto& r : out) {
    r.prefill_ms = prefill_ms;
    r.decode_ms = decode_ms;
  }
  return out;
}

}  // namespace

Status CheckServable(const std::string& path, const std::string& device) {
  HB_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
  auto it = f.metadata().find(kConfigKey);
  if (it == f.metadata().end()) return Corrupt(path + ": no '" + std::string(kConfigKey) + "' in __metadata__: not a hotboot model");
  auto cfg = ConfigFromJson(it->second);
  if (!cfg.ok()) return cfg.status().Prefixed(path);
  if (!GpuOnly(*cfg) || device == "cuda") return Status::Ok();
  if (device == "auto" && GpuUsable()) return Status::Ok();
  return CpuRefusal(path, *cfg);
}

Result<std::unique_ptr<Model>> Model::Load(const std::string& path, const LoadOptions& opts, LoadTimings* timings) {
  if (opts.device != "cpu") {
    // A GPU when there is one; "auto" falls back to the CPU only when there
    // is none (kNotFound), never past a GPU that failed to load.
    auto g = LoadGpuModel(path, opts, timings);
    if (g.ok() || opts.device == "cuda" || g.status().code() != Code::kNotFound) return g;
  }
  return LlamaModel::Load(path, opts, timings);
}

}  // namespace hotboot
