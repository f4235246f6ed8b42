// The weight upload pipeline and the release/restore of device weights on a
// host-memory fake device: bytes land at the right addresses, addresses
// survive a release, staging memory stays bounded, copies spread over the
// streams, and every failing step leaves nothing half-resident.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "fake_gpu_device.h"
#include "hotboot/gpu_memory.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::gpu {
namespace {

using testing::FakeDevice;

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
  // The file's image: tensor i at base + its file offset, one reservation
  // up to the last tensor's end.
  for (size_t i = 0; i < w->count(); ++i) EXPECT_EQ(w->ptr(i), w->base() + offsets_[i]) << i;
  EXPECT_EQ(w->image_bytes(), (2'100'000u + 899'999u + dev.granularity - 1) / dev.granularity * dev.granularity);
  EXPECT_EQ(dev.MappedBytes(), w->image_bytes());
  ExpectResidentAndEqual(dev, *w);
  EXPECT_LE(dev.pinned_peak, 4u * 100'000u);
  EXPECT_EQ(dev.pinned_now, 0u);
  EXPECT_EQ(dev.streams_used.size(), 3u);
}

TEST_F(GpuMemory, EveryReadModePutsTheSameBytesInPlace) {
  using Mode = UploadOptions::ReadMode;
  for (Mode m : {Mode::kPread, Mode::kMmap, Mode::kMmapPopulate, Mode::kRegister, Mode::kDirect}) {
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
  for (const char* n : {"pread", "mmap", "populate", "register", "direct"}) {
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
  for (Mode m : {Mode::kPread, Mode::kMmap, Mode::kRegister, Mode::kDirect}) {
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

// --- UploadPieces: the pipeline on its own ---

TEST(UploadPieces, EveryPieceLandsAndStagingIsBoundedAndFreed) {
  FakeDevice dev;
  const size_t n = 40, piece = 10'000;
  auto va = dev.Reserve(1 << 20);
  ASSERT_TRUE(va.ok());
  ASSERT_TRUE(dev.Map(*va, 1 << 20).ok());
  std::vector<Piece> pieces;
  for (size_t k = 0; k < n; ++k) pieces.push_back({piece - k, *va + k * piece});  // sizes vary
  std::atomic<int> fills{0};
  FillFn fill = [&](size_t k, void* dst) {
    ++fills;
    std::memset(dst, static_cast<int>(k + 1), pieces[k].size);
    return Status();
  };
  UploadOptions o;
  o.buffers = 4;
  o.readers = 3;
  auto st = UploadPieces(dev, pieces, piece, fill, o);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(fills.load(), static_cast<int>(n));
  uint64_t total = 0;
  for (size_t k = 0; k < n; ++k) {
    std::string got(pieces[k].size, '\0');
    ASSERT_TRUE(dev.CopyToHost(got.data(), pieces[k].dst, got.size()).ok());
    EXPECT_EQ(got, std::string(pieces[k].size, static_cast<char>(k + 1))) << k;
    total += pieces[k].size;
  }
  EXPECT_EQ(st->bytes, total);
  EXPECT_LE(dev.pinned_peak, 4 * piece);
  EXPECT_EQ(dev.pinned_now, 0u);
  EXPECT_EQ(dev.streams_used.size(), 3u);
}

TEST(UploadPieces, AFillFailingMidwayIsNamedAndLeavesNothingPinned) {
  for (int readers : {1, 4}) {
    FakeDevice dev;
    auto va = dev.Reserve(1 << 20);
    ASSERT_TRUE(dev.Map(*va, 1 << 20).ok());
    std::vector<Piece> pieces;
    for (size_t k = 0; k < 50; ++k) pieces.push_back({4096, *va + k * 4096});
    std::atomic<int> fills{0};
    FillFn fill = [&](size_t k, void* dst) -> Status {
      ++fills;
      if (k == 17) return Corrupt("chunk 17 of section 'weights/x' at byte 1234: stored checksum mismatch (injected)");
      std::memset(dst, 1, 4096);
      return Status();
    };
    UploadOptions o;
    o.buffers = 6;
    o.readers = readers;
    auto st = UploadPieces(dev, pieces, 4096, fill, o);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.status().code(), Code::kCorrupt);
    EXPECT_NE(st.status().message().find("piece 17 of 50"), std::string::npos) << st.status().message();
    EXPECT_NE(st.status().message().find("injected"), std::string::npos) << st.status().message();
    EXPECT_EQ(dev.pinned_now, 0u) << readers;
    // One reader takes the pieces in order and stops at the failure.
    if (readers == 1) {
      EXPECT_EQ(fills.load(), 18);
    }
  }
}

TEST(UploadPieces, RefusesPiecesLargerThanTheStagingAndNonsenseOptions) {
  FakeDevice dev;
  FillFn fill = [](size_t, void*) { return Status(); };
  auto big = UploadPieces(dev, {{100, 0}, {5000, 0}}, 4096, fill, {});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kInvalidArgument);
  EXPECT_NE(big.status().message().find("piece 1 has 5000 bytes"), std::string::npos) << big.status().message();
  EXPECT_FALSE(UploadPieces(dev, {}, 0, fill, {}).ok());
  auto none = UploadPieces(dev, {}, 4096, fill, {});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->bytes, 0u);
  EXPECT_EQ(dev.pinned_peak, 0u);
}

TEST(UploadPieces, ACopyFaultStopsTheFillsAndFreesTheStaging) {
  FakeDevice dev;
  dev.fail_copy_after = 3;
  auto va = dev.Reserve(1 << 20);
  ASSERT_TRUE(dev.Map(*va, 1 << 20).ok());
  std::vector<Piece> pieces;
  for (size_t k = 0; k < 64; ++k) pieces.push_back({4096, *va + k * 4096});
  std::atomic<int> fills{0};
  FillFn fill = [&](size_t, void*) {
    ++fills;
    return Status();
  };
  auto st = UploadPieces(dev, pieces, 4096, fill, {});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("piece 3 of 64"), std::string::npos) << st.status().message();
  EXPECT_LT(fills.load(), 64);
  EXPECT_EQ(dev.pinned_now, 0u);
}

// --- the file image, shareable memory and the handoff ---

TEST(DeviceWeightsImage, ImageBytesIsTheLastEndRoundedUp) {
  auto a = DeviceWeights::ImageBytes(1 << 16, {0, 1 << 16, 3 << 16}, {100, 1 << 16, 1});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 4u << 16);
  auto b = DeviceWeights::ImageBytes(1 << 16, {5 << 16, 0}, {1 << 16, 7});  // order does not matter
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, 6u << 16);
  auto none = DeviceWeights::ImageBytes(1 << 16, {}, {});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 1u << 16);
  EXPECT_EQ(DeviceWeights::ImageBytes(1 << 16, {0}, {1, 2}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(DeviceWeights::ImageBytes(1 << 16, {UINT64_MAX - 4}, {8}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(DeviceWeights::ImageBytes(0, {0}, {8}).status().code(), Code::kInternal);
}

// The file image uploaded into ShareableWeights: what the restorer does.
Result<ShareableWeights> UploadImage(Device& dev, const std::string& path, uint64_t image_bytes,
                                     uint64_t file_bytes) {
  HB_ASSIGN_OR_RETURN(ShareableWeights sw, ShareableWeights::Create(dev, image_bytes));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path, errno);
  auto st = UploadFromFile(dev, fd, {{0, std::min(file_bytes, sw.bytes()), sw.base()}});
  ::close(fd);
  if (!st.ok()) return st.status();
  return sw;
}

TEST_F(GpuMemory, AdoptedShareableMemoryShowsTheBytesAtTheSameAddresses) {
  FakeDevice dev;
  auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_);
  ASSERT_TRUE(w.ok());
  std::vector<DevicePtr> before;
  for (size_t i = 0; i < w->count(); ++i) before.push_back(w->ptr(i));
  ASSERT_TRUE(w->Release().ok());
  ASSERT_EQ(dev.MappedBytes(), 0u);
  {
    auto sw = UploadImage(dev, path_, w->image_bytes(), bytes_.size());
    ASSERT_TRUE(sw.ok()) << sw.status().ToString();
    EXPECT_EQ(sw->bytes(), w->image_bytes());
    auto fd = sw->ExportFd();
    ASSERT_TRUE(fd.ok()) << fd.status().ToString();
    Status a = w->AdoptShareable(*fd);
    ::close(*fd);
    ASSERT_TRUE(a.ok()) << a.ToString();
    // The restorer lets go of its mapping, handle and reservation ...
  }
  // ... and the memory lives on in the importer.
  EXPECT_TRUE(w->resident());
  EXPECT_EQ(w->last_upload().mode, "adopted");
  for (size_t i = 0; i < w->count(); ++i) EXPECT_EQ(w->ptr(i), before[i]);
  ExpectResidentAndEqual(dev, *w);
  EXPECT_EQ(dev.HandlesNow(), 1u);  // the imported one
  EXPECT_EQ(w->AdoptShareable(0).code(), Code::kFailedPrecondition);
  EXPECT_EQ(w->Restore(path_).status().code(), Code::kFailedPrecondition);
  // Release unmaps and releases the imported handle; a plain restore works after.
  ASSERT_TRUE(w->Release().ok());
  EXPECT_EQ(dev.MappedBytes(), 0u);
  EXPECT_EQ(dev.HandlesNow(), 0u);
  ASSERT_TRUE(w->Restore(path_).ok());
  ExpectResidentAndEqual(dev, *w);
}

TEST_F(GpuMemory, AFailedAdoptionLeavesNothingMappedOrImported) {
  for (int fault = 0; fault < 4; ++fault) {
    FakeDevice dev;
    auto w = DeviceWeights::Load(dev, path_, offsets_, sizes_);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->Release().ok());
    // Too small an allocation (fault 2) is what a restorer with another
    // layout of the file would hand over.
    auto sw = ShareableWeights::Create(dev, fault == 2 ? dev.granularity : w->image_bytes());
    ASSERT_TRUE(sw.ok()) << sw.status().ToString();
    auto fd = sw->ExportFd();
    ASSERT_TRUE(fd.ok());
    const size_t mapped_before = dev.MappedBytes(), handles_before = dev.HandlesNow();
    if (fault == 0) dev.fail_import = true;
    if (fault == 1) dev.fail_map_handle = true;
    Status a = fault == 3 ? w->AdoptShareable(-1) : w->AdoptShareable(*fd);
    ::close(*fd);
    ASSERT_FALSE(a.ok()) << fault;
    if (fault < 2) {
      EXPECT_NE(a.message().find("injected"), std::string::npos) << a.message();
    } else if (fault == 2) {
      EXPECT_NE(a.message().find("at the weights' addresses"), std::string::npos) << a.message();
    }
    EXPECT_FALSE(w->resident());
    EXPECT_EQ(dev.MappedBytes(), mapped_before) << fault;
    EXPECT_EQ(dev.HandlesNow(), handles_before) << fault;
    dev.fail_import = dev.fail_map_handle = false;
    // Still usable: a plain restore.
    ASSERT_TRUE(w->Restore(path_).ok()) << fault;
    ExpectResidentAndEqual(dev, *w);
  }
}

TEST(ShareableWeightsTest, CreateRoundsUpAndResetLeavesNothing) {
  FakeDevice dev;
  {
    auto sw = ShareableWeights::Create(dev, 100'000);
    ASSERT_TRUE(sw.ok()) << sw.status().ToString();
    EXPECT_EQ(sw->bytes(), 2 * dev.granularity);
    EXPECT_EQ(dev.MappedBytes(), sw->bytes());
    ShareableWeights moved = std::move(*sw);
    EXPECT_EQ(moved.bytes(), 2 * dev.granularity);
    EXPECT_EQ(sw->ExportFd().status().code(), Code::kFailedPrecondition);
  }
  EXPECT_EQ(dev.MappedBytes(), 0u);
  EXPECT_EQ(dev.HandlesNow(), 0u);
  EXPECT_EQ(dev.ReservationsNow(), 0u);
  EXPECT_EQ(ShareableWeights::Create(dev, 0).status().code(), Code::kInvalidArgument);
  dev.no_shareable = true;
  auto un = ShareableWeights::Create(dev, 1);
  EXPECT_EQ(un.status().code(), Code::kUnsupported);
  EXPECT_EQ(dev.ReservationsNow(), 0u);
  dev.no_shareable = false;
  dev.fail_map_handle = true;
  EXPECT_FALSE(ShareableWeights::Create(dev, 1).ok());
  EXPECT_EQ(dev.HandlesNow(), 0u);
  EXPECT_EQ(dev.ReservationsNow(), 0u);
}

TEST(ShareableWeightsTest, TheExportedFdCarriesTheBytesToAnotherProcessAndBack) {
  FakeDevice dev;
  auto sw = ShareableWeights::Create(dev, 3 * dev.granularity);
  ASSERT_TRUE(sw.ok());
  std::string bytes(sw->bytes(), '\0');
  std::mt19937 rng(11);
  for (auto& c : bytes) c = static_cast<char>(rng());
  ASSERT_TRUE(dev.CopyToDeviceAsync(sw->base(), bytes.data(), bytes.size(), 0).ok());
  auto fd = sw->ExportFd();
  ASSERT_TRUE(fd.ok());
  // Exported fds are close-on-exec, as the driver's are.
  EXPECT_TRUE(::fcntl(*fd, F_GETFD) & FD_CLOEXEC);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child: its own device, the fd number it inherited.
    FakeDevice child;
    auto h = child.ImportFd(*fd);
    auto va = child.Reserve(bytes.size());
    if (!h.ok() || !va.ok() || !child.MapHandle(*va, bytes.size(), *h).ok()) ::_exit(2);
    std::string got(bytes.size(), '\0');
    if (!child.CopyToHost(got.data(), *va, got.size()).ok() || got != bytes) ::_exit(3);
    const char mark[] = "written by the importer";
    if (!child.CopyToDeviceAsync(*va + 5, mark, sizeof mark, 0).ok()) ::_exit(4);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "2: import/map, 3: bytes differ, 4: write";
  // The same memory, not a copy: the importer's write is here.
  char back[32] = {};
  ASSERT_TRUE(dev.CopyToHost(back, sw->base() + 5, sizeof "written by the importer").ok());
  EXPECT_STREQ(back, "written by the importer");
  ::close(*fd);
}

TEST_F(GpuMemory, TheHandoffAcrossProcessesRestorerUploadsServerAdopts) {
  // The restorer (this process) uploads the file's image into shareable
  // memory and exports it; the server (a child with its own device and its
  // own DeviceWeights, released as before a capture) adopts the fd it got
  // and finds every tensor at its own addresses.
  FakeDevice dev;
  auto image = DeviceWeights::ImageBytes(dev.granularity, offsets_, sizes_);
  ASSERT_TRUE(image.ok());
  auto sw = UploadImage(dev, path_, *image, bytes_.size());
  ASSERT_TRUE(sw.ok()) << sw.status().ToString();
  auto fd = sw->ExportFd();
  ASSERT_TRUE(fd.ok());
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    FakeDevice server;
    auto w = DeviceWeights::Load(server, path_, offsets_, sizes_);
    if (!w.ok() || w->image_bytes() != *image) ::_exit(2);
    std::vector<DevicePtr> before;
    for (size_t i = 0; i < w->count(); ++i) before.push_back(w->ptr(i));
    if (!w->Release().ok() || !w->AdoptShareable(*fd).ok()) ::_exit(3);
    ::close(*fd);
    for (size_t i = 0; i < w->count(); ++i) {
      std::string got(sizes_[i], '\0');
      if (w->ptr(i) != before[i] || !server.CopyToHost(got.data(), w->ptr(i), got.size()).ok()) ::_exit(4);
      if (got != bytes_.substr(offsets_[i], sizes_[i])) ::_exit(5);
    }
    if (!w->Release().ok() || server.HandlesNow() != 0 || server.MappedBytes() != 0) ::_exit(6);
    ::_exit(0);
  }
  ::close(*fd);
  sw->Reset();  // the restorer may let go at once: the child holds its own fd
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: load, 3: release/adopt, 4: address/read, 5: bytes, 6: release";
}

// --- O_DIRECT reads ---

TEST_F(GpuMemory, DirectReadsFromADiskFileLandEveryTensor) {
  // /var/tmp is on disk (ext4 here): O_DIRECT works; odd offsets exercise the
  // aligned spans around each piece.
  const std::string disk = "/var/tmp/hotboot-gpu-direct." + std::to_string(::getpid());
  std::filesystem::copy_file(path_, disk);
  for (size_t chunk : {size_t{4096}, size_t{100'000}, size_t{1} << 20}) {
    FakeDevice dev;
    UploadOptions o;
    o.mode = UploadOptions::ReadMode::kDirect;
    o.chunk_bytes = chunk;
    o.readers = 4;
    o.buffers = 6;
    auto w = DeviceWeights::Load(dev, disk, offsets_, sizes_, o);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ExpectResidentAndEqual(dev, *w);
    const std::string& mode = w->last_upload().mode;
    const int probe = ::open(disk.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (probe >= 0) {
      ::close(probe);
      EXPECT_EQ(mode, "direct");
    } else {
      // A filesystem under /var/tmp that refuses O_DIRECT: the fallback says so.
      EXPECT_NE(mode.find("O_DIRECT refused"), std::string::npos) << mode;
    }
    EXPECT_LE(dev.pinned_peak, 6 * (chunk + 3 * 4096));
    EXPECT_EQ(dev.pinned_now, 0u);
  }
  // Truncated on disk: named as such.
  std::filesystem::resize_file(disk, 2'500'000);
  FakeDevice dev;
  UploadOptions o;
  o.mode = UploadOptions::ReadMode::kDirect;
  auto t = DeviceWeights::Load(dev, disk, offsets_, sizes_, o);
  std::filesystem::remove(disk);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kTruncated) << t.status().ToString();
  EXPECT_EQ(dev.MappedBytes(), 0u);
  EXPECT_EQ(dev.pinned_now, 0u);
}

TEST_F(GpuMemory, AFilesystemThatRefusesDirectFallsBackToPreadAndSaysSo) {
  // ramfs has no O_DIRECT (open fails with EINVAL). Mounting one needs root.
  const std::string dir = "/var/tmp/hotboot-gpu-ramfs." + std::to_string(::getpid());
  std::filesystem::create_directory(dir);
  if (::mount("ramfs", dir.c_str(), "ramfs", MS_NOSUID | MS_NODEV, "mode=0700") != 0) {
    std::filesystem::remove(dir);
    GTEST_SKIP() << "cannot mount a ramfs here (needs root): " << std::strerror(errno);
  }
  const std::string p = dir + "/weights.bin";
  std::filesystem::copy_file(path_, p);
  FakeDevice dev;
  UploadOptions o;
  o.mode = UploadOptions::ReadMode::kDirect;
  auto w = DeviceWeights::Load(dev, p, offsets_, sizes_, o);
  std::filesystem::remove(p);
  ::umount2(dir.c_str(), MNT_DETACH);
  std::filesystem::remove(dir);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectResidentAndEqual(dev, *w);
  EXPECT_NE(w->last_upload().mode.find("pread (O_DIRECT refused"), std::string::npos) << w->last_upload().mode;
}

// --- a snapshot section straight to the device ---

class UploadSectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("hotboot-gpu-section." + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    // bf16-looking weights with a run of zeros (a zero chunk) in the middle.
    std::mt19937 rng(5);
    std::normal_distribution<float> d(0.0f, 0.02f);
    for (int i = 0; i < 400'000; ++i) {
      float f = d(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const uint16_t h = static_cast<uint16_t>(u >> 16);
      weights_.append(reinterpret_cast<const char*>(&h), 2);
    }
    weights_.replace(200'000, 150'000, std::string(150'000, '\0'));
    weights_ += "odd";
    snapfile::SectionSource s;
    s.name = "weights/w.bin";
    s.bytes = weights_;
    s.elem = snapfile::ElemType::kBf16;
    snapfile::WriteOptions o;
    o.chunk_size = 64 << 10;
    path_ = (dir_ / "s.hbsnap").string();
    ASSERT_TRUE(snapfile::WriteSnapshot(path_, "{}", {s}, o).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Result<std::string> UploadAndRead(FakeDevice& dev, const UploadOptions& o) {
    HB_ASSIGN_OR_RETURN(auto r, snapfile::SnapshotReader::Open(path_));
    const size_t mapped = (weights_.size() + dev.granularity - 1) / dev.granularity * dev.granularity;
    HB_ASSIGN_OR_RETURN(DevicePtr va, dev.Reserve(mapped));
    HB_RETURN_IF_ERROR(dev.Map(va, mapped));
    Result<UploadStats> st = UploadSection(dev, *r, "weights/w.bin", va, o);
    std::string got(weights_.size(), '\0');
    Status read = dev.CopyToHost(got.data(), va, got.size());
    dev.Unmap(va, mapped);
    dev.FreeReservation(va, mapped);
    HB_RETURN_IF_ERROR(st.status());
    HB_RETURN_IF_ERROR(read);
    if (st->bytes != weights_.size() || st->mode != "snapshot") return Internal("stats: " + st->mode);
    return got;
  }

  std::filesystem::path dir_;
  std::string path_, weights_;
};

TEST_F(UploadSectionTest, TheDeviceGetsTheSectionsBytes) {
  FakeDevice dev;
  UploadOptions o;
  o.readers = 3;
  o.buffers = 5;
  auto got = UploadAndRead(dev, o);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(*got == weights_);
  EXPECT_LE(dev.pinned_peak, 5u * (64u << 10));
  EXPECT_EQ(dev.pinned_now, 0u);
}

TEST_F(UploadSectionTest, ADamagedChunkIsRefusedAndNothingStaysPinned) {
  uint64_t at = 0;
  {
    auto r = snapfile::SnapshotReader::Open(path_);
    ASSERT_TRUE(r.ok());
    const auto* s = (*r)->FindSection("weights/w.bin");
    ASSERT_GT(s->chunks.size(), 4u);
    const auto& c = s->chunks[3];
    ASSERT_GT(c.stored_size, 100u);
    at = c.offset + 40 + c.stored_size / 2;  // 40: the chunk record's header (SPEC.md)
  }
  const int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  char b;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(at)), 1);
  b ^= 0x40;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(at)), 1);
  ::close(fd);
  FakeDevice dev;
  auto got = UploadAndRead(dev, {});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Code::kCorrupt) << got.status().ToString();
  EXPECT_NE(got.status().message().find("piece 3 of"), std::string::npos) << got.status().message();
  EXPECT_NE(got.status().message().find("weights/w.bin"), std::string::npos) << got.status().message();
  EXPECT_EQ(dev.pinned_now, 0u);
}

TEST_F(UploadSectionTest, AMissingSectionIsNotFound) {
  auto r = snapfile::SnapshotReader::Open(path_);
  ASSERT_TRUE(r.ok());
  FakeDevice dev;
  auto st = UploadSection(dev, **r, "weights/none", 0, {});
  EXPECT_EQ(st.status().code(), Code::kNotFound);
}

TEST(GpuMemoryCuda, NoDriverHereIsNotFound) {
  auto d = OpenCudaDevice(0);
  if (d.ok()) GTEST_SKIP() << "a CUDA device is present: " << (*d)->Name();
  EXPECT_EQ(d.status().code(), Code::kNotFound) << d.status().ToString();
}

}  // namespace
}  // namespace hotboot::gpu
