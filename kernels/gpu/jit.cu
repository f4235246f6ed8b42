// Load-time specialised kernels (kernels_jit.h): CUDA C++ generated for a
// model's shapes, compiled by NVRTC opened with dlopen, loaded as a CUDA
// library and launched through the runtime.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nvrtc.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "common.cuh"
#include "hotboot/kernels_jit.h"

namespace hotboot::kernels::gpu {
namespace {

constexpr int kMaxGemvRows = 8;  // decode batches the GEMV entry points cover
constexpr int kMaxK = 65536, kMaxNorm = 16384;

// The kernels, for any K/M/N; entry points below instantiate them. Kept in
// step with matmul.cu and rmsnorm.cu: same reduction order, so the results
// match the generic ops'.
constexpr const char* kTemplates = R"CUDA(
typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp per output column; the row of W in 16-byte loads, up to 8 per
// lane issued before any arithmetic so that the whole row is in flight.
template <int K, int M>
__device__ __forceinline__ void Gemv(const float* __restrict__ x, const u16* __restrict__ w, int n,
                                     float* __restrict__ y) {
  constexpr int kVec = K / 8, kIters = (kVec + 31) / 32, kBatch = kIters < 8 ? kIters : 8;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= n) return;
  const uint4* w4 = reinterpret_cast<const uint4*>(w + static_cast<long long>(warp) * K);
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
#pragma unroll 1
  for (int b = 0; b < kIters; b += kBatch) {  // a rolled loop of unrolled batches: compile time stays short
    uint4 p[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = lane + 32 * (b + j);
      p[j] = (b + j < kIters && (kVec % 32 == 0 || i < kVec)) ? __ldg(w4 + i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = lane + 32 * (b + j);
      if (b + j >= kIters || (kVec % 32 != 0 && i >= kVec)) continue;
      const u32 words[4] = {p[j].x, p[j].y, p[j].z, p[j].w};
      float wf[8];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        wf[2 * q] = __uint_as_float(words[q] << 16);
        wf[2 * q + 1] = __uint_as_float(words[q] & 0xffff0000u);
      }
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const float4* x4 = reinterpret_cast<const float4*>(x + r * K + 8 * i);
        const float4 a = x4[0], c = x4[1];
        acc[r] += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] + c.x * wf[4] + c.y * wf[5] + c.z * wf[6] +
                  c.w * wf[7];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float v = WarpSum(acc[r]);
    if (lane == 0) y[static_cast<long long>(r) * n + warp] = v;
  }
}

// One 256-thread block per row; the row is read once into registers.
template <int N>
__device__ __forceinline__ void Norm(const float* x, const float* w, float eps, float* out) {
  constexpr int kThreads = 256, kPer = (N + kThreads - 1) / kThreads;
  __shared__ float red[32];
  const float* xr = x + static_cast<long long>(blockIdx.x) * N;
  float* o = out + static_cast<long long>(blockIdx.x) * N;
  float v[kPer];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    v[j] = (N % kThreads == 0 || i < N) ? xr[i] : 0.f;
    ss += v[j] * v[j];
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  ss = WarpSum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  ss = WarpSum(lane < kThreads / 32 ? red[lane] : 0.f);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(N) + eps);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (N % kThreads == 0 || i < N) o[i] = v[j] * inv * w[i];
  }
}
)CUDA";

std::string GemvName(int k, int m) { return "hb_gemv_k" + std::to_string(k) + "_m" + std::to_string(m); }
std::string NormName(int n) { return "hb_rmsnorm_n" + std::to_string(n); }

Status CheckSpec(const JitSpec& spec) {
  if (spec.arch < 50 || spec.arch > 200) return InvalidArgument("compute capability " + std::to_string(spec.arch));
  for (int k : spec.gemv_k) {
    if (k < 8 || k > kMaxK || k % 8 != 0) {
      return InvalidArgument("GEMV width " + std::to_string(k) + " (a multiple of 8 from 8 to 65536)");
    }
  }
  if (spec.norm_n < 0 || spec.norm_n > kMaxNorm) {
    return InvalidArgument("RMSNorm width " + std::to_string(spec.norm_n) + " (0 to 16384)");
  }
  if (spec.gemv_k.empty() && spec.norm_n == 0) return InvalidArgument("nothing to specialise");
  return Status();
}

std::set<int> Widths(const JitSpec& spec) { return {spec.gemv_k.begin(), spec.gemv_k.end()}; }

// NVRTC's entry points, resolved once from whichever library opened.
struct Nvrtc {
  std::string path, version;
  decltype(&nvrtcGetErrorString) error = nullptr;
  decltype(&nvrtcCreateProgram) create = nullptr;
  decltype(&nvrtcCompileProgram) compile = nullptr;
  decltype(&nvrtcGetProgramLogSize) log_size = nullptr;
  decltype(&nvrtcGetProgramLog) log = nullptr;
  decltype(&nvrtcGetCUBINSize) cubin_size = nullptr;
  decltype(&nvrtcGetCUBIN) cubin = nullptr;
  decltype(&nvrtcDestroyProgram) destroy = nullptr;
};

// NVRTC opens its builtins (libnvrtc-builtins.so.MAJOR.MINOR) by name when it
// compiles, so a toolkit that is not on the loader's path (a CUDA toolkit at
// /usr/local/cuda without an ld.so.conf entry, as when a container or a CI root
// has it bound in) fails there with NVRTC_ERROR_BUILTIN_OPERATION_FAILURE even
// though NVRTC itself was found. Loading the builtins from NVRTC's own directory
// first lets that lookup find them by their soname. Best effort: when they are
// not there, the compile still reports NVRTC's own error.
void PreloadBuiltins(const void* nvrtc_symbol, const std::string& version) {
  Dl_info info{};
  if (version.empty() || ::dladdr(nvrtc_symbol, &info) == 0 || info.dli_fname == nullptr) return;
  std::string dir = info.dli_fname;
  const size_t slash = dir.rfind('/');
  if (slash == std::string::npos) return;
  dir.resize(slash + 1);
  (void)::dlopen((dir + "libnvrtc-builtins.so." + version).c_str(), RTLD_NOW | RTLD_LOCAL);
}

Result<Nvrtc> OpenNvrtc(const std::string& library) {
  std::vector<std::string> names;
  const char* env = std::getenv("HOTBOOT_NVRTC");
  if (!library.empty()) {
    names = {library};
  } else if (env && *env) {
    if (std::string(env) == "off") return NotFound("NVRTC turned off (HOTBOOT_NVRTC=off)");
    names = {env};
  } else {
    names = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "/usr/local/cuda/lib64/libnvrtc.so",
             "/usr/local/cuda/lib/libnvrtc.so"};
  }
  void* h = nullptr;
  std::string tried, path;
  for (const auto& n : names) {
    h = ::dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h) {
      path = n;
      break;
    }
    tried += (tried.empty() ? "" : ", ") + n;
  }
  if (!h) return NotFound("no NVRTC (CUDA runtime compiler) here; tried " + tried + "; set HOTBOOT_NVRTC to its path");
  Nvrtc r;
  r.path = path;
  bool ok = true;
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(h, name));
    ok = ok && fn != nullptr;
  };
  decltype(&nvrtcVersion) version = nullptr;
  sym(version, "nvrtcVersion");
  sym(r.error, "nvrtcGetErrorString");
  sym(r.create, "nvrtcCreateProgram");
  sym(r.compile, "nvrtcCompileProgram");
  sym(r.log_size, "nvrtcGetProgramLogSize");
  sym(r.log, "nvrtcGetProgramLog");
  sym(r.cubin_size, "nvrtcGetCUBINSize");
  sym(r.cubin, "nvrtcGetCUBIN");
  sym(r.destroy, "nvrtcDestroyProgram");
  if (!ok)
    return NotFound(path +
                    " lacks the NVRTC entry points hotboot uses (NVRTC "
                    "11.1 or later needed)");
  int major = 0, minor = 0;
  if (version(&major, &minor) == NVRTC_SUCCESS) r.version = std::to_string(major) + "." + std::to_string(minor);
  PreloadBuiltins(reinterpret_cast<const void*>(r.compile), r.version);
  return r;
}

}  // namespace

std::string JitSource(const JitSpec& spec) {
  std::string s =
      "// hotboot: kernels specialised for one model's shapes "
      "(kernels_jit.h)\n";
  s += kTemplates;
  for (int k : Widths(spec)) {
    for (int m = 1; m <= kMaxGemvRows; ++m) {
      s += "extern \"C\" __global__ void __launch_bounds__(256) " + GemvName(k, m) +
           "(const float* __restrict__ x, const u16* __restrict__ w, int n, "
           "float* __restrict__ y) { Gemv<" +
           std::to_string(k) + ", " + std::to_string(m) + ">(x, w, n, y); }\n";
    }
  }
  if (spec.norm_n > 0) {
    s += "extern \"C\" __global__ void __launch_bounds__(256) " + NormName(spec.norm_n) +
         "(const float* x, const float* w, float eps, float* out) { Norm<" + std::to_string(spec.norm_n) +
         ">(x, w, eps, out); }\n";
  }
  return s;
}

Result<JitImage> JitCompile(const JitSpec& spec, const std::string& library) {
  HB_RETURN_IF_ERROR(CheckSpec(spec));
  static std::mutex mu;
  static std::map<std::string, Result<Nvrtc>> opened;  // NVRTC is opened once per name, never closed
  Result<Nvrtc> nv = NotFound("");
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = opened.find(library);
    if (it == opened.end()) it = opened.emplace(library, OpenNvrtc(library)).first;
    nv = it->second;
  }
  HB_RETURN_IF_ERROR(nv.status());
  const auto t0 = std::chrono::steady_clock::now();
  const std::string src = JitSource(spec);
  nvrtcProgram prog = nullptr;
  nvrtcResult rc = nv->create(&prog, src.c_str(), "hotboot_specialised.cu", 0, nullptr, nullptr);
  if (rc != NVRTC_SUCCESS) return Internal(std::string("nvrtcCreateProgram: ") + nv->error(rc));
  const std::string sm = "sm_" + std::to_string(spec.arch), arch = "--gpu-architecture=" + sm;
  const char* opts[] = {arch.c_str(), "-std=c++17", "--use_fast_math"};
  rc = nv->compile(prog, 3, opts);
  JitImage img;
  img.spec = spec;
  img.nvrtc = nv->version + " (" + nv->path + ")";
  size_t n = 0;
  if (nv->log_size(prog, &n) == NVRTC_SUCCESS && n > 1) {
    img.log.resize(n);
    nv->log(prog, img.log.data());
    img.log.resize(n - 1);  // the terminating NUL
  }
  if (rc == NVRTC_SUCCESS && nv->cubin_size(prog, &n) == NVRTC_SUCCESS && n > 0) {
    img.cubin.resize(n);
    rc = nv->cubin(prog, img.cubin.data());
  } else if (rc == NVRTC_SUCCESS) {
    rc = NVRTC_ERROR_INVALID_OPTION;  // no cubin for this target
  }
  nv->destroy(&prog);
  if (rc != NVRTC_SUCCESS) {
    return Internal("NVRTC " + img.nvrtc + " failed for " + sm + ": " + nv->error(rc) +
                    (img.log.empty() ? "" : "\n" + img.log));
  }
  img.compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  img.kernels = static_cast<int>(Widths(spec).size()) * kMaxGemvRows + (spec.norm_n > 0 ? 1 : 0);
  return img;
}

struct JitKernels::Impl {
  cudaLibrary_t lib = nullptr;
  std::map<std::pair<int, int>, cudaKernel_t> gemv;  // (k, m)
  cudaKernel_t norm = nullptr;
};

JitKernels::~JitKernels() {
  if (impl_ && impl_->lib) cudaLibraryUnload(impl_->lib);
}

Result<std::unique_ptr<JitKernels>> JitKernels::Load(const JitImage& image) {
  HB_RETURN_IF_ERROR(CheckSpec(image.spec));
  if (image.cubin.size() < 4 || image.cubin.compare(0, 4,
                                                    "\x7f"
                                                    "ELF") != 0) {
    return InvalidArgument("not a compiled image (no ELF cubin)");
  }
  std::unique_ptr<JitKernels> k(new JitKernels());
  k->spec_ = image.spec;
  k->impl_ = std::make_unique<Impl>();
  auto cuda = [](cudaError_t e, const std::string& what) {
    if (e != cudaSuccess) cudaGetLastError();  // handled here: not for the next launch to report
    return e == cudaSuccess ? Status()
                            : Internal(what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
  };
  HB_RETURN_IF_ERROR(
      cuda(cudaLibraryLoadData(&k->impl_->lib, image.cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
           "loading the specialised kernels"));
  for (int w : Widths(image.spec)) {
    for (int m = 1; m <= kMaxGemvRows; ++m) {
      cudaKernel_t f = nullptr;
      HB_RETURN_IF_ERROR(cuda(cudaLibraryGetKernel(&f, k->impl_->lib, GemvName(w, m).c_str()), GemvName(w, m)));
      k->impl_->gemv[{w, m}] = f;
    }
  }
  if (image.spec.norm_n > 0) {
    const std::string name = NormName(image.spec.norm_n);
    HB_RETURN_IF_ERROR(cuda(cudaLibraryGetKernel(&k->impl_->norm, k->impl_->lib, name.c_str()), name));
  }
  return std::move(k);  // nvcc wants the conversion spelled out
}

Status JitKernels::Matmul(const float* x, int m, int k, const uint16_t* w, int n, float* y, Stream s) const {
  const auto it = impl_->gemv.find({k, m});
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  if (it == impl_->gemv.end() || !aligned || n <= 0) return gpu::Matmul(x, m, k, w, n, y, s);
  void* args[] = {&x, &w, &n, &y};
  const int warps_per_block = 8;
  cudaLaunchKernel(reinterpret_cast<const void*>(it->second), dim3((n + warps_per_block - 1) / warps_per_block),
                   dim3(32 * warps_per_block), args, 0, detail::S(s));
  return detail::Launched("matmul (specialised)");
}

Status JitKernels::RmsNorm(const float* x, const float* w, int rows, int n, float eps, float* out, Stream s) const {
  if (!impl_->norm || n != spec_.norm_n || rows <= 0) return gpu::RmsNorm(x, w, rows, n, eps, out, s);
  void* args[] = {&x, &w, &eps, &out};
  cudaLaunchKernel(reinterpret_cast<const void*>(impl_->norm), dim3(rows), dim3(256), args, 0, detail::S(s));
  return detail::Launched("rmsnorm (specialised)");
}

}  // namespace hotboot::kernels::gpu
