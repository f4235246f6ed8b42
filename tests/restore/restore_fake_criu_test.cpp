// RestoreReplica's decisions with a fake CRIU that records calls and injects
// faults: nothing is touched when the host does not fit, a CRIU failure is
// reported with its log, and the unpack directory never outlives the call.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

#include <xxhash.h>

#include "hotboot/builder.h"
#include "hotboot/restore.h"
#include "hotboot/signing.h"
#include "hotboot/snapshot_file.h"
#include "../host/fake_cuda.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class FakeCriu : public Criu {
 public:
  std::string version = "4.2.1";
  Status restore_status = Internal("criu_restore failed (injected)");
  int restores = 0;
  std::vector<std::string> seen_files;

  Result<std::string> Version() override {
    if (version.empty()) return NotFound("no criu");
    return version;
  }
  Status Dump(const CriuDumpOptions&) override { return Internal("not used"); }
  Result<pid_t> Restore(const CriuRestoreOptions& o) override {
    ++restores;
    for (const auto& e : fs::recursive_directory_iterator(o.images_dir)) {
      seen_files.push_back(fs::relative(e.path(), o.images_dir).string());
    }
    if (hang && !o.cgroup.empty()) {
      // As CRIU 4.2.1 does when its restorer hits a BUG: a process in the
      // restore's cgroup that never returns; only ending the cgroup ends it.
      cgroup_seen = o.cgroup;
      pid_t child = ::fork();
      if (child == 0) {
        std::ofstream(o.cgroup + "/cgroup.procs") << ::getpid() << std::flush;
        for (;;) ::pause();
      }
      int status = 0;
      ::waitpid(child, &status, 0);
      return Internal("criu swrk ended by signal " + std::to_string(WTERMSIG(status)));
    }
    return restore_status;
  }
  bool hang = false;
  std::string cgroup_seen;
};

class RestoreFake : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hotboot-restore-fake." + std::to_string(::getpid()));
    fs::create_directories(dir_ / "work");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string WriteSnap(const Manifest& m) { return WriteRaw(ToJson(m)); }
  std::string WriteRaw(const std::string& manifest) {
    std::string p = (dir_ / "s.hbsnap").string();
    std::vector<snapfile::SectionSource> secs(2);
    secs[0].name = "criu/inventory.img";
    secs[0].bytes = "inventory";
    secs[1].name = "criu/pages-1.img";
    secs[1].bytes = std::string(1 << 20, '\0');
    EXPECT_TRUE(snapfile::WriteSnapshot(p, manifest, secs).ok());
    return p;
  }

  // A manifest this host fits (its own ISA flags, CRIU 4.2.1).
  Manifest Fitting() {
    HostInfo h = ReadHostInfo();
    Manifest m;
    m.host = ManifestHost{h.hostname, h.kernel, h.arch, h.cpu_model, h.cpus, {}};
    for (const auto& f : IsaFlags(h.cpu_flags)) m.host.isa_flags.push_back(f);
    m.criu.version = "4.2.1";
    m.process.command = {"/bin/true"};
    m.process.fd_keys = {"pipe:[1]", "pipe:[2]", "pipe:[3]"};
    m.warm.digest = "0123456789abcdef0123456789abcdef";
    m.warm.canary.prompt = "hi";
    m.warm.canary.max_tokens = 4;
    m.warm.canary.tokens = {1, 2, 3, 4};
    return m;
  }

  RestoreOptions Opts(const std::string& snap) {
    RestoreOptions o;
    o.snapshot_path = snap;
    o.port = 1;  // never bound: the fake fails before
    o.work_root = (dir_ / "work").string();
    return o;
  }

  bool WorkIsEmpty() { return fs::is_empty(dir_ / "work"); }

  fs::path dir_;
};

TEST_F(RestoreFake, IncompatibleHostTouchesNothing) {
  Manifest m = Fitting();
  m.host.isa_flags.push_back("avx10_imaginary");
  FakeCriu criu;
  auto r = RestoreReplica(Opts(WriteSnap(m)), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("avx10_imaginary"), std::string::npos);
  EXPECT_EQ(criu.restores, 0);
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, MissingCriuIsIncompatible) {
  FakeCriu criu;
  criu.version = "";
  auto r = RestoreReplica(Opts(WriteSnap(Fitting())), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("install-deps"), std::string::npos);
}

TEST_F(RestoreFake, CriuFailureIsReportedAndCleanedUp) {
  FakeCriu criu;
  RestoreOptions o = Opts(WriteSnap(Fitting()));
  o.port = 0;
  auto bad_port = RestoreReplica(o, criu, {});
  ASSERT_FALSE(bad_port.ok());
  EXPECT_EQ(bad_port.status().code(), Code::kInvalidArgument);

  o.port = 47311;
  auto r = RestoreReplica(o, criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("injected"), std::string::npos);
  EXPECT_EQ(criu.restores, 1);
  // The images were unpacked (prefix stripped) before CRIU saw them ...
  std::sort(criu.seen_files.begin(), criu.seen_files.end());
  EXPECT_EQ(criu.seen_files, (std::vector<std::string>{"inventory.img", "pages-1.img"}));
  // ... and removed afterwards.
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, AHangingCriuIsEndedAtTheCriuTimeout) {
  FakeCriu criu;
  criu.hang = true;
  RestoreOptions o = Opts(WriteSnap(Fitting()));
  o.port = 47312;
  o.criu_timeout = std::chrono::milliseconds(300);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RestoreReplica(o, criu, {});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (criu.cgroup_seen.empty()) GTEST_SKIP() << "no writable cgroup2 here: the restore runs without a cgroup of its own";
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kTimeout) << r.status().message();
  EXPECT_NE(r.status().message().find("did not finish within 300 ms"), std::string::npos) << r.status().message();
  EXPECT_LT(s, 30.0) << "the watchdog ended the hanging CRIU";
  EXPECT_FALSE(fs::exists(criu.cgroup_seen)) << "the restore's cgroup is removed";
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, NotAManifestIsCorrupt) {
  FakeCriu criu;
  auto r = RestoreReplica(Opts(WriteRaw(R"({"format":"something-else"})")), criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_EQ(criu.restores, 0);
  EXPECT_TRUE(WorkIsEmpty());
}

// Issue 12: a provided file goes only into this host's weights directory,
// under its content-hash name, checked by formats before it is renamed into
// place; a file of that name but another size is replaced; a snapshot built
// with another weights directory is refused before anything is written.
TEST_F(RestoreFake, ProvidedFilesGoOnlyIntoTheWeightsDirectoryByContentHash) {
  std::string weights(3 << 20, 'w');
  weights[12345] = 'x';
  const XXH128_hash_t h = XXH3_128bits(weights.data(), weights.size());
  const std::string hash = snapfile::Digest128{h.high64, h.low64}.Hex();
  const std::string name = "weights-" + hash + ".bin";
  const fs::path wdir = dir_ / "weights";
  Manifest m = Fitting();
  m.process.provided_files = {{name, weights.size(), "weights/" + name, hash}};
  m.process.weights_dir = wdir.string();
  std::vector<snapfile::SectionSource> secs(2);
  secs[0].name = "criu/inventory.img";
  secs[0].bytes = "inventory";
  secs[1].name = "weights/" + name;
  secs[1].bytes = weights;
  const std::string snap = (dir_ / "w.hbsnap").string();
  ASSERT_TRUE(snapfile::WriteSnapshot(snap, ToJson(m), secs).ok());

  const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  FakeCriu criu;
  RestoreOptions o = Opts(snap);
  o.port = 47313;
  // Another weights directory here than at build: refused, nothing made.
  ::setenv("HOTBOOT_WEIGHTS_DIR", (dir_ / "other").c_str(), 1);
  auto r = RestoreReplica(o, criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("set HOTBOOT_WEIGHTS_DIR=" + wdir.string()), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(dir_ / "other"));
  EXPECT_EQ(criu.restores, 0);

  // The same directory: extracted there (a 0755 directory, the file by its
  // content hash, nothing else), then CRIU (the fake fails).
  ::setenv("HOTBOOT_WEIGHTS_DIR", wdir.c_str(), 1);
  r = RestoreReplica(o, criu, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("injected"), std::string::npos) << r.status().message();
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(wdir)) files.push_back(e.path().filename().string());
  EXPECT_EQ(files, std::vector<std::string>{name});
  std::ifstream in(wdir / name, std::ios::binary);
  EXPECT_TRUE(std::string(std::istreambuf_iterator<char>(in), {}) == weights);
  EXPECT_EQ(fs::status(wdir).permissions(), fs::perms(0755));

  // A file of the right name but another size there is replaced.
  fs::resize_file(wdir / name, 10);
  r = RestoreReplica(o, criu, {});
  EXPECT_EQ(fs::file_size(wdir / name), weights.size());
  saved ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
  EXPECT_TRUE(WorkIsEmpty());
}

// Issue 12, point 8: XXH3-128 names are no proof against an attacker. Under
// a trust policy, a weights file that an unsigned snapshot put in the
// directory is not reused: the signed snapshot's own section replaces it
// (checked by its chunk SHA-256s as decoded) and is marked; the next signed
// restore reuses the marked file.
TEST_F(RestoreFake, Issue12_ASignedRestoreDoesNotReuseAFileAnUnsignedOnePut) {
  const std::string weights(1 << 20, 's');
  const XXH128_hash_t h = XXH3_128bits(weights.data(), weights.size());
  const std::string hash = snapfile::Digest128{h.high64, h.low64}.Hex();
  const std::string name = "weights-" + hash + ".bin";
  const fs::path wdir = dir_ / "weights";
  Manifest m = Fitting();
  m.process.provided_files = {{name, weights.size(), "weights/" + name, hash}};
  m.process.weights_dir = wdir.string();
  std::vector<snapfile::SectionSource> secs(2);
  secs[0].name = "criu/inventory.img";
  secs[0].bytes = "inventory";
  secs[1].name = "weights/" + name;
  secs[1].bytes = weights;
  const std::string snap = (dir_ / "signed.hbsnap").string();
  ASSERT_TRUE(snapfile::WriteSnapshot(snap, ToJson(m), secs).ok());

  const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  ::setenv("HOTBOOT_WEIGHTS_DIR", wdir.c_str(), 1);
  auto inode = [&] {
    struct stat st{};
    ::stat((wdir / name).c_str(), &st);
    return st.st_ino;
  };
  FakeCriu criu;
  RestoreOptions o = Opts(snap);
  o.port = 47314;
  (void)RestoreReplica(o, criu, {});  // no policy: extracted, not marked
  ASSERT_TRUE(fs::exists(wdir / name));
  EXPECT_FALSE(fs::exists(wdir / ("." + name + ".signed")));
  const auto unsigned_inode = inode();

  const std::string key = (dir_ / "k").string();
  ASSERT_TRUE(snapfile::GenerateKeyPair(key).ok());
  auto pk = snapfile::LoadPrivateKey(key);
  ASSERT_TRUE(pk.ok());
  ASSERT_TRUE(snapfile::SignSnapshot(snap, *pk).ok());
  auto policy = snapfile::LoadTrustPolicy({key + ".pub"}, "");
  ASSERT_TRUE(policy.ok()) << policy.status().ToString();
  o.trust = *policy;
  auto r = RestoreReplica(o, criu, {});
  EXPECT_NE(r.status().message().find("injected"), std::string::npos) << r.status().message();
  EXPECT_NE(inode(), unsigned_inode) << "the unsigned restore's file was reused under a trust policy";
  EXPECT_TRUE(fs::exists(wdir / ("." + name + ".signed")));
  const auto signed_inode = inode();
  r = RestoreReplica(o, criu, {});
  EXPECT_EQ(inode(), signed_inode) << "a file the signed restore marked is reused";
  saved ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
}

Manifest GpuManifest(Manifest m, const std::string& name) {
  const GpuDevice d = test::FakeCudaDriver::Device(0, "GPU-11111111-2222-3333-4444-555555555555", name);
  m.gpu.emplace();
  m.gpu->driver_version = "580.65.06";
  m.gpu->processes = 1;
  m.gpu->devices = {{d.ordinal, d.uuid, d.name, d.cc_major, d.cc_minor, d.total_bytes, 8ull << 30}};
  return m;
}

TEST_F(RestoreFake, GpuSnapshotOnAHostWithoutADriverTouchesNothing) {
  FakeCriu criu;
  auto r = RestoreReplica(Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA H100 80GB HBM3"))), criu, {}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("GPU state of 1 CUDA process(es) on 1 GPU(s) (NVIDIA H100 80GB HBM3); this "
                                      "host has no usable NVIDIA driver"),
            std::string::npos)
      << r.status().message();
  EXPECT_EQ(criu.restores, 0);
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, GpuOfAnotherModelOrDriverBranchIsRefusedBeforeTouchingAnything) {
  FakeCriu criu;
  test::FakeCudaDriver cuda;
  cuda.devices = {test::FakeCudaDriver::Device(0, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "NVIDIA L4")};
  auto r = RestoreReplica(Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA H100 80GB HBM3"))), criu, {}, &cuda);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kIncompatible);
  EXPECT_NE(r.status().message().find("GPU 0 is NVIDIA L4"), std::string::npos) << r.status().message();

  cuda.driver_version = "570.133.20";
  auto branch = RestoreReplica(Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA L4"))), criu, {}, &cuda);
  ASSERT_FALSE(branch.ok());
  EXPECT_NE(branch.status().message().find("captured with NVIDIA driver 580.65.06; this host runs 570.133.20"),
            std::string::npos)
      << branch.status().message();
  EXPECT_EQ(criu.restores, 0);
  EXPECT_EQ(std::count(cuda.calls.begin(), cuda.calls.end(), "restore"), 0);
  EXPECT_TRUE(WorkIsEmpty());
}

TEST_F(RestoreFake, GpuOfTheSameModelElsewhereGetsPairedAndReachesCriu) {
  FakeCriu criu;
  test::FakeCudaDriver cuda;
  cuda.devices = {test::FakeCudaDriver::Device(0, "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")};
  RestoreOptions o = Opts(WriteSnap(GpuManifest(Fitting(), "NVIDIA H100 80GB HBM3")));
  o.port = 47312;
  auto r = RestoreReplica(o, criu, {}, &cuda);
  ASSERT_FALSE(r.ok());  // the fake CRIU fails after the check passed
  EXPECT_NE(r.status().message().find("injected"), std::string::npos);
  EXPECT_EQ(criu.restores, 1);
}

}  // namespace
}  // namespace hotboot
