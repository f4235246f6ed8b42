// Kernels specialised at load time for one model's shapes: the decode
// matmul (GEMV) with its input width, row count and launch shape fixed at
// compile time (loops fully unrolled, a whole row's weight loads in flight
// before the math), and RMSNorm with its width fixed (each row read once,
// held in registers). They are compiled by NVRTC, the CUDA runtime compiler,
// which is opened at run time (libnvrtc.so.*): without it the generic ops of
// kernels_gpu.h run and nothing else changes.
//
// The compile is real work a cold GPU server repeats on every boot (seconds
// for a model's set); the compiled module lives in the process's CUDA
// context, so a snapshot keeps it and a restored replica never compiles.
//
// Compiling needs no GPU (tests run it on the CI machine); loading and
// running need one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hotboot/kernels_gpu.h"
#include "hotboot/status.h"

namespace hotboot::kernels::gpu {

struct JitSpec {
  int arch = 90;            // compute capability, major * 10 + minor (sm_90: H100)
  std::vector<int> gemv_k;  // input widths of the decode matmuls; each a multiple of 8, <= 65536
  int norm_n = 0;           // RMSNorm width (0: none); <= 16384
};

struct JitImage {
  JitSpec spec;
  std::string cubin;          // an ELF for sm_<arch>
  std::string log;            // the compiler's log (warnings; empty when quiet)
  std::string nvrtc;          // which NVRTC compiled it: "12.4 (/usr/local/cuda/lib64/libnvrtc.so)"
  double compile_ms = 0;
  int kernels = 0;            // entry points in the image
};

// The CUDA C++ source compiled for `spec` (for the record, and for tests).
std::string JitSource(const JitSpec& spec);

// Compiles the kernels for `spec`. `library` names the NVRTC to open; empty:
// $HOTBOOT_NVRTC, then the usual sonames and CUDA install paths. Errors:
// InvalidArgument (a width out of bounds), NotFound (no NVRTC here: the
// generic ops remain), Internal (the compiler failed; its log is in the message).
Result<JitImage> JitCompile(const JitSpec& spec, const std::string& library = "");

// A compiled image loaded into the current device's context.
class JitKernels {
 public:
  static Result<std::unique_ptr<JitKernels>> Load(const JitImage& image);
  ~JitKernels();
  JitKernels(const JitKernels&) = delete;
  JitKernels& operator=(const JitKernels&) = delete;

  // As gpu::Matmul / gpu::RmsNorm; a shape the image was not compiled for
  // (or unaligned pointers) runs the generic op.
  Status Matmul(const float* x, int m, int k, const uint16_t* w, int n, float* y, Stream s) const;
  Status RmsNorm(const float* x, const float* w, int rows, int n, float eps, float* out, Stream s) const;

  const JitSpec& spec() const { return spec_; }

 private:
  JitKernels() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  JitSpec spec_;
};

}  // namespace hotboot::kernels::gpu
