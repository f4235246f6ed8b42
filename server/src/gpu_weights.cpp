#include "gpu_weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <chrono>
#include <cstring>

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
  Result<std::string> Publish(const std::string& dir) {
    // Same name, same content: replacing it is harmless to processes that
    // already read or map the old inode.
    HB_ASSIGN_OR_RETURN(std::string path, PublishByContent(dir, tmp_, "gpu-weights", base_, size_));
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

Result<GpuWeightsFile> WriteGpuWeightsFile(const SafetensorsFile& f, const ModelConfig& c, const std::string& dir) {
  GpuWeightsFile out;
  out.layout = PlanGpuWeights(c);
  MappedOut file;
  HB_RETURN_IF_ERROR(file.Create(dir, out.layout.file_bytes).Prefixed("GPU weights file"));
  const bool fp16 = c.dtype == "fp16";
  const DType want = fp16 ? DType::kF16 : DType::kBF16;
  std::vector<uint16_t> buf;
  std::vector<float> f32;
  // Source tensor `src` (rows x cols) into rows [row0, row0 + rows) of `dst`.
  auto put = [&](const std::string& dst, const std::string& src, int64_t row0, int64_t rows) -> Status {
    const GpuTensor* t = out.layout.Find(dst);
    const TensorInfo* s = f.Find(src);
    if (!t || !s) return Corrupt(f.path() + ": tensor '" + src + "' is missing");
    const std::vector<int64_t> shape = t->f32 ? std::vector<int64_t>{t->cols} : std::vector<int64_t>{rows, t->cols};
    if (s->dtype != want || s->shape != shape) {
      return Corrupt(f.path() + ": tensor '" + src + "' has another dtype or shape than the config implies");
    }
    const auto t0 = Clock::now();
    buf.resize(s->nbytes / 2);
    HB_RETURN_IF_ERROR(f.Read(*s, buf.data()));
    out.read_ms += MsSince(t0);
    const auto t1 = Clock::now();
    const size_t n = buf.size();
    uint8_t* at = file.at(t->offset + static_cast<uint64_t>(row0 * t->cols) * (t->f32 ? 4 : 2));
    if (t->f32) {
      f32.resize(n);
      fp16 ? k::F16ToF32(buf.data(), f32.data(), n) : k::Bf16ToF32(buf.data(), f32.data(), n);
      std::memcpy(at, f32.data(), n * 4);
    } else if (fp16) {
      // Through fp32, rounded to nearest even: what the CPU model packs.
      f32.resize(n);
      k::F16ToF32(buf.data(), f32.data(), n);
      k::F32ToBf16(f32.data(), reinterpret_cast<uint16_t*>(at), n);
    } else {
      std::memcpy(at, buf.data(), n * 2);
    }
    out.convert_ms += MsSince(t1);
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
  HB_ASSIGN_OR_RETURN(out.path, file.Publish(dir));
  return out;
}

}  // namespace hotboot
