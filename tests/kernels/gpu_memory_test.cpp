// The weight upload pipeline and the release/restore of device weights on a
// host-memory fake device: bytes land at the right addresses, addresses
// survive a release, staging memory stays bounded, copies spread over the
// streams, and every failing step leaves nothing half-resident.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "hotboot/gpu_memory.h"

namespace hotboot::gpu {
namespace {

// Device memory is host memory; addresses are made up (never dereferenced
// as pointers), so a stale address is caught instead of scribbling.
class FakeDevice : public Device {
 public:
  size_t granularity = 1 << 16;
  int streams = 3;
  int fail_map_after = -1;   // Map calls that succeed before one fails
  int fail_copy_after = -1;  // copies that succeed before one fails
  bool fail_pinned = false;
  size_t pinned_now = 0, pinned_peak = 0;
  std::set<int> streams_used;
  int maps = 0, copies = 0;

  std::string Name() override { return "fake"; }
  size_t Granularity() override { return granularity; }
  Result<DevicePtr> Reserve(size_t size) override {
    std::lock_guard l(mu_);
    DevicePtr va = next_;
    next_ += size + granularity;  // a gap: overruns do not land in a neighbour
    reserved_[va] = size;
    return va;
  }
  Status FreeReservation(DevicePtr va, size_t) override {
    std::lock_guard l(mu_);
    return reserved_.erase(va) ? Status() : InvalidArgument("free of an unknown reservation");
  }
  Status Map(DevicePtr va, size_t size) override {
    std::lock_guard l(mu_);
    if (fail_map_after >= 0 && maps >= fail_map_after) return Internal("cuMemCreate failed: CUDA_ERROR_OUT_OF_MEMORY (2) (injected)");
    ++maps;
    if (size % granularity) return InvalidArgument("map size not a multiple of the granularity");
    mapped_[va] = std::vector<uint8_t>(size, 0xAB);  // fresh memory is garbage, not zeros
    return Status();
  }
  Status Unmap(DevicePtr va, size_t size) override {
    std::lock_guard l(mu_);
    auto it = mapped_.find(va);
    if (it == mapped_.end() || it->second.size() != size) return InvalidArgument("unmap of an unmapped range");
    mapped_.erase(it);
    return Status();
  }
  Result<void*> AllocPinned(size_t size) override {
    std::lock_guard l(mu_);
    if (fail_pinned) return Internal("cuMemHostAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (2) (injected)");
    pinned_now += size;
    pinned_peak = std::max(pinned_peak, pinned_now);
    return static_cast<void*>(new uint8_t[size]);
  }
  void FreePinned(void* p, size_t size) override {
    std::lock_guard l(mu_);
    pinned_now -= size;
    delete[] static_cast<uint8_t*>(p);
  }
  int Streams() override { return streams; }
  Status CopyToDeviceAsync(DevicePtr dst, const void* src, size_t n, int stream) override {
    std::lock_guard l(mu_);
    if (fail_copy_after >= 0 && copies >= fail_copy_after) return Internal("cuMemcpyHtoDAsync failed (injected)");
    ++copies;
    streams_used.insert(stream);
    uint8_t* p = Locate(dst, n);
    if (!p) return InvalidArgument("copy to unmapped device memory at " + std::to_string(dst));
    std::memcpy(p, src, n);
    return Status();
  }
  Result<int> Record(int) override { return 0; }
  Status Wait(int) override { return Status(); }
  Status Sync() override { return Status(); }
  Status CopyToHost(void* dst, DevicePtr src, size_t n) override {
    std::lock_guard l(mu_);
    uint8_t* p = Locate(src, n);
    if (!p) return InvalidArgument("read of unmapped device memory");
    std::memcpy(dst, p, n);
    return Status();
  }
  // Like the driver: overlapping registrations are refused, and a copy from
  // host memory is checked to come from a registered range when any is.
  bool refuse_register = false;
  int registrations = 0;
  Status RegisterHost(const void* p, size_t n) override {
    std::lock_guard l(mu_);
    if (refuse_register) return Unsupported("cuMemHostRegister failed: CUDA_ERROR_NOT_SUPPORTED (801) (injected)");
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (auto& [b, len] : registered_) {
      if (a < b + len && b < a + n) return Internal("cuMemHostRegister: CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED");
    }
    registered_[a] = n;
    ++registrations;
    return Status();
  }
  Status UnregisterHost(const void* p) override {
    std::lock_guard l(mu_);
    return registered_.erase(reinterpret_cast<uintptr_t>(p)) ? Status() : InvalidArgument("not registered");
  }
  size_t RegisteredNow() {
    std::lock_guard l(mu_);
    return registered_.size();
  }
  size_t MappedBytes() {
    std::lock_guard l(mu_);
    size_t n = 0;
    for (auto& [va, m] : mapped_) n += m.size();
    return n;
  }

 private:
  uint8_t* Locate(DevicePtr a, size_t n) {
    auto it = mapped_.upper_bound(a);
    if (it == mapped_.begin()) return nullptr;
    --it;
    if (a + n > it->first + it->second.size()) return nullptr;
    return it->second.data() + (a - it->first);
  }
  std::mutex mu_;
  DevicePtr next_ = 0x7000'0000'0000ull;
  std::map<DevicePtr, size_t> reserved_;
  std::map<DevicePtr, std::vector<uint8_t>> mapped_;
  std::map<uintptr_t, size_t> registered_;
};

class GpuMemory : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() / ("hotboot-gpu-mem." + std::to_string(::getpid()))).string();
    std::mt19937 rng(7);
    bytes_.resize(3'000'000);
    for (auto& b : bytes_) b = static_cast<char>(rng());
    std::ofstream(path_, std::ios::binary).write(bytes_.data(), static_cast<std::streamsize>(bytes_.size()));
  }
  void TearDown() override { std::filesystem::remove(path_); }

  // Three tensors of odd sizes at odd file offsets.
  std::vector<uint64_t> offsets_{7, 1'000'003, 2'100'000};
  std::vector<uint64_t> sizes_{999'990, 1'000'001, 899'999};

  void ExpectResidentAndEqual(FakeDevice& dev, const DeviceWeights& w) {
    for (size_t i = 0; i < w.count(); ++i) {
      std::string got(sizes_[i], '\0');
      ASSERT_TRUE(dev.CopyToHost(got.data(), w.ptr(i), got.size()).ok());
      EXPECT_EQ(got, bytes_.substr(offsets_[i], sizes_[i])) << "tensor " << i;
    }
  }

  std::string path_, bytes_;
};

TEST_F(GpuMemory, LoadPutsEveryTensorAtItsAddressWithBoundedStaging) {
  FakeDevice dev;
  UploadOptions o;
  o.chunk_bytes = 100'000;
  o.buffers = 4;
  o.readers = 3;
  auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_, o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(w->resident());
  EXPECT_EQ(w->bytes(), 999'990u + 1'000'001u + 899'999u);
  EXPECT_EQ(w->last_upload().bytes, w->bytes());
  for (size_t i = 0; i < w->count(); ++i) EXPECT_EQ(w->ptr(i) % dev.granularity, 0u) << i;
  ExpectResidentAndEqual(dev, *w);
  EXPECT_LE(dev.pinned_peak, 4u * 100'000u);
  EXPECT_EQ(dev.pinned_now, 0u);
  EXPECT_EQ(dev.streams_used.size(), 3u);
}

TEST_F(GpuMemory, EveryReadModePutsTheSameBytesInPlace) {
  using Mode = UploadOptions::ReadMode;
  for (Mode m : {Mode::kPread, Mode::kMmap, Mode::kMmapPopulate, Mode::kRegister}) {
    for (size_t chunk : {size_t{4096}, size_t{100'000}, size_t{1} << 22}) {
      FakeDevice dev;
      UploadOptions o;
      o.mode = m;
      o.chunk_bytes = chunk;
      o.readers = 5;
      o.buffers = 7;
      auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_, o);
      ASSERT_TRUE(w.ok()) << ReadModeName(m) << " " << chunk << ": " << w.status().ToString();
      ExpectResidentAndEqual(dev, *w);
      EXPECT_EQ(w->last_upload().bytes, w->bytes());
      EXPECT_EQ(dev.RegisteredNow(), 0u) << "every window unlocked";
      EXPECT_EQ(dev.pinned_now, 0u);
      if (m == Mode::kRegister) {
        EXPECT_EQ(w->last_upload().mode, "register");
        EXPECT_GT(dev.registrations, 1);
        EXPECT_EQ(dev.pinned_peak, 0u) << "no staging";
      } else {
        EXPECT_EQ(dev.registrations, 0);
      }
    }
  }
}

TEST_F(GpuMemory, ADeviceThatCannotRegisterFallsBackToStaging) {
  FakeDevice dev;
  dev.refuse_register = true;
  UploadOptions o;
  o.mode = UploadOptions::ReadMode::kRegister;
  auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_, o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectResidentAndEqual(dev, *w);
  EXPECT_NE(w->last_upload().mode.find("register refused"), std::string::npos) << w->last_upload().mode;
  EXPECT_GT(dev.pinned_peak, 0u);
}

TEST_F(GpuMemory, ReadModesParseByName) {
  UploadOptions::ReadMode m;
  for (const char* n : {"pread", "mmap", "populate", "register"}) {
    ASSERT_TRUE(ParseReadMode(n, &m)) << n;
    EXPECT_STREQ(ReadModeName(m), n);
  }
  EXPECT_FALSE(ParseReadMode("dma", &m));
}

TEST_F(GpuMemory, ReleaseKeepsTheAddressesAndRestoreRefillsThem) {
  FakeDevice dev;
  auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_);
  ASSERT_TRUE(w.ok());
  std::vector<DevicePtr> before;
  for (size_t i = 0; i < w->count(); ++i) before.push_back(w->ptr(i));
  ASSERT_TRUE(w->Release().ok());
  EXPECT_FALSE(w->resident());
  EXPECT_EQ(dev.MappedBytes(), 0u);
  char probe;
  EXPECT_FALSE(dev.CopyToHost(&probe, before[0], 1).ok());  // really gone
  EXPECT_FALSE(w->Restore(path_ + ".missing").ok());
  EXPECT_FALSE(w->resident());
  auto r = w->Restore(path_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (size_t i = 0; i < w->count(); ++i) EXPECT_EQ(w->ptr(i), before[i]);
  ExpectResidentAndEqual(dev, *w);
  EXPECT_FALSE(w->Restore(path_).ok());  // already resident
}

TEST_F(GpuMemory, ATruncatedWeightsFileLeavesNothingResident) {
  FakeDevice dev;
  std::filesystem::resize_file(path_, 2'500'000);
  auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), Code::kTruncated);
  EXPECT_NE(w.status().message().find("weights file ends at byte 2500000"), std::string::npos)
      << w.status().message();
  EXPECT_EQ(dev.MappedBytes(), 0u);
  EXPECT_EQ(dev.pinned_now, 0u);
}

TEST_F(GpuMemory, DeviceFaultsAreReportedAndCleanedUp) {
  using Mode = UploadOptions::ReadMode;
  for (Mode m : {Mode::kPread, Mode::kMmap, Mode::kRegister}) {
    for (int fault = 0; fault < 3; ++fault) {
      if (fault == 2 && m == Mode::kRegister) continue;  // no staging to fail
      FakeDevice dev;
      if (fault == 0) dev.fail_map_after = 0;
      if (fault == 1) dev.fail_copy_after = 5;
      if (fault == 2) dev.fail_pinned = true;
      UploadOptions o;
      o.mode = m;
      o.chunk_bytes = 64 * 1024;
      auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_, o);
      ASSERT_FALSE(w.ok()) << fault;
      EXPECT_NE(w.status().message().find("injected"), std::string::npos) << w.status().message();
      EXPECT_EQ(dev.MappedBytes(), 0u) << fault;
      EXPECT_EQ(dev.pinned_now, 0u) << fault;
      EXPECT_EQ(dev.RegisteredNow(), 0u) << ReadModeName(m) << " " << fault;
    }
  }
}

TEST_F(GpuMemory, UploadRejectsNonsenseOptionsAndHandlesNothingToDo) {
  FakeDevice dev;
  UploadOptions bad;
  bad.buffers = 0;
  EXPECT_FALSE(UploadFromFile(dev, -1, {}, bad).ok());
  auto none = UploadFromFile(dev, -1, {}, {});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->bytes, 0u);
}

TEST(GpuMemoryCuda, NoDriverHereIsNotFound) {
  auto d = OpenCudaDevice(0);
  if (d.ok()) GTEST_SKIP() << "a CUDA device is present: " << (*d)->Name();
  EXPECT_EQ(d.status().code(), Code::kNotFound) << d.status().ToString();
}

}  // namespace
}  // namespace hotboot::gpu
