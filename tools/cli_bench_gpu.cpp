// `hotboot bench gpu`: how fast the cooperative restore streams weights to
// the GPU (DeviceWeights: parallel reads, pinned staging, several streams)
// against the pinned host-to-device bandwidth measured in the same run: a
// ceiling for the upload (the most it could reach), not a floor.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/gpu_memory.h"

namespace hotboot::cli {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

double Seconds(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Pinned host memory to device memory, `bytes` in `chunk` pieces spread over
// every stream: the ceiling an upload from host memory can reach.
Result<double> PinnedH2D(gpu::Device& dev, size_t bytes, size_t chunk, int repeat) {
  HB_ASSIGN_OR_RETURN(void* host, dev.AllocPinned(bytes));
  std::memset(host, 1, bytes);
  const size_t g = dev.Granularity();
  const size_t mapped = (bytes + g - 1) / g * g;
  auto va = dev.Reserve(mapped);
  Status st = va.ok() ? dev.Map(*va, mapped) : va.status();
  double best = 0;
  for (int r = 0; st.ok() && r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<int> events;
    int i = 0;
    for (size_t off = 0; st.ok() && off < bytes; off += chunk, ++i) {
      const int s = i % dev.Streams();
      st = dev.CopyToDeviceAsync(*va + off, static_cast<char*>(host) + off, std::min(chunk, bytes - off), s);
    }
    for (int s = 0; st.ok() && s < dev.Streams(); ++s) {
      auto ev = dev.Record(s);
      st = ev.ok() ? dev.Wait(*ev) : ev.status();
    }
    best = std::max(best, static_cast<double>(bytes) / Seconds(t0) / 1e9);
  }
  if (va.ok()) {
    dev.Unmap(*va, mapped);
    dev.FreeReservation(*va, mapped);
  }
  dev.FreePinned(host, bytes);
  if (!st.ok()) return st;
  return best;
}

// Pageable host memory to pinned host memory with `threads` memcpy threads:
// the ceiling of the staging copy that the pread, mmap and populate modes
// make from the page cache (the register mode has no such copy).
Result<double> HostCopy(gpu::Device& dev, size_t bytes, int threads, int repeat) {
  HB_ASSIGN_OR_RETURN(void* pinned, dev.AllocPinned(bytes));
  std::vector<char> pageable(bytes, 1);
  double best = 0;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    const size_t slice = (bytes + static_cast<size_t>(threads) - 1) / static_cast<size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t off = std::min(bytes, slice * static_cast<size_t>(t));
        std::memcpy(static_cast<char*>(pinned) + off, pageable.data() + off, std::min(slice, bytes - off));
      });
    }
    for (auto& t : ts) t.join();
    best = std::max(best, static_cast<double>(bytes) / Seconds(t0) / 1e9);
  }
  dev.FreePinned(pinned, bytes);
  return best;
}

struct GpuBenchArgs {
  std::string weights;
  int size_mib = 2048;
  int device = 0;
  int streams = 8;
  int repeat = 3;
  size_t chunk_mib = gpu::UploadOptions{}.chunk_bytes >> 20;
  int buffers = gpu::UploadOptions{}.buffers;
  int readers = gpu::UploadOptions{}.readers;
  std::string workdir = "/dev/shm";
  bool sweep = false;
  std::string mode = gpu::ReadModeName(gpu::UploadOptions{}.mode);
  bool json_out = false;
};

// Best of `repeat` re-uploads of resident weights with options `o`.
Result<gpu::UploadStats> BestUpload(gpu::DeviceWeights& w, const std::string& path, const gpu::UploadOptions& o,
                                    int repeat) {
  gpu::UploadStats best;
  for (int r = 0; r < repeat; ++r) {
    HB_RETURN_IF_ERROR(w.Release());
    HB_ASSIGN_OR_RETURN(gpu::UploadStats up, w.Restore(path, o));
    if (up.GBps() > best.GBps()) best = up;
  }
  return best;
}

json StatsJson(const gpu::UploadStats& s, const gpu::UploadOptions& o) {
  return {{"mode", s.mode},
          {"readers", o.readers},
          {"chunk_bytes", o.chunk_bytes},
          {"buffers", o.buffers},
          {"upload_GBps", s.GBps()},
          {"seconds", s.seconds},
          {"staging_ms", s.staging_seconds * 1e3},
          {"staging_buffers", s.staging_buffers},
          {"read_GBps_per_reader", s.read_seconds > 0 ? static_cast<double>(s.bytes) / s.read_seconds / 1e9 : 0},
          {"copy_wait_ms", s.copy_wait_seconds * 1e3}};
}

int RunBenchGpu(const GpuBenchArgs& a) {
  auto dev = gpu::OpenCudaDevice(a.device, a.streams);
  if (!dev.ok()) return Fail(dev.status().Prefixed("bench gpu needs a CUDA device"));
  std::string path = a.weights;
  bool generated = false;
  if (path.empty()) {
    // Random bf16-like bytes: upload speed does not depend on content.
    path = a.workdir + "/hotboot-bench-gpu." + std::to_string(::getpid());
    std::ofstream out(path, std::ios::binary);
    std::mt19937_64 rng(42);
    std::vector<uint64_t> block(1 << 17);
    for (int mib = 0; mib < a.size_mib && out; ++mib) {
      for (auto& w : block) w = rng();
      out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(block.size() * 8));
    }
    if (!out) return Fail(IoError("cannot write " + path));
    generated = true;
  }
  struct Cleanup {
    std::string p;
    bool on;
    ~Cleanup() {
      if (on) fs::remove(p);
    }
  } cleanup{path, generated};
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec || size == 0) return Fail(NotFound("weights file " + path + " is missing or empty"));
  {  // warm the page cache: the upload reads what a restore just extracted
    std::ifstream in(path, std::ios::binary);
    std::vector<char> buf(8 << 20);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    }
  }
  gpu::UploadOptions o;
  o.chunk_bytes = a.chunk_mib << 20;
  o.buffers = a.buffers;
  o.readers = a.readers;
  gpu::ParseReadMode(a.mode, &o.mode);  // checked by the option
  Note("measuring pinned host-to-device bandwidth on " + (*dev)->Name());
  auto ceiling = PinnedH2D(**dev, std::min<uint64_t>(size, 1ull << 30), o.chunk_bytes, a.repeat);
  if (!ceiling.ok()) return Fail(ceiling.status());
  json host_copy = json::object();
  for (int threads : {1, 8, 16}) {
    auto hc = HostCopy(**dev, std::min<uint64_t>(size, 1ull << 30), threads, a.repeat);
    if (!hc.ok()) return Fail(hc.status());
    host_copy[std::to_string(threads)] = *hc;
  }
  Note("uploading " + HumanBytes(size) + " of weights " + std::to_string(a.repeat) + " times");
  auto w = gpu::DeviceWeights::Load(**dev, path, {0}, {size}, o);
  if (!w.ok()) return Fail(w.status());
  auto up = BestUpload(*w, path, o, a.repeat);
  if (!up.ok()) return Fail(up.status());
  const double best = up->GBps();
  const double ratio = *ceiling > 0 ? best / *ceiling : 0;
  const json upload = StatsJson(*up, o);
  json sweep = json::array();
  if (a.sweep) {
    for (auto mode : gpu::kReadModes) {
      for (int readers : {8, 16}) {
        for (size_t chunk_mib : {1, 4, 16}) {
          gpu::UploadOptions so;
          so.mode = mode;
          so.readers = readers;
          so.chunk_bytes = chunk_mib << 20;
          so.buffers = 2 * readers;
          auto r = BestUpload(*w, path, so, a.repeat);
          if (!r.ok()) return Fail(r.status());
          sweep.push_back(StatsJson(*r, so));
          Note("sweep: " + r->mode + ", " + std::to_string(readers) + " readers, " + std::to_string(chunk_mib) +
               " MiB chunks: " + std::to_string(r->GBps()) + " GB/s");
        }
      }
    }
  }
  if (a.json_out) {
    json j = {{"device", (*dev)->Name()},  {"weights_bytes", size},      {"pinned_h2d_GBps", *ceiling},
              {"upload_GBps", best},       {"upload_vs_pinned", ratio}, {"streams", (*dev)->Streams()},
              {"upload", upload}, {"host_copy_GBps_by_threads", host_copy}};
    if (a.sweep) j["sweep"] = sweep;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%-34s %s\n", "device", (*dev)->Name().c_str());
    std::printf("%-34s %s\n", "weights", HumanBytes(size).c_str());
    std::printf("%-34s %.2f GB/s\n", "pinned host->device (ceiling)", *ceiling);
    for (const auto& [threads, gbps] : host_copy.items()) {
      std::printf("%-34s %.2f GB/s\n", ("host memcpy to pinned, " + threads + " threads").c_str(), gbps.get<double>());
    }
    std::printf("%-34s %.2f GB/s (%.0f%% of the ceiling)\n", "weights upload (file->device)", best, 100 * ratio);
    std::printf("%-34s %.1f ms for %d buffers (overlapped)\n", "  pinned staging allocation", up->staging_seconds * 1e3,
                up->staging_buffers);
    std::printf("%-34s %.2f GB/s per reader, %d readers\n", "  file reads",
                upload["read_GBps_per_reader"].get<double>(), o.readers);
    std::printf("%-34s %.1f ms\n", "  waiting for copies", up->copy_wait_seconds * 1e3);
    for (const auto& r : sweep) {
      std::printf("  sweep: %-9s %2d readers, %3zu MiB chunks: %.2f GB/s\n", r["mode"].get<std::string>().c_str(),
                  r["readers"].get<int>(), r["chunk_bytes"].get<size_t>() >> 20, r["upload_GBps"].get<double>());
    }
  }
  return kExitOk;
}

}  // namespace

void AddBenchGpu(CLI::App& bench, std::function<int()>* run) {
  auto a = std::make_shared<GpuBenchArgs>();
  CLI::App* g = bench.add_subcommand(
      "gpu", "Weight upload to the GPU (cooperative restore) vs the pinned host-to-device bandwidth");
  g->footer(
      "Measures the pinned host->device copy bandwidth (1 GiB or the file's size, in chunks over\n"
      "every stream: the ceiling for an upload from host memory, which the upload can at best\n"
      "reach) and host memcpy into pinned memory on 1, 8 and 16 threads (the ceiling of the\n"
      "staging copy), then uploads a weights file (page cache warm, as right after a restore\n"
      "extracted it) with DeviceWeights: parallel reads into pinned staging buffers, copies on\n"
      "several streams, into one reserved device range; best of --repeat. Needs a CUDA GPU.");
  g->add_option("--weights", a->weights, "Weights file to upload (default: --size-mib of random bytes in --workdir)");
  g->add_option("--size-mib", a->size_mib, "Size of the generated file")->check(CLI::Range(1, 1 << 20));
  g->add_option("--device", a->device, "CUDA device ordinal");
  g->add_option("--streams", a->streams, "Copy streams")->check(CLI::Range(1, 64));
  g->add_option("--chunk-mib", a->chunk_mib, "Bytes per read and copy, MiB")->check(CLI::Range(1, 1024));
  g->add_option("--buffers", a->buffers, "Pinned staging buffers")->check(CLI::Range(1, 256));
  g->add_option("--readers", a->readers, "Reader threads")->check(CLI::Range(1, 256));
  g->add_option("--repeat", a->repeat, "Runs; the fastest counts")->check(CLI::Range(1, 100));
  g->add_option("--workdir", a->workdir, "Where the generated file goes");
  g->add_flag("--sweep", a->sweep, "Also try every --mode with 8 and 16 readers and 1, 4, 16 MiB chunks (buffers: two per reader)");
  g->add_option("--mode", a->mode,
                "How bytes reach the copy engine: pread or mmap (into pinned staging), populate (mmap, "
                "pages faulted in per chunk), register (page-lock the file's pages, no staging)")
      ->check(CLI::IsMember({"pread", "mmap", "populate", "register"}));
  g->add_flag("--json", a->json_out, "Print the result as JSON");
  *run = [a, g]() { return g->parsed() ? RunBenchGpu(*a) : -1; };
}

}  // namespace hotboot::cli
