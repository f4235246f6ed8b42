// The GPU model's weights as one file: the layout the device kernels read
// (matrices bf16 row-major [out, in], PyTorch's Linear layout; q/k/v fused
// into one qkv matrix and gate/up into gate_up, as on the CPU; norms fp32),
// each tensor at a 64 KiB-aligned offset so that one upload region is one
// tensor. The file is named after its content and registered with the
// snapshot like the CPU model's (cooperative mode): restore puts it on the
// new host, and after_restore streams it back to the same device addresses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hotboot/model.h"
#include "hotboot/safetensors.h"
#include "hotboot/status.h"

namespace hotboot {

struct GpuTensor {
  std::string name;  // "embed", "layers.3.qkv", "final_norm", "lm_head"...
  uint64_t offset = 0;
  uint64_t bytes = 0;
  int64_t rows = 0, cols = 0;  // a norm is 1 x dim
  bool f32 = false;            // norms; matrices are bf16
};

struct GpuWeightLayout {
  std::vector<GpuTensor> tensors;
  uint64_t file_bytes = 0;
  // The tensor called `name`; null when there is none.
  const GpuTensor* Find(const std::string& name) const;
};

inline constexpr uint64_t kGpuTensorAlign = 64 * 1024;

// Where every tensor of config `c` goes.
GpuWeightLayout PlanGpuWeights(const ModelConfig& c);

struct GpuWeightsFile {
  std::string path;  // <dir>/gpu-weights-<xxh3-128>.bin
  GpuWeightLayout layout;
  // read_ms: the parallel pass (reads, conversions and the overlapped hash)
  // from first read to last; convert_ms: conversion time summed over the
  // readers (fp16 sources and norms only); hash_ms: the content hash's tail
  // after the last read.
  double read_ms = 0, convert_ms = 0, hash_ms = 0;
};

// Reads the model's tensors from `f`, converts them to the layout and writes
// the file into `dir` (atomically: a temporary, then a rename to its
// content-addressed name). `threads` readers (<= 0: one per CPU) take ~8 MiB
// pieces in file order, bf16 read straight into the file's mapping, while
// one thread hashes the written prefix: no tensor is held whole in memory
// (memory: a reader's piece, twice for fp16), and the bytes and the name do
// not depend on the thread count.
Result<GpuWeightsFile> WriteGpuWeightsFile(const SafetensorsFile& f, const ModelConfig& c, const std::string& dir,
                                           int threads = 0);

}  // namespace hotboot
