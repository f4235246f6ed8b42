// The restore-side weights handoff (issue 15) against a memfd-backed fake
// device: the handoff puts the exact bytes at the device addresses from the
// weights directory and straight from the snapshot, a damaged chunk fails it
// and leaves nothing behind, no device falls back (auto) or refuses
// (--gpu-weights handoff), and after_restore carries device_weights only
// when the handoff happened.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include <xxhash.h>

#include "hotboot/builder.h"
#include "hotboot/restore.h"
#include "hotboot/snapshot_file.h"
#include "../host/fake_cuda.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// What a fake device still holds; shared so that a test can look after the
// device is gone.
struct FakeLedger {
  std::atomic<int> reservations{0}, mappings{0}, handles{0}, devices{0};
};

// Device addresses are host addresses: a reservation is a PROT_NONE mapping,
// shareable memory a memfd mapped MAP_SHARED over it (so an exported fd
// shows the bytes to whoever maps it), copies are memcpy.
class MemfdDevice : public gpu::Device {
 public:
  explicit MemfdDevice(std::shared_ptr<FakeLedger> l) : ledger_(std::move(l)) { ++ledger_->devices; }
  ~MemfdDevice() override { --ledger_->devices; }

  bool shareable = true;
  int fail_copy_at = -1;  // the n-th copy fails (a device error)

  std::string Name() override { return "memfd fake"; }
  size_t Granularity() override { return 64 << 10; }
  Result<gpu::DevicePtr> Reserve(size_t size) override {
    void* p = ::mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return ErrnoError("fake reserve", errno);
    ++ledger_->reservations;
    return reinterpret_cast<gpu::DevicePtr>(p);
  }
  Status FreeReservation(gpu::DevicePtr va, size_t size) override {
    ::munmap(reinterpret_cast<void*>(va), size);
    --ledger_->reservations;
    return Status::Ok();
  }
  Status Map(gpu::DevicePtr va, size_t size) override {
    void* p = ::mmap(reinterpret_cast<void*>(va), size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                     -1, 0);
    if (p == MAP_FAILED) return ErrnoError("fake map", errno);
    ++ledger_->mappings;
    return Status::Ok();
  }
  Status Unmap(gpu::DevicePtr va, size_t size) override {
    ::mmap(reinterpret_cast<void*>(va), size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    --ledger_->mappings;
    return Status::Ok();
  }
  Result<void*> AllocPinned(size_t size) override {
    void* p = std::aligned_alloc(4096, (size + 4095) / 4096 * 4096);
    if (!p) return Internal("fake pinned alloc");
    return p;
  }
  void FreePinned(void* p, size_t) override { std::free(p); }
  int Streams() override { return 2; }
  Status CopyToDeviceAsync(gpu::DevicePtr dst, const void* src, size_t n, int) override {
    if (copies_++ == fail_copy_at) return Internal("cuMemcpyHtoDAsync: CUDA_ERROR_ILLEGAL_ADDRESS (700) (injected)");
    std::memcpy(reinterpret_cast<void*>(dst), src, n);
    return Status::Ok();
  }
  Result<int> Record(int) override { return 0; }
  Status Wait(int) override { return Status::Ok(); }
  Status Sync() override { return Status::Ok(); }
  Status CopyToHost(void* dst, gpu::DevicePtr src, size_t n) override {
    std::memcpy(dst, reinterpret_cast<const void*>(src), n);
    return Status::Ok();
  }
  Status RegisterHost(const void*, size_t) override { return Unsupported("fake"); }
  Status UnregisterHost(const void*) override { return Unsupported("fake"); }

  Result<uint64_t> CreateShareable(size_t size) override {
    if (!shareable) return Unsupported("cuMemCreate: CUDA_ERROR_NOT_SUPPORTED (801): no POSIX fd handles (injected)");
    const int fd = ::memfd_create("fake-gpu-weights", MFD_CLOEXEC);
    if (fd < 0) return ErrnoError("memfd_create", errno);
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) return ErrnoError("ftruncate", errno);
    ++ledger_->handles;
    return static_cast<uint64_t>(fd);
  }
  Status MapHandle(gpu::DevicePtr va, size_t size, uint64_t h) override {
    void* p = ::mmap(reinterpret_cast<void*>(va), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                     static_cast<int>(h), 0);
    if (p == MAP_FAILED) return ErrnoError("fake map handle", errno);
    ++ledger_->mappings;
    return Status::Ok();
  }
  Result<int> ExportFd(uint64_t h) override {
    const int fd = ::fcntl(static_cast<int>(h), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return ErrnoError("fake export", errno);
    return fd;
  }
  Status ReleaseHandle(uint64_t h) override {
    ::close(static_cast<int>(h));
    --ledger_->handles;
    return Status::Ok();
  }

 private:
  std::shared_ptr<FakeLedger> ledger_;
  std::atomic<int> copies_{0};
};

// A PID no process has, below the kernel's last one: the restore's
// ReservePids then leaves the PID counter where it is.
int64_t FreePid() {
  long last = 0;
  std::ifstream("/proc/sys/kernel/ns_last_pid") >> last;
  for (long p = last > 300 ? last - 1 : 4000; p > 300; --p) {
    if (!fs::exists("/proc/" + std::to_string(p))) return p;
  }
  return 4000;
}

int OpenFds() {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) (void)e, ++n;
  return n;
}

// The bytes behind an exported fd, as the server would see them.
std::string ReadExported(int fd, size_t n) {
  void* p = ::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return "";
  std::string s(static_cast<const char*>(p), n);
  ::munmap(p, n);
  return s;
}

std::string Hash128(const std::string& b) {
  const XXH128_hash_t h = XXH3_128bits(b.data(), b.size());
  return snapfile::Digest128{h.high64, h.low64}.Hex();
}

// A port on 127.0.0.1 nobody listens on now (the kernel's pick): tests run
// in parallel, so none may count on a fixed one.
int UnusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// A minimal HTTP server on 127.0.0.1:port for the readiness check: the
// canary's tokens for POST /v1/generate, 200 {} for anything else.
class TinyHttp {
 public:
  explicit TinyHttp(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd_, 8) == 0;
    thread_ = std::thread([this] { Serve(); });
  }
  ~TinyHttp() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  bool ok() const { return ok_; }

 private:
  void Serve() {
    for (;;) {
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::string req;
      char buf[4096];
      size_t want = std::string::npos;
      while (want == std::string::npos || req.size() < want) {
        const ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
        const size_t end = req.find("\r\n\r\n");
        if (want == std::string::npos && end != std::string::npos) {
          size_t len = 0;
          const size_t cl = req.find("Content-Length: ");
          if (cl != std::string::npos && cl < end) len = std::stoul(req.substr(cl + 16));
          want = end + 4 + len;
        }
      }
      const std::string body = req.rfind("POST /v1/generate", 0) == 0 ? R"({"tokens":[1,2,3,4]})" : "{}";
      const std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
      (void)!::write(c, resp.data(), resp.size());
      ::close(c);
    }
  }
  int fd_ = -1;
  bool ok_ = false;
  std::thread thread_;
};

class FakeCriu : public Criu {
 public:
  std::function<void()> on_restore;
  // With a server script: Restore starts it as the "restored" replica on
  // the inherited pipes, else it fails.
  std::string server_script;
  int restores = 0;
  pid_t started = -1;

  Result<std::string> Version() override { return std::string("4.2.1"); }
  Status Dump(const CriuDumpOptions&) override { return Internal("not used"); }
  Result<pid_t> Restore(const CriuRestoreOptions& o) override {
    ++restores;
    if (on_restore) on_restore();
    if (server_script.empty()) return Internal("criu_restore failed (injected)");
    int fds[3] = {-1, -1, -1};
    for (const auto& [fd, key] : o.inherit_fds) {
      if (key == "pipe:[1]") fds[0] = fd;
      if (key == "pipe:[2]") fds[1] = fd;
      if (key == "pipe:[3]") fds[2] = fd;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setsid();
      for (int i = 0; i < 3; ++i) {
        if (fds[i] >= 0) ::dup2(fds[i], i);
      }
      ::execl("/bin/sh", "sh", "-c", server_script.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    started = pid;
    return pid;
  }
};

class WeightsHandoffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-handoff." + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "work");
    wdir_ = dir_ / "weights";
    // Random bytes (zstd keeps them as they are), not a multiple of the
    // fake's granularity, four chunks of 1 MiB.
    weights_.resize((3u << 20) + 12345);
    std::mt19937_64 rng(7);
    for (auto& c : weights_) c = static_cast<char>(rng());
    hash_ = Hash128(weights_);
    name_ = "gpu-weights-" + hash_ + ".bin";
    const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
    saved_env_ = old ? std::optional<std::string>(old) : std::nullopt;
    ::setenv("HOTBOOT_WEIGHTS_DIR", wdir_.c_str(), 1);
  }
  void TearDown() override {
    saved_env_ ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved_env_->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
    fs::remove_all(dir_);
  }

  // A cooperative GPU snapshot providing the weights file (the builder's
  // manifest and sections: the file as weights/<name>, packed bf16).
  Manifest GpuManifest() {
    HostInfo h = ReadHostInfo();
    Manifest m;
    m.host = ManifestHost{h.hostname, h.kernel, h.arch, h.cpu_model, h.cpus, {}};
    for (const auto& f : IsaFlags(h.cpu_flags)) m.host.isa_flags.push_back(f);
    m.criu.version = "4.2.1";
    m.process.command = {"/bin/true"};
    m.process.fd_keys = {"pipe:[1]", "pipe:[2]", "pipe:[3]"};
    m.process.pid_namespace = false;  // as a GPU build makes it (auto)
    m.process.pids = {FreePid()};     // free here (the restore checks)
    m.process.provided_files = {{name_, weights_.size(), "weights/" + name_, hash_}};
    m.process.weights_dir = wdir_.string();
    m.warm.digest = "0123456789abcdef0123456789abcdef";
    m.warm.canary.prompt = "hi";
    m.warm.canary.max_tokens = 4;
    m.warm.canary.tokens = {1, 2, 3, 4};
    const GpuDevice d = test::FakeCudaDriver::Device(0, kUuid);
    m.gpu.emplace();
    m.gpu->driver_version = "580.65.06";
    m.gpu->processes = 1;
    m.gpu->devices = {{d.ordinal, d.uuid, d.name, d.cc_major, d.cc_minor, d.total_bytes, 8ull << 30}};
    return m;
  }
  // `files_img`: what CRIU's files image holds (it names the weights file
  // when the server keeps it mapped).
  std::string WriteSnap(const Manifest& m, const std::string& files_img = "files") {
    const std::string p = (dir_ / "s.hbsnap").string();
    std::vector<snapfile::SectionSource> secs(4);
    secs[0].name = "criu/inventory.img";
    secs[0].bytes = "inventory";
    secs[1].name = "criu/files.img";
    secs[1].bytes = files_img;
    secs[2].name = "criu/pages-1.img";
    secs[2].bytes = "memory that names " + name_;  // never taken for a mapping
    secs[3].name = "weights/" + name_;
    secs[3].bytes = weights_;
    secs[3].elem = snapfile::ElemType::kBf16;
    snapfile::WriteOptions wo;
    wo.chunk_size = 1u << 20;
    EXPECT_TRUE(snapfile::WriteSnapshot(p, ToJson(m), secs, wo).ok());
    return p;
  }
  void PutInWeightsDir() {
    fs::create_directories(wdir_);
    fs::permissions(wdir_, fs::perms(0755));
    std::ofstream(wdir_ / name_, std::ios::binary) << weights_;
  }
  WeightsHandoffPlan Plan(int cache_fd) {
    WeightsHandoffPlan p;
    p.file = name_;
    p.section = "weights/" + name_;
    p.bytes = weights_.size();
    p.cache_fd = cache_fd;
    p.upload.readers = 2;
    p.upload.buffers = 4;
    return p;
  }
  OpenDeviceFn Opener(std::function<void(MemfdDevice&)> setup = nullptr) {
    return [this, setup](int ordinal) -> Result<std::unique_ptr<gpu::Device>> {
      opened_ordinal_ = ordinal;
      auto d = std::make_unique<MemfdDevice>(ledger_);
      if (setup) setup(*d);
      return std::unique_ptr<gpu::Device>(std::move(d));
    };
  }
  RestoreOptions Opts(const std::string& snap, int port) {
    RestoreOptions o;
    o.snapshot_path = snap;
    o.port = port;
    o.work_root = (dir_ / "work").string();
    o.verify_timeout = std::chrono::seconds(2);
    return o;
  }
  test::FakeCudaDriver Cuda() {
    test::FakeCudaDriver cuda;
    cuda.devices = {test::FakeCudaDriver::Device(0, "GPU-99999999-0000-0000-0000-000000000000", "NVIDIA A100"),
                    test::FakeCudaDriver::Device(1, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")};
    return cuda;
  }
  void ExpectNothingHeld() {
    EXPECT_EQ(ledger_->devices, 0) << "the device (its primary context) was closed";
    EXPECT_EQ(ledger_->handles, 0);
    EXPECT_EQ(ledger_->mappings, 0);
    EXPECT_EQ(ledger_->reservations, 0);
  }

  static constexpr const char* kUuid = "GPU-11111111-2222-3333-4444-555555555555";
  fs::path dir_, wdir_;
  std::string weights_, hash_, name_;
  std::optional<std::string> saved_env_;
  std::shared_ptr<FakeLedger> ledger_ = std::make_shared<FakeLedger>();
  int opened_ordinal_ = -1;
};

TEST_F(WeightsHandoffTest, FromTheWeightsDirectoryTheExactBytesAreExported) {
  PutInWeightsDir();
  const int fds_before = OpenFds();
  const int cache_fd = ::open((wdir_ / name_).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(cache_fd, 0);
  auto h = WeightsHandoff::Start(Plan(cache_fd), nullptr, Opener());
  ASSERT_TRUE(h->WaitViable().ok());
  Status st = h->Wait();
  ASSERT_TRUE(st.ok()) << st.ToString();
  // At the device addresses, and behind the exported fd (what the server maps).
  const std::string at_base(reinterpret_cast<const char*>(h->base()), weights_.size());
  EXPECT_TRUE(at_base == weights_);
  const json dw = h->DeviceWeightsJson();
  EXPECT_EQ(dw["pid"], ::getpid());
  EXPECT_EQ(dw["fd"], h->exported_fd());
  EXPECT_EQ(dw["bytes"], (weights_.size() + (64 << 10) - 1) / (64 << 10) * (64 << 10)) << "the image, granular";
  EXPECT_EQ(dw["file"], name_);
  EXPECT_TRUE(ReadExported(h->exported_fd(), weights_.size()) == weights_);
  EXPECT_NE(::fcntl(h->exported_fd(), F_GETFD) & FD_CLOEXEC, 0) << "no child CRIU starts inherits it";
  const GpuWeightsReport r = h->Report();
  EXPECT_EQ(r.mode, "handoff");
  EXPECT_EQ(r.source, "node_cache");
  EXPECT_EQ(r.bytes, weights_.size());
  EXPECT_GT(r.GBps, 0);
  EXPECT_TRUE(r.reason.empty());
  // What the server imported outlives our Finish: the memory is its now.
  const int imported = ::dup(h->exported_fd());
  h->Finish();
  EXPECT_EQ(h->exported_fd(), -1);
  ExpectNothingHeld();
  EXPECT_TRUE(ReadExported(imported, weights_.size()) == weights_);
  ::close(imported);
  h.reset();
  EXPECT_EQ(OpenFds(), fds_before) << "the cache fd and the export are closed";
}

TEST_F(WeightsHandoffTest, StraightFromTheSnapshotTheExactBytesAreExported) {
  const std::string snap = WriteSnap(GpuManifest());
  auto reader = snapfile::SnapshotReader::Open(snap);
  ASSERT_TRUE(reader.ok());
  auto h = WeightsHandoff::Start(Plan(-1), reader->get(), Opener());
  Status st = h->Wait();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(ReadExported(h->exported_fd(), weights_.size()) == weights_);
  EXPECT_EQ(h->Report().source, "snapshot");
  EXPECT_EQ(h->Report().upload_mode, "snapshot");
  h.reset();
  ExpectNothingHeld();
  EXPECT_FALSE(fs::exists(wdir_ / name_)) << "nothing on the host in between";
}

TEST_F(WeightsHandoffTest, ADamagedChunkFailsTheHandoffAndLeavesNothing) {
  const std::string snap = WriteSnap(GpuManifest());
  {
    auto reader = snapfile::SnapshotReader::Open(snap);
    ASSERT_TRUE(reader.ok());
    const snapfile::SectionInfo* sec = (*reader)->FindSection("weights/" + name_);
    ASSERT_NE(sec, nullptr);
    ASSERT_GE(sec->chunks.size(), 3u);
    // The middle of chunk 1's stored bytes.
    const uint64_t at = (sec->chunks[1].offset + sec->chunks[2].offset) / 2;
    std::fstream f(snap, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(static_cast<char>(c ^ 0x20));
  }
  auto reader = snapfile::SnapshotReader::Open(snap);
  ASSERT_TRUE(reader.ok()) << "chunk payloads are checked as they are read, not at open";
  const int fds_before = OpenFds();
  auto h = WeightsHandoff::Start(Plan(-1), reader->get(), Opener());
  Status st = h->Wait();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kCorrupt) << st.ToString();
  EXPECT_NE(st.message().find("weights/" + name_), std::string::npos) << st.message();
  EXPECT_TRUE(h->viable()) << "a bad chunk is a failure, not a reason to fall back";
  EXPECT_EQ(h->exported_fd(), -1);
  ExpectNothingHeld();  // as soon as it failed, before the restore lets go of it
  h.reset();
  ExpectNothingHeld();
  EXPECT_EQ(OpenFds(), fds_before);
}

TEST_F(WeightsHandoffTest, ADeviceErrorFailsTheHandoff) {
  const std::string snap = WriteSnap(GpuManifest());
  auto reader = snapfile::SnapshotReader::Open(snap);
  ASSERT_TRUE(reader.ok());
  auto h = WeightsHandoff::Start(Plan(-1), reader->get(), Opener([](MemfdDevice& d) { d.fail_copy_at = 2; }));
  Status st = h->Wait();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("CUDA_ERROR_ILLEGAL_ADDRESS"), std::string::npos) << st.message();
  h.reset();
  ExpectNothingHeld();
}

TEST_F(WeightsHandoffTest, NoDeviceOrNoShareableMemoryIsNotViableAndSaysWhy) {
  auto none = WeightsHandoff::Start(Plan(-1), nullptr, [](int) -> Result<std::unique_ptr<gpu::Device>> {
    return NotFound("no NVIDIA driver (libcuda.so.1 not found)");
  });
  Status v = none->WaitViable();
  EXPECT_EQ(v.code(), Code::kNotFound);
  EXPECT_FALSE(none->Wait().ok());
  EXPECT_FALSE(none->viable());
  GpuWeightsReport r = none->Report();
  EXPECT_EQ(r.mode, "server");
  EXPECT_NE(r.reason.find("libcuda.so.1 not found"), std::string::npos) << r.reason;

  auto refused = WeightsHandoff::Start(Plan(-1), nullptr, Opener([](MemfdDevice& d) { d.shareable = false; }));
  v = refused->WaitViable();
  EXPECT_EQ(v.code(), Code::kUnsupported) << v.ToString();
  EXPECT_NE(refused->Report().reason.find("CUDA_ERROR_NOT_SUPPORTED"), std::string::npos);
  refused.reset();
  ExpectNothingHeld();
}

TEST_F(WeightsHandoffTest, OnlyImagesOtherThanMemoryPagesCountAsNamingTheFile) {
  const fs::path images = dir_ / "images";
  fs::create_directories(images);
  std::ofstream(images / "pages-1.img") << "xx" << name_ << "yy";
  std::ofstream(images / "mm-1.img") << "nothing";
  auto r = ImagesNameFile(images.string(), name_);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
  // Split across the 1 MiB reads: still found.
  std::ofstream(images / "files.img", std::ios::binary) << std::string((1 << 20) - 7, 'z') << "/w/" << name_;
  r = ImagesNameFile(images.string(), name_);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
}

TEST_F(WeightsHandoffTest, ServerTimingsAreCopiedBounded) {
  const json reply = {{"timings_ms",
                       {{"weight_adopt", 1.5}, {"digest", 20}, {"Bad-Name", 1}, {"negative", -1}, {"text", "x"},
                        {"nan", std::numeric_limits<double>::quiet_NaN()}}}};
  json t = json::object();
  CopyServerTimings(reply, &t);
  EXPECT_EQ(t, (json{{"server_digest", 20}, {"server_weight_adopt", 1.5}})) << t.dump();
  // At most 16, whatever the server sends.
  json many = json::object();
  for (int i = 0; i < 40; ++i) many["timings_ms"]["step_" + std::string(1, static_cast<char>('a' + i % 26)) +
                                                  std::string(i / 26 + 1, 'x')] = i;
  json u = json::object();
  CopyServerTimings(many, &u);
  EXPECT_EQ(u.size(), 16u);
  CopyServerTimings(json::array(), &u);  // not an object: nothing
  EXPECT_EQ(u.size(), 16u);
}

TEST_F(WeightsHandoffTest, ModesParse) {
  GpuWeightsMode m = GpuWeightsMode::kServer;
  EXPECT_TRUE(ParseGpuWeightsMode("auto", &m));
  EXPECT_EQ(m, GpuWeightsMode::kAuto);
  EXPECT_TRUE(ParseGpuWeightsMode("handoff", &m));
  EXPECT_EQ(m, GpuWeightsMode::kHandoff);
  EXPECT_FALSE(ParseGpuWeightsMode("both", &m));
  EXPECT_EQ(m, GpuWeightsMode::kHandoff);
}

// The whole restore with a fake CRIU that starts a one-process "server"
// (a shell speaking the control protocol, recording the after_restore it
// gets) and a fake driver: the readiness check then fails on the canary
// (nobody serves HTTP), after after_restore.
class HandoffRestore : public WeightsHandoffTest {
 public:
  std::string WorkRoot() { return (dir_ / "work").string(); }
  using WeightsHandoffTest::ExpectNothingHeld;

 protected:
  // Runs the restore; returns what the fake server got as after_restore
  // ("" when it never got one) and the result.
  std::pair<json, Status> Run(GpuWeightsMode mode, OpenDeviceFn open, const std::string& files_img = "files",
                              int* criu_restores = nullptr) {
    const std::string snap = WriteSnap(GpuManifest(), files_img);
    const fs::path got = dir_ / "after_restore.json";
    fs::remove(got);
    FakeCriu criu;
    criu.server_script = "read line; printf '%s\\n' \"$line\" > " + got.string() +
                         "; printf '%s\\n' '{\"reply\":\"after_restore\",\"ok\":true,\"digest\":\"" +
                         "0123456789abcdef0123456789abcdef\",\"timings_ms\":{\"weight_adopt\":2.5}}'; " +
                         "while read line; do :; done";
    test::FakeCudaDriver cuda = Cuda();
    cuda.adopt = [&criu](pid_t p) { return p == criu.started; };
    cuda.adopted.state = CudaProcessState::kCheckpointed;
    RestoreOptions o = Opts(snap, 47390 + static_cast<int>(mode));
    o.gpu_weights = mode;
    o.open_device = std::move(open);
    auto r = RestoreReplica(o, criu, {}, &cuda);
    if (criu_restores) *criu_restores = criu.restores;
    json cmd;
    if (fs::exists(got)) {
      std::ifstream in(got);
      cmd = json::parse(std::string(std::istreambuf_iterator<char>(in), {}), nullptr, false);
    }
    return {cmd, r.ok() ? Status::Ok() : r.status()};
  }
};

TEST_F(HandoffRestore, AfterRestoreCarriesDeviceWeightsFromTheSnapshotWithoutExtractingTheFile) {
  auto [cmd, st] = Run(GpuWeightsMode::kAuto, Opener());
  ASSERT_TRUE(cmd.is_object()) << st.ToString();
  ASSERT_TRUE(cmd.contains("device_weights")) << cmd.dump();
  const json& dw = cmd["device_weights"];
  EXPECT_EQ(dw["pid"], ::getpid());
  EXPECT_GE(dw["fd"].get<int>(), 0);
  EXPECT_EQ(dw["file"], name_);
  EXPECT_EQ(dw["bytes"], (weights_.size() + (64 << 10) - 1) / (64 << 10) * (64 << 10));
  EXPECT_EQ(cmd["cmd"], "after_restore");
  EXPECT_TRUE(cmd.contains("instance") && cmd.contains("entropy"));
  EXPECT_EQ(opened_ordinal_, 1) << "the GPU the build's device is paired with here";
  // Then the canary (no HTTP server here) ends it unready.
  EXPECT_NE(st.message().find("readiness verification failed"), std::string::npos) << st.ToString();
  EXPECT_FALSE(fs::exists(wdir_ / name_)) << "CRIU's images do not name it: not extracted";
  ExpectNothingHeld();
}

TEST_F(HandoffRestore, AFileCriuMapsIsStillExtractedBesideTheHandoff) {
  auto [cmd, st] = Run(GpuWeightsMode::kAuto, Opener(), "reg file /w/" + name_);
  ASSERT_TRUE(cmd.contains("device_weights")) << cmd.dump() << " " << st.ToString();
  ASSERT_TRUE(fs::exists(wdir_ / name_));
  std::ifstream in(wdir_ / name_, std::ios::binary);
  EXPECT_TRUE(std::string(std::istreambuf_iterator<char>(in), {}) == weights_);
  ExpectNothingHeld();
}

TEST_F(HandoffRestore, FromTheWeightsDirectoryToo) {
  PutInWeightsDir();
  auto [cmd, st] = Run(GpuWeightsMode::kAuto, Opener());
  ASSERT_TRUE(cmd.contains("device_weights")) << cmd.dump() << " " << st.ToString();
  ExpectNothingHeld();
}

TEST_F(HandoffRestore, NoDeviceFallsBackToTheServerUploadWithTheFileExtracted) {
  auto [cmd, st] = Run(GpuWeightsMode::kAuto, [](int) -> Result<std::unique_ptr<gpu::Device>> {
    return NotFound("no NVIDIA driver (libcuda.so.1 not found)");
  });
  ASSERT_TRUE(cmd.is_object()) << st.ToString();
  EXPECT_FALSE(cmd.contains("device_weights")) << cmd.dump();
  EXPECT_TRUE(fs::exists(wdir_ / name_)) << "the server uploads it from the weights directory";
}

TEST_F(HandoffRestore, ServerModeSendsNoDeviceWeightsAndOpensNoDevice) {
  auto [cmd, st] = Run(GpuWeightsMode::kServer, Opener());
  ASSERT_TRUE(cmd.is_object()) << st.ToString();
  EXPECT_FALSE(cmd.contains("device_weights"));
  EXPECT_EQ(opened_ordinal_, -1);
  EXPECT_TRUE(fs::exists(wdir_ / name_));
}

TEST_F(WeightsHandoffTest, NoPlanWithoutGpuStateForTransparentServersOrInAPidNamespace) {
  Manifest m = GpuManifest();
  const std::optional<SafeDir> none;
  std::string why;
  auto p = PlanWeightsHandoff(m, none, false, GpuWeightsMode::kServer, 0, &why);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->has_value());
  EXPECT_EQ(why, "--gpu-weights server");
  m.process.pid_namespace = true;
  p = PlanWeightsHandoff(m, none, false, GpuWeightsMode::kAuto, 0, &why);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->has_value());
  EXPECT_NE(why.find("PID namespace"), std::string::npos);
  m = GpuManifest();
  m.mode = "transparent";
  p = PlanWeightsHandoff(m, none, false, GpuWeightsMode::kAuto, 0, &why);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->has_value());
  EXPECT_NE(why.find("transparent"), std::string::npos);
  m = GpuManifest();
  m.gpu.reset();
  p = PlanWeightsHandoff(m, none, false, GpuWeightsMode::kAuto, 0, &why);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->has_value());
  EXPECT_EQ(why, "the snapshot holds no GPU state");
}

TEST_F(HandoffRestore, HandoffModeWithoutADeviceIsRefusedBeforeCriu) {
  int restores = -1;
  auto [cmd, st] = Run(
      GpuWeightsMode::kHandoff,
      [](int) -> Result<std::unique_ptr<gpu::Device>> { return NotFound("no NVIDIA driver (libcuda.so.1 not found)"); },
      "files", &restores);
  EXPECT_EQ(st.code(), Code::kIncompatible) << st.ToString();
  EXPECT_NE(st.message().find("--gpu-weights handoff: no CUDA device 1 in the restore process"), std::string::npos)
      << st.message();
  EXPECT_EQ(restores, 0);
  EXPECT_FALSE(cmd.is_object());
}

TEST_F(HandoffRestore, ADamagedWeightsChunkFailsTheRestoreAndLeavesNothing) {
  const std::string snap = WriteSnap(GpuManifest());
  {
    auto reader = snapfile::SnapshotReader::Open(snap);
    ASSERT_TRUE(reader.ok());
    const snapfile::SectionInfo* sec = (*reader)->FindSection("weights/" + name_);
    const uint64_t at = (sec->chunks[0].offset + sec->chunks[1].offset) / 2;
    std::fstream f(snap, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(static_cast<char>(c ^ 0x20));
  }
  FakeCriu criu;
  criu.server_script = "while read line; do :; done";
  test::FakeCudaDriver cuda = Cuda();
  cuda.adopt = [&criu](pid_t p) { return p == criu.started; };
  cuda.adopted.state = CudaProcessState::kCheckpointed;
  RestoreOptions o = Opts(snap, 47399);
  o.open_device = Opener();
  auto r = RestoreReplica(o, criu, {}, &cuda);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().ToString();
  // Found before CRIU's restore (then none is made) or when the restore
  // waits for the handoff (then the replica is ended).
  EXPECT_NE(r.status().message().find("the GPU weights were not uploaded"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("weights/" + name_), std::string::npos) << r.status().message();
  if (criu.started > 0) EXPECT_NE(::kill(criu.started, 0), 0) << "the replica was ended";
  ExpectNothingHeld();
  EXPECT_TRUE(fs::is_empty(dir_ / "work"));
}

// All the way to ready: the server (a shell) adopts and answers, the
// canary and /readyz answer (TinyHttp); the result says how the weights came
// back and where the time went.
Result<RestoreResult> HandoffRestore_Ready(HandoffRestore& t, const std::string& snap, const std::string& reply_extra,
                                           OpenDeviceFn open) {
  FakeCriu criu;
  std::unique_ptr<TinyHttp> http;
  const int port = UnusedPort();
  EXPECT_GT(port, 0);
  criu.on_restore = [&] { http = std::make_unique<TinyHttp>(port); };
  criu.server_script =
      "read line; printf '%s\\n' '{\"reply\":\"after_restore\",\"ok\":true,\"digest\":\"" +
      std::string("0123456789abcdef0123456789abcdef") + "\"" + reply_extra +
      ",\"timings_ms\":{\"weight_adopt\":2.5,\"digest\":7}}'; read line; " +
      "printf '%s\\n' '{\"reply\":\"mark_ready\",\"ok\":true}'; while read line; do :; done";
  test::FakeCudaDriver cuda;
  cuda.devices = {test::FakeCudaDriver::Device(0, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")};
  cuda.adopt = [&criu](pid_t p) { return p == criu.started; };
  cuda.adopted.state = CudaProcessState::kCheckpointed;
  RestoreOptions o;
  o.snapshot_path = snap;
  o.port = port;
  o.work_root = t.WorkRoot();
  o.verify_timeout = std::chrono::seconds(2);
  o.open_device = std::move(open);
  auto r = RestoreReplica(o, criu, {}, &cuda);
  EXPECT_TRUE(http && http->ok());
  return r;
}

TEST_F(HandoffRestore, ReadyWithTheHandoffReportedAndTimed) {
  auto r = HandoffRestore_Ready(*this, WriteSnap(GpuManifest()), "", Opener());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(r->gpu_weights.has_value());
  const json g = r->gpu_weights->ToJson();
  EXPECT_EQ(g["mode"], "handoff") << g.dump();
  EXPECT_EQ(g["source"], "snapshot");
  EXPECT_EQ(g["bytes"], weights_.size());
  EXPECT_EQ(g["extracted"], false);
  EXPECT_FALSE(g.contains("reason"));
  for (const char* k : {"upload_ms", "GBps", "device_open_ms", "memory_ms", "staging_ms", "copy_wait_ms"}) {
    EXPECT_TRUE(g[k].is_number()) << k;
  }
  const json& t = r->timings_ms;
  for (const char* k : {"weights_handoff", "weights_handoff_wait", "weights_handoff_open_wait",
                        "weights_handoff_release", "after_restore", "verify", "verify_canary", "criu_restore",
                        "gpu_restore", "total"}) {
    EXPECT_TRUE(t.contains(k) && t[k].is_number() && t[k].get<double>() >= 0) << k << " in " << t.dump();
  }
  EXPECT_EQ(t["server_weight_adopt"], 2.5);
  EXPECT_EQ(t["server_digest"], 7);
  EXPECT_EQ(t["verify_canary"], r->canary_latency_ms);
  ExpectNothingHeld();  // the memory is the server's now; the device is closed
  r->replica.reset();
}

TEST_F(HandoffRestore, AServerThatDidNotAdoptTheMemoryIsReportedAsServerMode) {
  // (CRIU's images name the file, so the server has it to upload from.)
  auto r = HandoffRestore_Ready(*this, WriteSnap(GpuManifest(), "/w/" + name_),
                                ",\"device_weights_error\":\"pidfd_getfd: Operation not permitted\"", Opener());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(r->gpu_weights.has_value());
  EXPECT_EQ(r->gpu_weights->mode, "server");
  EXPECT_NE(r->gpu_weights->reason.find("pidfd_getfd: Operation not permitted"), std::string::npos)
      << r->gpu_weights->reason;
  EXPECT_TRUE(r->gpu_weights->extracted);
  ExpectNothingHeld();
  r->replica.reset();
}

}  // namespace
}  // namespace hotboot
