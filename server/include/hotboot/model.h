// The reference model runtime: a Llama-architecture decoder (token embedding,
// RMSNorm, RoPE attention with a KV cache, SwiGLU MLP, greedy decoding) on the
// kernels in kernels/. Weights come from a safetensors file written by
// hotboot-mkmodel (bf16 or fp16), converted and repacked into the kernels'
// layout at load time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/status.h"

namespace hotboot {

struct ModelConfig {
  int dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int hidden_dim = 0;
  int vocab_size = 0;
  int max_seq_len = 0;
  float rope_theta = 10000.f;
  float norm_eps = 1e-5f;
  bool tied_embeddings = false;
  std::string dtype;  // "bf16" | "fp16": how the file stores weights
  uint64_t seed = 0;  // the generator's seed, for provenance only
};

// Byte-level BPE: ids 0..255 are raw bytes, then specials, then merges.
// Encode(Decode(x)) is not required to be x, but Decode(Encode(s)) == s for
// every byte string s (including invalid UTF-8).
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  virtual std::string Decode(std::span<const int32_t> ids) const = 0;
  virtual int32_t bos() const = 0;
  virtual int32_t eos() const = 0;
  virtual int32_t vocab_size() const = 0;
};

// Phase timings of a boot, in milliseconds; exported by /metrics.
struct LoadTimings {
  double read_ms = 0;     // reading the file
  double convert_ms = 0;  // dtype conversion + repacking into kernel layout
  double tune_ms = 0;     // kernel plan autotuning for the model's shapes
};

struct LoadOptions {
  int threads = 0;  // 0: all cores
  // Where packed weights live: a content-addressed file mapped shared, so a
  // snapshot stores them once and restored replicas map them (page cache
  // shared between replicas) instead of copying them through CRIU.
  // Empty: $HOTBOOT_WEIGHTS_DIR or /dev/shm/hotboot-weights; "none":
  // anonymous memory (the CPU model; the GPU model uploads from its file and
  // writes it in the default directory then). Its space is checked and
  // reserved before the first write: a directory without room (a container's
  // 64 MiB /dev/shm) fails the load with a message, instead of a SIGBUS.
  std::string weights_dir;
  // "auto": a CUDA GPU when one is usable (and the build has the CUDA
  // kernels), else the CPU; "cpu"; "cuda" (fails without a GPU).
  std::string device = "auto";
};

// Whether the model at `path` can be served on `device` ("auto", "cpu",
// "cuda") here: a GPU-only model (presets.h GpuOnly: over 4e9 parameters)
// is kFailedPrecondition on "cpu", and on "auto" when no CUDA GPU is usable.
// Reads the file's header (its config) only, never a tensor.
Status CheckServable(const std::string& path, const std::string& device);
// Whether this build has the GPU model and a CUDA GPU is usable here.
bool GpuUsable();

// The weights handoff of after_restore (server/CONTROL.md "Weights
// handoff"): the restorer uploaded the GPU weights file's image into
// shareable device memory; fd `fd` of process `pid` is its export.
struct DeviceWeightsHandoff {
  int pid = 0;
  int fd = -1;
  uint64_t bytes = 0;  // the image's size: must be the model's device_image_bytes()
  std::string file;    // the weights file it was made from: "gpu-weights-<hex>.bin"
};

struct GenerateRequest {
  std::vector<int32_t> prompt;  // already tokenized, BOS included by the caller
  int max_tokens = 16;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids only (prompt excluded), stops at EOS
  double prefill_ms = 0;
  double decode_ms = 0;
};

class Model {
 public:
  virtual ~Model() = default;

  // Reads, validates (shapes, dtypes, config in __metadata__) and repacks.
  static Result<std::unique_ptr<Model>> Load(const std::string& path, const LoadOptions& opts,
                                             LoadTimings* timings);

  virtual const ModelConfig& config() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;

  // Greedy decoding for a batch of independent sequences (1..8), processed
  // together (one weight pass per step for the whole batch). Deterministic:
  // the same prompts give the same tokens on every call, in every process.
  virtual Result<std::vector<GenerateResult>> Generate(
      const std::vector<GenerateRequest>& batch) = 0;

  // Measures the kernels' variants on this model's shapes for the given batch
  // sizes and fixes the fastest per shape (the "compiled plan"). Real work that
  // a cold boot pays and a snapshot saves.
  virtual Status Tune(std::span<const int> batch_sizes) = 0;
  // Human-readable description of the chosen plan (part of the digest).
  virtual std::string PlanDescription() const = 0;

  // xxh3-128 (hex) over the repacked weights, the config and the plan.
  // Identical before capture and after restore; differs if any weight byte does.
  virtual std::string Digest() const = 0;

  // Frees KV caches and scratch buffers (before capture); they are re-created
  // lazily by the next Generate.
  virtual void ReleaseScratch() = 0;

  // Files holding large immutable regions (the packed weights) that the
  // process maps; a snapshot carries them as their own sections.
  virtual std::vector<std::string> weight_files() const { return {}; }

  // Cooperative GPU capture (DESIGN.md): before a capture the weights'
  // device memory goes (their addresses stay reserved), after a restore it
  // is mapped again at the same addresses and streamed back from the
  // weights file. The CPU model has nothing on a device: no-ops.
  virtual Status ReleaseDevice() { return Status(); }
  virtual Result<double> RestoreDevice() { return 0.0; }  // milliseconds spent
  // The size of the device weights' image (what a handoff must bring); 0 for
  // a model with no weights on a device.
  virtual uint64_t device_image_bytes() const { return 0; }
  // After a restore, instead of RestoreDevice: takes the restorer's memory
  // (pidfd_getfd, then DeviceWeights::AdoptShareable at the same addresses)
  // and does the rest of RestoreDevice; milliseconds spent. The caller has
  // checked the handoff against device_image_bytes() and weight_files().
  virtual Result<double> AdoptDevice(const DeviceWeightsHandoff&) {
    return FailedPrecondition("this server holds no device weights");
  }
  // What the process still holds on its device (for the log), after
  // ReleaseDevice; empty for a model with no device.
  virtual std::string DeviceMemoryReport() const { return ""; }
  // "cpu" or the GPU's name.
  virtual std::string device() const { return "cpu"; }
  // Boot phases a device adds to LoadTimings (CUDA init, weight upload,
  // kernel compilation, graph capture), in milliseconds, for /metrics; those
  // of the last RestoreDevice/AdoptDevice are prefixed "restore_"
  // (restore_weight_upload or restore_weight_adopt, restore_graph_capture...).
  virtual std::map<std::string, double> device_phases_ms() const { return {}; }

  virtual uint64_t parameter_count() const = 0;
  virtual uint64_t weight_bytes() const = 0;  // resident, in kernel layout
};

}  // namespace hotboot
