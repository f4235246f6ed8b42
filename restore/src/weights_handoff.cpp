// The restore-side weights handoff (issue 15, DESIGN.md "GPU at scale"): the
// restore process uploads a GPU snapshot's weights into shareable device
// memory while CRIU and the driver restore the rest, then hands that memory
// to the server, which maps it at its reserved addresses (no copy there).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"

namespace hotboot {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

}  // namespace

const char* GpuWeightsModeName(GpuWeightsMode m) {
  switch (m) {
    case GpuWeightsMode::kAuto: return "auto";
    case GpuWeightsMode::kHandoff: return "handoff";
    case GpuWeightsMode::kServer: return "server";
  }
  return "?";
}

bool ParseGpuWeightsMode(std::string_view s, GpuWeightsMode* m) {
  for (GpuWeightsMode x : {GpuWeightsMode::kAuto, GpuWeightsMode::kHandoff, GpuWeightsMode::kServer}) {
    if (s == GpuWeightsModeName(x)) {
      *m = x;
      return true;
    }
  }
  return false;
}

json GpuWeightsReport::ToJson() const {
  json j = {{"mode", mode},         {"source", source},           {"file", file},
            {"bytes", bytes},       {"upload_ms", upload_ms},     {"GBps", GBps},
            {"device_open_ms", device_open_ms}, {"memory_ms", memory_ms},
            {"staging_ms", staging_ms},         {"copy_wait_ms", copy_wait_ms},
            {"upload_mode", upload_mode}};
  j["extracted"] = extracted;
  if (!reason.empty()) j["reason"] = reason;
  return j;
}

// What the thread shares with the restore: two milestones (viable, done)
// under one mutex, and what it made.
struct WeightsHandoff::State {
  std::mutex mu;
  std::condition_variable cv;
  bool viable_known = false, done = false;
  Status viable_status, status;
  std::unique_ptr<gpu::Device> dev;
  gpu::ShareableWeights mem;
  int fd = -1;
  gpu::UploadStats upload;
  double device_open_ms = 0, memory_ms = 0, wall_ms = 0;
  std::thread thread;
};

std::unique_ptr<WeightsHandoff> WeightsHandoff::Start(WeightsHandoffPlan plan, const snapfile::SnapshotReader* reader,
                                                      OpenDeviceFn open_device) {
  std::unique_ptr<WeightsHandoff> h(new WeightsHandoff());
  h->plan_ = std::move(plan);
  h->st_ = std::make_unique<State>();
  if (!open_device) open_device = [](int ordinal) { return gpu::OpenCudaDevice(ordinal); };
  h->st_->thread = std::thread([p = h.get(), reader, open = std::move(open_device)] { p->Run(reader, open); });
  return h;
}

void WeightsHandoff::Run(const snapfile::SnapshotReader* reader, OpenDeviceFn open_device) {
  State& s = *st_;
  const auto t0 = Clock::now();
  auto milestone = [&](bool done, const Status& st) {
    std::lock_guard l(s.mu);
    if (!s.viable_known) {
      s.viable_known = true;
      s.viable_status = st;
    }
    if (done) {
      s.done = true;
      s.status = st;
      s.wall_ms = MsSince(t0);
      // Once it failed nothing is held: no memory, no context beside the
      // rest of the restore.
      if (!st.ok()) {
        s.mem.Reset();
        s.dev.reset();
      }
    }
    s.cv.notify_all();
  };
  // The device and the memory first: without them the restore falls back
  // to the server's upload (nothing was uploaded).
  auto dev = open_device(plan_.ordinal);
  s.device_open_ms = MsSince(t0);
  if (!dev.ok()) {
    milestone(true, dev.status().Prefixed("no CUDA device " + std::to_string(plan_.ordinal) + " in the restore process"));
    return;
  }
  s.dev = std::move(dev).value();
  const auto tm = Clock::now();
  auto mem = gpu::ShareableWeights::Create(*s.dev, plan_.bytes);
  s.memory_ms = MsSince(tm);
  if (!mem.ok()) {
    milestone(true, mem.status().Prefixed("no shareable device memory of " + std::to_string(plan_.bytes) + " bytes"));
    return;
  }
  s.mem = std::move(mem).value();
  milestone(false, Status::Ok());

  // The upload: a failure here fails the restore (the bytes are bad or the
  // device failed), it is not a reason to fall back.
  Result<gpu::UploadStats> up = Status::Ok();
  gpu::UploadOptions uo = plan_.upload;
  if (plan_.cache_fd >= 0) {
    up = gpu::UploadFromFile(*s.dev, plan_.cache_fd, {gpu::Region{0, plan_.bytes, s.mem.base()}}, uo);
    if (!up.ok()) up = up.status().Prefixed("uploading the weights directory's " + plan_.file);
  } else if (!reader) {
    up = Internal("weights handoff of " + plan_.file + ": neither the weights directory's file nor the snapshot");
  } else {
    // Decoding is the work here: a reader per hardware thread.
    uo.readers = std::max<int>(uo.readers, static_cast<int>(std::thread::hardware_concurrency()));
    up = gpu::UploadSection(*s.dev, *reader, plan_.section, s.mem.base(), uo);
    if (!up.ok()) up = up.status().Prefixed("uploading section " + plan_.section + " of the snapshot");
  }
  if (up.ok() && up->bytes != plan_.bytes) {
    up = Corrupt("weights handoff of " + plan_.file + ": uploaded " + std::to_string(up->bytes) + " bytes, the " +
                 "manifest says " + std::to_string(plan_.bytes));
  }
  if (!up.ok()) {
    milestone(true, up.status());
    return;
  }
  s.upload = *up;
  auto fd = s.mem.ExportFd();
  if (!fd.ok()) {
    milestone(true, fd.status().Prefixed("exporting the weights' device memory"));
    return;
  }
  // Only the server takes it (pidfd_getfd): never a child CRIU starts.
  ::fcntl(*fd, F_SETFD, FD_CLOEXEC);
  {
    std::lock_guard l(s.mu);
    s.fd = *fd;
  }
  milestone(true, Status::Ok());
}

WeightsHandoff::~WeightsHandoff() {
  if (st_ && st_->thread.joinable()) st_->thread.join();
  Finish();
  if (plan_.cache_fd >= 0) ::close(plan_.cache_fd);
}

Status WeightsHandoff::WaitViable() {
  std::unique_lock l(st_->mu);
  st_->cv.wait(l, [&] { return st_->viable_known; });
  return st_->viable_status;
}

Status WeightsHandoff::Wait() {
  std::unique_lock l(st_->mu);
  st_->cv.wait(l, [&] { return st_->done; });
  return st_->status;
}

bool WeightsHandoff::viable() const {
  std::lock_guard l(st_->mu);
  return st_->viable_known && st_->viable_status.ok();
}

Status WeightsHandoff::UploadFailure() const {
  std::lock_guard l(st_->mu);
  if (st_->done && st_->viable_known && st_->viable_status.ok()) return st_->status;
  return Status::Ok();
}

json WeightsHandoff::DeviceWeightsJson() const {
  std::lock_guard l(st_->mu);
  return {{"pid", static_cast<int64_t>(::getpid())},
          {"fd", st_->fd},
          {"bytes", st_->mem.bytes()},
          {"file", plan_.file}};
}

void WeightsHandoff::Finish() {
  if (!st_) return;
  std::lock_guard l(st_->mu);
  if (st_->thread.joinable() && !st_->done) return;  // still running: the destructor finishes
  if (st_->fd >= 0) ::close(st_->fd);
  st_->fd = -1;
  st_->mem.Reset();
  st_->dev.reset();
}

GpuWeightsReport WeightsHandoff::Report() const {
  std::lock_guard l(st_->mu);
  GpuWeightsReport r;
  r.file = plan_.file;
  r.bytes = plan_.bytes;
  r.device_open_ms = st_->device_open_ms;
  r.extracted = extracted_;
  if (st_->done && st_->status.ok()) {
    r.mode = "handoff";
    r.source = plan_.cache_fd >= 0 ? "node_cache" : "snapshot";
    r.upload_ms = st_->upload.seconds * 1000;
    r.GBps = st_->upload.GBps();
    r.upload_mode = st_->upload.mode;
    r.memory_ms = st_->memory_ms;
    r.staging_ms = st_->upload.staging_seconds * 1000;
    r.copy_wait_ms = st_->upload.copy_wait_seconds * 1000;
  } else {
    r.mode = "server";
    r.reason = st_->done ? st_->status.message() : "the handoff did not finish";
  }
  return r;
}

double WeightsHandoff::wall_ms() const {
  std::lock_guard l(st_->mu);
  return st_->wall_ms;
}

gpu::DevicePtr WeightsHandoff::base() const {
  std::lock_guard l(st_->mu);
  return st_->mem.base();
}

int WeightsHandoff::exported_fd() const {
  std::lock_guard l(st_->mu);
  return st_->fd;
}

Result<bool> ImagesNameFile(const std::string& images_dir, const std::string& name) {
  if (name.empty()) return false;
  std::error_code ec;
  fs::directory_iterator it(images_dir, ec);
  if (ec) return IoError("list " + images_dir + ": " + ec.message());
  std::string buf;
  for (const auto& e : it) {
    const std::string f = e.path().filename().string();
    // The memory pages hold whatever the process had in memory (its own
    // copy of the path, say): they say nothing about what CRIU opens.
    if (f.rfind("pages-", 0) == 0 || !e.is_regular_file(ec)) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return ErrnoError("open " + e.path().string(), errno);
    // Streamed in 1 MiB reads, keeping the last name.size()-1 bytes so that
    // a name split across two reads is found.
    buf.clear();
    std::string chunk(1 << 20, '\0');
    for (;;) {
      const ssize_t n = ::read(fd, chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        return ErrnoError("read " + e.path().string(), err);
      }
      if (n == 0) break;
      buf.append(chunk.data(), static_cast<size_t>(n));
      if (buf.find(name) != std::string::npos) {
        ::close(fd);
        return true;
      }
      if (buf.size() >= name.size()) buf.erase(0, buf.size() - (name.size() - 1));
    }
    ::close(fd);
  }
  return false;
}

json AfterRestoreCommand(const std::string& host, int port, const ReplicaIdentity& id, const json* device_weights) {
  json cmd = {{"cmd", "after_restore"}, {"port", port},         {"host", host},
              {"instance", id.instance}, {"entropy", id.entropy}, {"seed", id.seed}};
  if (device_weights) cmd["device_weights"] = *device_weights;
  return cmd;
}

void CopyServerTimings(const json& reply, json* timings_ms) {
  if (!reply.is_object()) return;
  auto it = reply.find("timings_ms");
  if (it == reply.end() || !it->is_object()) return;
  int copied = 0;
  for (const auto& [k, v] : it->items()) {
    if (copied == 16) break;
    const bool name_ok = !k.empty() && k.size() <= 32 &&
                         std::all_of(k.begin(), k.end(), [](char c) { return (c >= 'a' && c <= 'z') || c == '_'; });
    if (!name_ok || !v.is_number()) continue;
    const double ms = v.get<double>();
    if (!std::isfinite(ms) || ms < 0) continue;
    (*timings_ms)["server_" + k] = ms;
    ++copied;
  }
}

}  // namespace hotboot
