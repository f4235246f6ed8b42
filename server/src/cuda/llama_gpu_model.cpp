// The reference model on a CUDA GPU: the same decoder as llama_model.cpp
// (embedding, RMSNorm, RoPE attention over a KV cache, SwiGLU, greedy
// decoding) on the ops of kernels_gpu.h, with what a GPU server builds at
// boot and loses on a cold start: a CUDA context, weights uploaded from a
// content-addressed file, KV caches and activations in device memory, and a
// CUDA graph of one decode step per batch size, and kernels compiled at load
// time (NVRTC) for this model's widths.
//
// Cooperative capture: ReleaseDevice gives back the weights' device memory
// (DeviceWeights keeps their addresses reserved) and the scratch buffers;
// RestoreDevice maps memory at the same addresses, streams the weights back
// from the file (which the snapshot carries as a section) and re-captures
// the graphs. What is left in the process (context, tables) is small, and
// the driver's checkpoint moves it.
#include <cuda_runtime.h>
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>

#include "../bpe_tokenizer.h"
#include "../fd_handoff.h"
#include "../gpu_model.h"
#include "../gpu_weights.h"
#include "../weights_file.h"
#include "hotboot/gpu_memory.h"
#include "hotboot/kernels.h"
#include "hotboot/kernels_gpu.h"
#include "hotboot/kernels_jit.h"
#include "hotboot/presets.h"

namespace hotboot {
namespace {

namespace kg = kernels::gpu;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status();
  return Internal(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Activation rows per step: prefill blocks of up to 256 rows, decode up to 8.
constexpr int kMaxRows = 256;
constexpr int kMaxSlots = 8;

class GpuLlamaModel final : public Model {
 public:
  ~GpuLlamaModel() override {
    FreeScratch();
    cudaFree(rope_cos_), cudaFree(rope_sin_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  static Result<std::unique_ptr<Model>> Load(const std::string& path, const LoadOptions& opts, LoadTimings* timings);

  const ModelConfig& config() const override { return cfg_; }
  const Tokenizer& tokenizer() const override { return *tok_; }
  Result<std::vector<GenerateResult>> Generate(const std::vector<GenerateRequest>& batch) override;
  Status Tune(std::span<const int> batch_sizes) override;
  std::string PlanDescription() const override;
  std::string Digest() const override;
  void ReleaseScratch() override { FreeScratch(); }
  Status ReleaseDevice() override;
  Result<double> RestoreDevice() override;
  uint64_t device_image_bytes() const override { return weights_.image_bytes(); }
  Result<double> AdoptDevice(const DeviceWeightsHandoff& h) override;
  std::string device() const override { return device_name_; }
  std::map<std::string, double> device_phases_ms() const override { return phases_; }
  std::string DeviceMemoryReport() const override { return memory_report_; }
  std::vector<std::string> weight_files() const override { return {file_.path}; }
  uint64_t parameter_count() const override { return ParameterCount(cfg_); }
  uint64_t weight_bytes() const override { return weights_.bytes(); }

 private:
  const uint16_t* Mat(size_t i) const { return reinterpret_cast<const uint16_t*>(weights_.ptr(i)); }
  const float* Vec(size_t i) const { return reinterpret_cast<const float*>(weights_.ptr(i)); }
  size_t Index(const std::string& name) const { return index_.at(name); }
  Status EnsureScratch();
  void FreeScratch();
  // Enqueues one step over `rows` rows (tokens_, pos_, slot_ on the device)
  // whose logits rows are the `nseg` rows listed in rowidx_; leaves the
  // greedy next tokens in next_.
  Status Enqueue(int rows, int nseg);
  // Uploads the step's inputs, runs it (as a graph when one was captured
  // for this decode batch size) and returns the next tokens.
  Result<std::vector<int32_t>> Run(const std::vector<int32_t>& tokens, const std::vector<int32_t>& pos,
                                   const std::vector<int32_t>& slot, const std::vector<int32_t>& rowidx, bool decode);
  Status CaptureGraphs();
  // What a restore does once the weights are back: the stack limit, the graphs.
  Status AfterWeightsBack();
  // Forgets the last restore's "restore_*" phases.
  void ClearRestorePhases();
  // Compiles and loads the kernels specialised for this model; without
  // NVRTC (or when it fails) the generic ops run and jit_note_ says why.
  void Specialise(int arch);
  Status Matmul(const float* x, int m, int k, const uint16_t* w, int n, float* y) const {
    return jit_ ? jit_->Matmul(x, m, k, w, n, y, stream_) : kg::Matmul(x, m, k, w, n, y, stream_);
  }
  Status RmsNorm(const float* x, const float* w, int rows, float* out) const {
    const int n = cfg_.dim;
    return jit_ ? jit_->RmsNorm(x, w, rows, n, cfg_.norm_eps, out, stream_)
                : kg::RmsNorm(x, w, rows, n, cfg_.norm_eps, out, stream_);
  }

  ModelConfig cfg_;
  std::unique_ptr<BpeTokenizer> tok_;
  GpuWeightsFile file_;
  std::unique_ptr<gpu::Device> dev_;
  gpu::DeviceWeights weights_;
  std::map<std::string, size_t> index_;
  std::string device_name_;
  std::map<std::string, double> phases_;
  std::string memory_report_;
  size_t stack_limit_ = 0;  // per-thread stack the context had before a release (0: not shrunk)
  std::vector<int> graph_sizes_;
  int hd_ = 0, qkv_cols_ = 0;
  cudaStream_t stream_ = nullptr;
  float *rope_cos_ = nullptr, *rope_sin_ = nullptr;
  // Scratch: gone before a capture, back on demand.
  bool scratch_ = false;
  float *x_ = nullptr, *xn_ = nullptr, *qkv_ = nullptr, *att_ = nullptr, *gu_ = nullptr, *hid_ = nullptr;
  float *last_ = nullptr, *logits_ = nullptr, *k_cache_ = nullptr, *v_cache_ = nullptr;
  int32_t *tokens_ = nullptr, *pos_ = nullptr, *slot_ = nullptr, *rowidx_ = nullptr, *next_ = nullptr;
  std::map<int, cudaGraphExec_t> graphs_;
  std::unique_ptr<kg::JitKernels> jit_;
  std::string jit_note_;
};

Result<std::unique_ptr<Model>> GpuLlamaModel::Load(const std::string& path, const LoadOptions& opts,
                                                   LoadTimings* timings) {
  if (kg::DeviceCount() == 0)
    return NotFound(
        "no CUDA GPU is usable here (no driver or no device); "
        "serve with --device auto or --device cpu");
  auto m = std::make_unique<GpuLlamaModel>();
  const auto t_init = Clock::now();
  HB_ASSIGN_OR_RETURN(m->dev_, gpu::OpenCudaDevice(0));
  m->device_name_ = m->dev_->Name();
  HB_RETURN_IF_ERROR(Cuda(cudaSetDevice(0), "cudaSetDevice"));
  HB_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
  m->phases_["cuda_init"] = MsSince(t_init);
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);

  LoadTimings lt;
  HB_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(path));
  auto it = f.metadata().find(kConfigKey);
  if (it == f.metadata().end()) return Corrupt(path + ": no '" + std::string(kConfigKey) + "' in __metadata__");
  HB_ASSIGN_OR_RETURN(m->cfg_, ConfigFromJson(it->second));
  const ModelConfig& c = m->cfg_;
  m->hd_ = c.dim / c.n_heads;
  m->qkv_cols_ = (c.n_heads + 2 * c.n_kv_heads) * m->hd_;
  m->Specialise(major * 10 + minor);
  HB_ASSIGN_OR_RETURN(m->tok_, LoadTokenizer(f, c.vocab_size));

  // The weights are uploaded from a file and streamed back from it after a
  // restore, so "none" (from the options or the environment) still writes
  // one, in the default directory.
  std::string dir = ResolveWeightsDir(opts.weights_dir == "none" ? "" : opts.weights_dir);
  if (dir == "none") dir = kDefaultWeightsDir;
  HB_ASSIGN_OR_RETURN(m->file_, WriteGpuWeightsFile(f, c, dir));
  lt.read_ms = m->file_.read_ms;
  lt.convert_ms = m->file_.convert_ms;
  m->phases_["weight_file_hash"] = m->file_.hash_ms;
  // The file is registered with the snapshot (weights_files) but not kept
  // mapped: its bytes live on the device, and a restore that hands them
  // over (the weights handoff) never needs the file on the new host.

  // Upload: one reserved range, one region per tensor.
  const auto t_up = Clock::now();
  std::vector<uint64_t> offsets, sizes;
  for (size_t i = 0; i < m->file_.layout.tensors.size(); ++i) {
    const GpuTensor& t = m->file_.layout.tensors[i];
    m->index_[t.name] = i;
    offsets.push_back(t.offset);
    sizes.push_back(t.bytes);
  }
  HB_ASSIGN_OR_RETURN(m->weights_, gpu::DeviceWeights::Load(*m->dev_, m->file_.path, offsets, sizes));
  m->phases_["weight_upload"] = MsSince(t_up);

  // Rotary tables: built on the CPU exactly as the CPU model does.
  kernels::RopeTable rope;
  if (!kernels::BuildRopeTable(c.max_seq_len, m->hd_, c.rope_theta, &rope)) return Internal("rope table");
  const size_t rope_bytes = rope.cos.size() * sizeof(float);
  HB_RETURN_IF_ERROR(Cuda(cudaMalloc(&m->rope_cos_, rope_bytes), "cudaMalloc rope"));
  HB_RETURN_IF_ERROR(Cuda(cudaMalloc(&m->rope_sin_, rope_bytes), "cudaMalloc rope"));
  // On the model's (non-blocking) stream, and finished before Load returns.
  HB_RETURN_IF_ERROR(Cuda(
      cudaMemcpyAsync(m->rope_cos_, rope.cos.data(), rope_bytes, cudaMemcpyHostToDevice, m->stream_), "rope copy"));
  HB_RETURN_IF_ERROR(Cuda(
      cudaMemcpyAsync(m->rope_sin_, rope.sin.data(), rope_bytes, cudaMemcpyHostToDevice, m->stream_), "rope copy"));
  HB_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(m->stream_), "rope copy"));
  if (timings) *timings = lt;
  return std::unique_ptr<Model>(std::move(m));
}

Status GpuLlamaModel::EnsureScratch() {
  if (scratch_) return Status();
  const ModelConfig& c = cfg_;
  const size_t r = kMaxRows + kMaxSlots;
  const size_t kv = static_cast<size_t>(kMaxSlots) * c.n_layers * c.n_kv_heads * c.max_seq_len * hd_;
  auto alloc = [](auto** p, size_t n) {
    return Cuda(cudaMalloc(reinterpret_cast<void**>(p), n * sizeof(**p)), "cudaMalloc scratch");
  };
  Status s = alloc(&x_, r * c.dim);
  if (s.ok()) s = alloc(&xn_, r * c.dim);
  if (s.ok()) s = alloc(&qkv_, r * qkv_cols_);
  if (s.ok()) s = alloc(&att_, r * c.dim);
  if (s.ok()) s = alloc(&gu_, r * 2 * c.hidden_dim);
  if (s.ok()) s = alloc(&hid_, r * c.hidden_dim);
  if (s.ok()) s = alloc(&last_, static_cast<size_t>(kMaxSlots) * c.dim);
  if (s.ok()) s = alloc(&logits_, static_cast<size_t>(kMaxSlots) * c.vocab_size);
  if (s.ok()) s = alloc(&k_cache_, kv);
  if (s.ok()) s = alloc(&v_cache_, kv);
  for (int32_t** p : {&tokens_, &pos_, &slot_, &rowidx_, &next_}) {
    if (s.ok()) s = alloc(p, r);
  }
  scratch_ = true;  // so that FreeScratch frees what was allocated
  if (!s.ok()) FreeScratch();
  return s;
}

void GpuLlamaModel::FreeScratch() {
  for (auto& [b, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
  if (!scratch_) return;
  if (stream_) cudaStreamSynchronize(stream_);
  for (float** p : {&x_, &xn_, &qkv_, &att_, &gu_, &hid_, &last_, &logits_, &k_cache_, &v_cache_}) {
    cudaFree(*p);
    *p = nullptr;
  }
  for (int32_t** p : {&tokens_, &pos_, &slot_, &rowidx_, &next_}) {
    cudaFree(*p);
    *p = nullptr;
  }
  scratch_ = false;
}

Status GpuLlamaModel::Enqueue(int rows, int nseg) {
  const ModelConfig& c = cfg_;
  void* s = stream_;
  const int d = c.dim, h = c.hidden_dim;
  const kg::KvLayout kv{c.n_layers, c.n_kv_heads, c.max_seq_len, hd_};
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd_));
  HB_RETURN_IF_ERROR(kg::Embedding(Mat(Index("embed")), tokens_, rows, d, x_, s));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    HB_RETURN_IF_ERROR(RmsNorm(x_, Vec(Index(p + "attn_norm")), rows, xn_));
    HB_RETURN_IF_ERROR(Matmul(xn_, rows, d, Mat(Index(p + "qkv")), qkv_cols_, qkv_));
    HB_RETURN_IF_ERROR(kg::Rope(qkv_, qkv_cols_, rows, c.n_heads, hd_, pos_, rope_cos_, rope_sin_, s));
    HB_RETURN_IF_ERROR(
        kg::Rope(qkv_ + c.n_heads * hd_, qkv_cols_, rows, c.n_kv_heads, hd_, pos_, rope_cos_, rope_sin_, s));
    HB_RETURN_IF_ERROR(kg::StoreKv(qkv_, qkv_cols_, rows, c.n_heads, slot_, pos_, l, kv, k_cache_, v_cache_, s));
    HB_RETURN_IF_ERROR(kg::Attention(qkv_, qkv_cols_, rows, c.n_heads, slot_, pos_, l, kv, k_cache_, v_cache_, scale,
                                     c.max_seq_len, att_, d, s));
    HB_RETURN_IF_ERROR(Matmul(att_, rows, c.n_heads * hd_, Mat(Index(p + "o")), d, xn_));
    HB_RETURN_IF_ERROR(kg::Add(x_, xn_, static_cast<int64_t>(rows) * d, s));
    HB_RETURN_IF_ERROR(RmsNorm(x_, Vec(Index(p + "mlp_norm")), rows, xn_));
    HB_RETURN_IF_ERROR(Matmul(xn_, rows, d, Mat(Index(p + "gate_up")), 2 * h, gu_));
    HB_RETURN_IF_ERROR(kg::SwiGlu(gu_, rows, h, hid_, s));
    HB_RETURN_IF_ERROR(Matmul(hid_, rows, h, Mat(Index(p + "down")), d, xn_));
    HB_RETURN_IF_ERROR(kg::Add(x_, xn_, static_cast<int64_t>(rows) * d, s));
  }
  // Logits for each segment's last row only.
  HB_RETURN_IF_ERROR(kg::GatherRows(x_, d, rowidx_, nseg, last_, s));
  HB_RETURN_IF_ERROR(RmsNorm(last_, Vec(Index("final_norm")), nseg, last_));
  const size_t head = index_.count("lm_head") ? Index("lm_head") : Index("embed");
  HB_RETURN_IF_ERROR(Matmul(last_, nseg, d, Mat(head), c.vocab_size, logits_));
  return kg::Argmax(logits_, nseg, c.vocab_size, next_, s);
}

Result<std::vector<int32_t>> GpuLlamaModel::Run(const std::vector<int32_t>& tokens, const std::vector<int32_t>& pos,
                                                const std::vector<int32_t>& slot, const std::vector<int32_t>& rowidx,
                                                bool decode) {
  HB_RETURN_IF_ERROR(EnsureScratch());
  const int rows = static_cast<int>(tokens.size()), nseg = static_cast<int>(rowidx.size());
  const size_t rb = tokens.size() * sizeof(int32_t);
  HB_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(tokens_, tokens.data(), rb, cudaMemcpyHostToDevice, stream_), "upload"));
  HB_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(pos_, pos.data(), rb, cudaMemcpyHostToDevice, stream_), "upload"));
  HB_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(slot_, slot.data(), rb, cudaMemcpyHostToDevice, stream_), "upload"));
  HB_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(rowidx_, rowidx.data(), rowidx.size() * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, stream_),
                          "upload"));
  auto g = decode ? graphs_.find(rows) : graphs_.end();
  if (g != graphs_.end()) {
    HB_RETURN_IF_ERROR(Cuda(cudaGraphLaunch(g->second, stream_), "cudaGraphLaunch"));
  } else {
    HB_RETURN_IF_ERROR(Enqueue(rows, nseg));
  }
  std::vector<int32_t> next(static_cast<size_t>(nseg));
  HB_RETURN_IF_ERROR(Cuda(
      cudaMemcpyAsync(next.data(), next_, next.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
      "download"));
  HB_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream_), "decode step"));
  return next;
}

Result<std::vector<GenerateResult>> GpuLlamaModel::Generate(const std::vector<GenerateRequest>& batch) {
  const ModelConfig& c = cfg_;
  if (batch.empty()) return std::vector<GenerateResult>{};
  static_assert(kMaxSlots == 8, "CheckBatch allows 8 sequences");
  HB_RETURN_IF_ERROR(CheckBatch(c, batch));
  std::vector<GenerateResult> out(batch.size());
  std::vector<int32_t> next(batch.size());
  const auto t_prefill = Clock::now();
  for (size_t i = 0; i < batch.size(); ++i) {
    const auto& p = batch[i].prompt;
    for (size_t off = 0; off < p.size(); off += kMaxRows) {
      const int n = static_cast<int>(std::min<size_t>(kMaxRows, p.size() - off));
      std::vector<int32_t> toks(p.begin() + off, p.begin() + off + n), pos(n), slot(n, static_cast<int32_t>(i));
      for (int j = 0; j < n; ++j) pos[j] = static_cast<int32_t>(off) + j;
      HB_ASSIGN_OR_RETURN(auto nx, Run(toks, pos, slot, {n - 1}, false));
      next[i] = nx[0];
    }
  }
  const double prefill_ms = MsSince(t_prefill);
  const auto t_decode = Clock::now();
  std::vector<int32_t> pos(batch.size());
  std::vector<bool> done(batch.size(), false);
  for (size_t i = 0; i < batch.size(); ++i) pos[i] = static_cast<int32_t>(batch[i].prompt.size());
  for (;;) {
    std::vector<int32_t> toks, ps, slots, rowidx;
    std::vector<size_t> who;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (done[i]) continue;
      out[i].tokens.push_back(next[i]);
      if (next[i] == tok_->eos() || static_cast<int>(out[i].tokens.size()) >= batch[i].max_tokens) {
        done[i] = true;
        continue;
      }
      rowidx.push_back(static_cast<int32_t>(toks.size()));
      toks.push_back(next[i]);
      ps.push_back(pos[i]);
      slots.push_back(static_cast<int32_t>(i));
      who.push_back(i);
    }
    if (toks.empty()) break;
    HB_ASSIGN_OR_RETURN(auto nx, Run(toks, ps, slots, rowidx, true));
    for (size_t s = 0; s < who.size(); ++s) {
      next[who[s]] = nx[s];
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

Status GpuLlamaModel::CaptureGraphs() {
  HB_RETURN_IF_ERROR(EnsureScratch());
  for (auto& [b, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
  for (int b : graph_sizes_) {
    if (b < 1 || b > kMaxSlots) continue;
    // A decode step of b rows, one per sequence: rowidx = 0..b-1 is data
    // the step reads, uploaded before each launch like the tokens.
    HB_RETURN_IF_ERROR(Cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "begin capture"));
    Status s = Enqueue(b, b);
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    if (!s.ok()) {
      if (graph) cudaGraphDestroy(graph);
      return s.Prefixed("capturing the decode graph for batch " + std::to_string(b));
    }
    HB_RETURN_IF_ERROR(Cuda(e, "end capture"));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    HB_RETURN_IF_ERROR(Cuda(ie, "cudaGraphInstantiate"));
    graphs_[b] = exec;
  }
  return Status();
}

void GpuLlamaModel::Specialise(int arch) {
  kg::JitSpec spec;
  spec.arch = arch;
  // Widths the specialised kernels cannot take keep the generic ops; the rest are specialised.
  for (int k : {cfg_.dim, cfg_.n_heads * hd_, cfg_.hidden_dim}) {
    if (k % 8 == 0 && k >= 8 && k <= 65536) spec.gemv_k.push_back(k);
  }
  spec.norm_n = cfg_.dim <= 16384 ? cfg_.dim : 0;
  if (spec.gemv_k.empty() && spec.norm_n == 0) {
    jit_note_ = "no width of this model suits the specialised kernels";
    return;
  }
  Result<kg::JitImage> img = kg::JitCompile(spec);
  if (!img.ok()) {
    jit_note_ = img.status().message();
    return;
  }
  phases_["kernel_compile"] = img->compile_ms;
  const auto t = Clock::now();
  Result<std::unique_ptr<kg::JitKernels>> k = kg::JitKernels::Load(*img);
  if (!k.ok()) {
    jit_note_ = k.status().message();
    return;
  }
  phases_["module_load"] = MsSince(t);
  jit_ = std::move(*k);
  jit_note_ = std::to_string(img->kernels) + " kernels by NVRTC " + img->nvrtc;
}

Status GpuLlamaModel::Tune(std::span<const int> batch_sizes) {
  const auto t = Clock::now();
  graph_sizes_.assign(batch_sizes.begin(), batch_sizes.end());
  HB_RETURN_IF_ERROR(CaptureGraphs());
  phases_["graph_capture"] = MsSince(t);
  return Status();
}

std::string GpuLlamaModel::PlanDescription() const {
  std::string s = "cuda " + device_name_ + ": gemv (<= 8 rows) / tiled gemm, " +
                  (jit_ ? "specialised for this model (" : "generic (not specialised: ") + jit_note_ +
                  "); decode graphs for batch";
  for (int b : graph_sizes_) s += " " + std::to_string(b);
  return s;
}

// The digest hashes the weights as they are in device memory (block hashes
// computed there), so a restore that streamed wrong bytes, or to the wrong
// place, shows.
std::string GpuLlamaModel::Digest() const {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  const std::string conf = ConfigToJson(cfg_) + PlanDescription();
  XXH3_128bits_update(st, conf.data(), conf.size());
  // Each tensor's 64 KiB blocks are hashed where they are (XXH64 on the
  // device, kernels_gpu.h BlockHashes) and only the hashes come back: the
  // restore's readiness check waits for this, and reading 2 GB of weights
  // back to hash them on one CPU thread took 0.3 s.
  constexpr uint64_t kBlock = 64 << 10;
  bool ok = weights_.resident();
  std::vector<uint64_t> first(file_.layout.tensors.size() + 1, 0);  // each tensor's first block
  for (size_t i = 0; i < file_.layout.tensors.size(); ++i) {
    first[i + 1] = first[i] + (file_.layout.tensors[i].bytes + kBlock - 1) / kBlock;
  }
  std::vector<uint64_t> hashes(first.back());
  uint64_t* dev_hashes = nullptr;
  ok = ok && !hashes.empty() && cudaMalloc(&dev_hashes, hashes.size() * sizeof(uint64_t)) == cudaSuccess;
  for (size_t i = 0; ok && i < file_.layout.tensors.size(); ++i) {
    ok = kg::BlockHashes(reinterpret_cast<const void*>(weights_.ptr(i)), file_.layout.tensors[i].bytes, kBlock,
                         dev_hashes + first[i], stream_)
             .ok();
  }
  ok = ok && cudaMemcpyAsync(hashes.data(), dev_hashes, hashes.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost,
                             stream_) == cudaSuccess &&
       cudaStreamSynchronize(stream_) == cudaSuccess;
  if (dev_hashes) cudaFree(dev_hashes);
  if (!ok) cudaGetLastError();  // the error is the digest's ("unreadable"), not the next launch's
  if (ok) XXH3_128bits_update(st, hashes.data(), hashes.size() * sizeof(uint64_t));
  const XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  if (!ok) return "device-weights-unreadable";
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

namespace {
uint64_t DeviceBytesInUse() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return total_b - free_b;
}
}  // namespace

Status GpuLlamaModel::ReleaseDevice() {
  FreeScratch();
  HB_RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "synchronize before release"));
  HB_RETURN_IF_ERROR(weights_.Release());
  // The context keeps local memory (the per-thread stack) for every thread
  // the GPU can run at once: 1 KiB x 2048 threads x 132 SMs, about 270 MB on
  // an H100, that the driver's checkpoint would copy out and back. It is
  // shrunk here and set back before the graphs are re-captured after a
  // restore (kernels that need more local memory grow it again at launch).
  const uint64_t before = DeviceBytesInUse();
  size_t stack = 0;
  if (cudaDeviceGetLimit(&stack, cudaLimitStackSize) == cudaSuccess &&
      cudaDeviceSetLimit(cudaLimitStackSize, 0) == cudaSuccess) {
    stack_limit_ = stack;
  } else {
    cudaGetLastError();  // not fatal: the checkpoint copies a little more
  }
  const uint64_t after = DeviceBytesInUse();
  memory_report_ = "device memory in use after release: " + std::to_string(before >> 20) + " MiB, " +
                   std::to_string(after >> 20) + " MiB with the per-thread stack reservation shrunk from " +
                   std::to_string(stack) + " bytes";
  return Status();
}

void GpuLlamaModel::ClearRestorePhases() {
  for (auto it = phases_.begin(); it != phases_.end();) {
    it = it->first.rfind("restore_", 0) == 0 ? phases_.erase(it) : std::next(it);
  }
}

Status GpuLlamaModel::AfterWeightsBack() {
  if (stack_limit_ > 0) {
    const auto ts = Clock::now();
    HB_RETURN_IF_ERROR(Cuda(cudaDeviceSetLimit(cudaLimitStackSize, stack_limit_), "restore the stack limit"));
    stack_limit_ = 0;
    phases_["restore_stack_limit"] = MsSince(ts);
  }
  const auto tg = Clock::now();
  HB_RETURN_IF_ERROR(CaptureGraphs());
  phases_["restore_graph_capture"] = MsSince(tg);
  return Status();
}

Result<double> GpuLlamaModel::RestoreDevice() {
  if (weights_.resident()) return 0.0;  // nothing was released
  ClearRestorePhases();
  const auto t = Clock::now();
  HB_ASSIGN_OR_RETURN(gpu::UploadStats up, weights_.Restore(file_.path));
  phases_["restore_weight_upload"] = up.seconds * 1000;  // /metrics exports phases as seconds
  HB_RETURN_IF_ERROR(AfterWeightsBack());
  return MsSince(t);
}

// The restorer filled the weights' image in shareable memory while CRIU and
// the driver restored this process; taking it is an fd and a mapping, no
// copy. The fd taken here is closed after the import: the mapping keeps the
// memory (CONTROL.md "Weights handoff").
Result<double> GpuLlamaModel::AdoptDevice(const DeviceWeightsHandoff& h) {
  if (weights_.resident()) return FailedPrecondition("the device weights are resident: there was no release to undo");
  ClearRestorePhases();
  const auto t = Clock::now();
  HB_ASSIGN_OR_RETURN(const int fd, TakeFdFromProcess(h.pid, h.fd));
  phases_["restore_weight_fd_take"] = MsSince(t);
  const Status s = weights_.AdoptShareable(fd);
  ::close(fd);
  HB_RETURN_IF_ERROR(s.Prefixed("adopting the restorer's device weights"));
  phases_["restore_weight_adopt"] = MsSince(t);
  if (Status after = AfterWeightsBack(); !after.ok()) {
    // Nothing stays adopted on failure, so that the caller's fallback
    // (RestoreDevice from the file) starts from released weights.
    if (Status r = weights_.Release(); !r.ok()) return after.Prefixed("after adopting (and releasing: " + r.message() + ")");
    return after;
  }
  return MsSince(t);
}

}  // namespace

bool GpuUsable() { return kg::DeviceCount() > 0; }

Result<std::unique_ptr<Model>> LoadGpuModel(const std::string& path, const LoadOptions& opts, LoadTimings* timings) {
  return GpuLlamaModel::Load(path, opts, timings);
}

}  // namespace hotboot
