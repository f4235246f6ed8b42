#include "gpu_weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "hotboot/io.h"
#include "hotboot/kernels.h"
#include "weights_file.h"

namespace hotboot {

namespace k = kernels;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

uint64_t Align(uint64_t v) { return (v + kGpuTensorAlign - 1) / kGpuTensorAlign * kGpuTensorAlign; }

// A file being written through a shared mapping; removed unless published.
class MappedOut {
 public:
  ~MappedOut() {
    if (base_) ::munmap(base_, size_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }
  // Its space reserved: a full tmpfs is an error here, not a SIGBUS while
  // writing.
  Status Create(const std::string& dir, size_t size) {
    HB_ASSIGN_OR_RETURN(MappedTemp t, CreateMappedTemp(dir, ".gpu-loading", size, NoRoomAdvice::kNeedAFile));
    tmp_ = std::move(t.path);
    base_ = t.base;
    size_ = t.size;
    return Status();
  }
  uint8_t* at(uint64_t off) { return base_ + off; }
  // Names the file after its content and publishes it.
  Result<std::string> Publish(const std::string& dir, const snapfile::Digest128* hash) {
    // Same name, same content: replacing it is harmless to processes that
    // already read or map the old inode.
    HB_ASSIGN_OR_RETURN(std::string path, PublishByContent(dir, tmp_, "gpu-weights", base_, size_, hash));
    tmp_.clear();
    ::chmod(path.c_str(), 0444);
    return path;
  }

 private:
  std::string tmp_;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

const GpuTensor* GpuWeightLayout::Find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

GpuWeightLayout PlanGpuWeights(const ModelConfig& c) {
  GpuWeightLayout l;
  auto add = [&](std::string name, int64_t rows, int64_t cols, bool f32) {
    GpuTensor t{std::move(name), l.file_bytes, static_cast<uint64_t>(rows * cols) * (f32 ? 4 : 2), rows, cols, f32};
    l.file_bytes = Align(l.file_bytes + t.bytes);
    l.tensors.push_back(std::move(t));
  };
  const int64_t d = c.dim, hd = c.dim / c.n_heads, h = c.hidden_dim;
  add("embed", c.vocab_size, d, false);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    add(p + "attn_norm", 1, d, true);
    add(p + "qkv", (c.n_heads + 2 * c.n_kv_heads) * hd, d, false);
    add(p + "o", d, c.n_heads * hd, false);
    add(p + "mlp_norm", 1, d, true);
    add(p + "gate_up", 2 * h, d, false);
    add(p + "down", d, h, false);
  }
  add("final_norm", 1, d, true);
  if (!c.tied_embeddings) add("lm_head", c.vocab_size, d, false);
  return l;
}

namespace {

// One piece of the conversion: source bytes [src_off, src_off + src_bytes)
// of the safetensors file into destination bytes starting at dst_off, as
// bf16 (a copy or fp16 -> bf16) or fp32 (a norm).
struct CopyJob {
  uint64_t src_off, src_bytes, dst_off;
  bool f32;
};

// Source rows per job: about 8 MiB, whole rows.
constexpr uint64_t kJobBytes = 8u << 20;

}  // namespace

Result<GpuWeightsFile> WriteGpuWeightsFile(const SafetensorsFile& f, const ModelConfig& c, const std::string& dir,
                                           int threads) {
  GpuWeightsFile out;
  out.layout = PlanGpuWeights(c);
  const bool fp16 = c.dtype == "fp16";
  const DType want = fp16 ? DType::kF16 : DType::kBF16;
  // The plan first, every tensor checked, before a byte is written.
  std::vector<CopyJob> jobs;
  auto put = [&](const std::string& dst, const std::string& src, int64_t row0, int64_t rows) -> Status {
    const GpuTensor* t = out.layout.Find(dst);
    const TensorInfo* s = f.Find(src);
    if (!t || !s) return Corrupt(f.path() + ": tensor '" + src + "' is missing");
    const std::vector<int64_t> shape = t->f32 ? std::vector<int64_t>{t->cols} : std::vector<int64_t>{rows, t->cols};
    if (s->dtype != want || s->shape != shape) {
      return Corrupt(f.path() + ": tensor '" + src + "' has another dtype or shape than the config implies");
    }
    const uint64_t row_bytes = static_cast<uint64_t>(t->cols) * 2;  // in the source
    const uint64_t step = std::max<uint64_t>(1, kJobBytes / row_bytes) * row_bytes;
    const uint64_t dst0 = t->offset + static_cast<uint64_t>(row0 * t->cols) * (t->f32 ? 4 : 2);
    for (uint64_t b = 0; b < s->nbytes; b += step) {
      jobs.push_back({s->offset + b, std::min(step, s->nbytes - b), dst0 + b * (t->f32 ? 2 : 1), t->f32});
    }
    return Status();
  };
  const int64_t d = c.dim, hd = c.dim / c.n_heads, h = c.hidden_dim;
  HB_RETURN_IF_ERROR(put("embed", "model.embed_tokens.weight", 0, c.vocab_size));
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".", s = "model.layers." + std::to_string(i) + ".";
    HB_RETURN_IF_ERROR(put(p + "attn_norm", s + "input_layernorm.weight", 0, 1));
    HB_RETURN_IF_ERROR(put(p + "qkv", s + "self_attn.q_proj.weight", 0, c.n_heads * hd));
    HB_RETURN_IF_ERROR(put(p + "qkv", s + "self_attn.k_proj.weight", c.n_heads * hd, c.n_kv_heads * hd));
    HB_RETURN_IF_ERROR(put(p + "qkv", s + "self_attn.v_proj.weight", (c.n_heads + c.n_kv_heads) * hd, c.n_kv_heads * hd));
    HB_RETURN_IF_ERROR(put(p + "o", s + "self_attn.o_proj.weight", 0, d));
    HB_RETURN_IF_ERROR(put(p + "mlp_norm", s + "post_attention_layernorm.weight", 0, 1));
    HB_RETURN_IF_ERROR(put(p + "gate_up", s + "mlp.gate_proj.weight", 0, h));
    HB_RETURN_IF_ERROR(put(p + "gate_up", s + "mlp.up_proj.weight", h, h));
    HB_RETURN_IF_ERROR(put(p + "down", s + "mlp.down_proj.weight", 0, d));
  }
  HB_RETURN_IF_ERROR(put("final_norm", "model.norm.weight", 0, 1));
  if (!c.tied_embeddings) HB_RETURN_IF_ERROR(put("lm_head", "lm_head.weight", 0, c.vocab_size));
  std::sort(jobs.begin(), jobs.end(), [](const CopyJob& a, const CopyJob& b) { return a.dst_off < b.dst_off; });

  MappedOut file;
  HB_RETURN_IF_ERROR(file.Create(dir, out.layout.file_bytes).Prefixed("GPU weights file"));
  const auto t0 = Clock::now();
  // Readers take jobs in file order; a bf16 source is read straight into
  // the mapping (no copy), the rest through a buffer per reader. One hasher
  // follows them in file order, hashing each piece once it is written, so
  // the content hash (XXH3-128 is one sequential stream) costs only its
  // tail after the last read.
  const size_t n = jobs.size();
  std::vector<std::atomic<bool>> done(n);
  for (auto& x : done) x = false;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;  // first_error, and the hasher's wake-ups
  std::condition_variable cv;
  Status first_error;
  std::atomic<int64_t> convert_ns{0};
  auto reader = [&] {
    std::vector<uint16_t> buf;
    std::vector<float> f32;
    while (!failed) {
      const size_t j = next.fetch_add(1);
      if (j >= n) return;
      const CopyJob& job = jobs[j];
      uint8_t* at = file.at(job.dst_off);
      Status st;
      if (!job.f32 && !fp16) {
        st = io::PreadAll(f.fd(), reinterpret_cast<char*>(at), job.src_bytes, job.src_off, f.path());
      } else {
        const size_t m = job.src_bytes / 2;
        buf.resize(m);
        st = io::PreadAll(f.fd(), reinterpret_cast<char*>(buf.data()), job.src_bytes, job.src_off, f.path());
        if (st.ok()) {
          const auto tc = Clock::now();
          f32.resize(m);
          fp16 ? k::F16ToF32(buf.data(), f32.data(), m) : k::Bf16ToF32(buf.data(), f32.data(), m);
          if (job.f32) {
            std::memcpy(at, f32.data(), m * 4);
          } else {
            // Through fp32, rounded to nearest even: what the CPU model packs.
            k::F32ToBf16(f32.data(), reinterpret_cast<uint16_t*>(at), m);
          }
          convert_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - tc).count();
        }
      }
      std::lock_guard lock(mu);
      if (!st.ok()) {
        if (first_error.ok()) first_error = st;
        failed = true;
      } else {
        done[j] = true;
      }
      cv.notify_all();
    }
  };
  XXH3_state_t* hs = XXH3_createState();
  if (!hs) return Internal("XXH3_createState: out of memory");
  XXH3_128bits_reset(hs);
  auto hasher = [&] {
    uint64_t upto = 0;  // bytes hashed; the gaps between tensors are the reservation's zeros
    for (size_t j = 0; j < n; ++j) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return done[j].load() || failed.load(); });
        if (!done[j]) return;
      }
      const uint64_t end = jobs[j].dst_off + jobs[j].src_bytes * (jobs[j].f32 ? 2 : 1);
      XXH3_128bits_update(hs, file.at(upto), end - upto);
      upto = end;
    }
    XXH3_128bits_update(hs, file.at(upto), out.layout.file_bytes - upto);
  };
  unsigned nthreads = threads > 0 ? static_cast<unsigned>(threads) : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  std::thread hash_thread(hasher);
  for (unsigned i = 1; i < nthreads; ++i) pool.emplace_back(reader);
  reader();
  for (auto& th : pool) th.join();
  out.read_ms = MsSince(t0);
  hash_thread.join();
  const XXH128_hash_t hv = XXH3_128bits_digest(hs);
  XXH3_freeState(hs);
  out.hash_ms = MsSince(t0) - out.read_ms;
  out.convert_ms = static_cast<double>(convert_ns.load()) / 1e6;
  HB_RETURN_IF_ERROR(first_error.Prefixed("GPU weights file"));
  const snapfile::Digest128 hash{hv.high64, hv.low64};
  HB_ASSIGN_OR_RETURN(out.path, file.Publish(dir, &hash));
  return out;
}

}  // namespace hotboot
