// Issue 12: hostile snapshots. Every snapshot here has valid checksums
// everywhere (the tiny snapshot's real CRIU images and weights, repacked with
// snapfile::WriteSnapshot under a manifest the test writes), so only the
// manifest's content is hostile. Each case runs the real CLI (restore, and
// verify and inspect where the manifest does not parse) as a subprocess and
// asserts: its exit code (4 corrupt, 3 incompatible; never a crash, 134 or
// 139), a message naming the field or the file, nothing written outside the
// work directory (the weights directory and every directory a manifest names
// are listed before and after), and no hotboot-server left running.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <set>

#include "hotboot/manifest.h"
#include "hotboot/node_cache.h"
#include "hotboot/snapshot_file.h"
#include "test_util.h"

namespace hotboot::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kExitIncompatible = 3;
constexpr int kExitCorrupt = 4;

// Every path under `root` (itself included when present), symlinks not followed.
std::set<std::string> Tree(const fs::path& root) {
  std::set<std::string> out;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(root, ec))) return out;
  out.insert(root.string());
  if (!fs::is_directory(fs::symlink_status(root, ec))) return out;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    out.insert(it->path().string());
  }
  return out;
}

// The PIDs of the hotboot-servers of the tiny model now running.
std::set<int> Servers() {
  std::set<int> n;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmd = ReadFile(e.path().string() + "/cmdline");
    if (cmd.find("hotboot-server") != std::string::npos && cmd.find(TinyModel()) != std::string::npos &&
        PidAlive(std::stoi(name))) {
      n.insert(std::stoi(name));
    }
  }
  return n;
}

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    TinySnapshot();  // built once, before HOTBOOT_WEIGHTS_DIR is set here
    root_ = fs::path(ScratchDir()) / ("hostile." + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    weights_ = root_ / "weights";     // this host's weights directory (test-owned)
    outside_ = root_ / "outside";     // where hostile manifests point: must stay absent
    const char* old = std::getenv("HOTBOOT_WEIGHTS_DIR");
    saved_ = old ? std::optional<std::string>(old) : std::nullopt;
    ::setenv("HOTBOOT_WEIGHTS_DIR", weights_.c_str(), 1);
    servers_before_ = Servers();
  }
  void TearDown() override {
    saved_ ? ::setenv("HOTBOOT_WEIGHTS_DIR", saved_->c_str(), 1) : ::unsetenv("HOTBOOT_WEIGHTS_DIR");
    // None new (one an earlier test left may have ended meanwhile).
    for (int pid : Servers()) EXPECT_TRUE(servers_before_.count(pid)) << "hotboot-server " << pid << " left running";
    fs::remove_all(root_);
  }

  // The tiny snapshot's manifest, rewritten as a version 2 manifest whose
  // weights directory is this test's.
  json Manifest() {
    auto rd = snapfile::SnapshotReader::Open(TinySnapshot());
    EXPECT_TRUE(rd.ok()) << rd.status().ToString();
    json m = json::parse((*rd)->manifest_json());
    m["process"]["weights_dir"] = weights_.string();
    // One mapped file that stays as it is while the suite runs (the build
    // directory's hotboot-server may be rebuilt by then).
    struct stat st{};
    ::stat("/bin/sh", &st);
    auto hash = HashPathXxh128("/bin/sh");
    EXPECT_TRUE(hash.ok());
    m["process"]["mapped_files"] = {{{"path", "/bin/sh"}, {"size", st.st_size}, {"content_hash", *hash}}};
    return m;
  }
  // The tiny snapshot's sections (checksums and content hashes all valid)
  // under `manifest_text`.
  std::string Repack(const std::string& name, const std::string& manifest_text) {
    auto rd = snapfile::SnapshotReader::Open(TinySnapshot());
    EXPECT_TRUE(rd.ok());
    std::vector<snapfile::SectionSource> secs;
    for (const auto& s : (*rd)->sections()) {
      auto bytes = (*rd)->ReadSection(s.name);
      EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
      snapfile::SectionSource src;
      src.name = s.name;
      src.bytes = std::move(*bytes);
      src.mode = s.mode;
      src.elem = s.elem;
      secs.push_back(std::move(src));
    }
    const std::string p = (root_ / name).string();
    Status w = snapfile::WriteSnapshot(p, manifest_text, secs);
    EXPECT_TRUE(w.ok()) << w.ToString();
    return p;
  }
  std::string Repack(const std::string& name, const json& m) { return Repack(name, m.dump()); }

  // `hotboot restore` refuses with `code`, naming `needle`; nothing appears
  // in the weights directory or outside, and no replica answers.
  void ExpectRestoreRefused(const std::string& snap, int code, const std::string& needle) {
    const auto before = Tree(weights_), outside_before = Tree(outside_);
    const int port = FreePort();
    CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach"}, 120);
    EXPECT_EQ(r.exit_code, code) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << "wanted '" << needle << "' in:\n" << r.err;
    EXPECT_EQ(Tree(weights_), before) << "restore wrote into the weights directory";
    EXPECT_EQ(Tree(outside_), outside_before) << "restore wrote where the manifest pointed";
    EXPECT_EQ(HttpStatus(port, "/livez"), -1);
  }
  // A manifest that does not parse: verify, inspect and restore all exit 4
  // naming the field.
  void ExpectUnparsable(const std::string& snap, const std::string& field) {
    for (const char* cmd : {"verify", "inspect"}) {
      CmdResult r = RunCmd({Bin("hotboot"), cmd, snap}, 120);
      EXPECT_EQ(r.exit_code, kExitCorrupt) << cmd << ": " << r.err;
      EXPECT_NE(r.err.find("manifest: " + field), std::string::npos) << cmd << " should name " << field << ":\n"
                                                                     << r.err;
    }
    ExpectRestoreRefused(snap, kExitCorrupt, "manifest: " + field);
  }

  fs::path root_, weights_, outside_;
  std::optional<std::string> saved_;
  std::set<int> servers_before_;
};

// The repack itself is sound: the unedited manifest verifies and inspects.
TEST_F(Hostile, TheRepackedSnapshotIsValid) {
  const std::string snap = Repack("control.hbsnap", Manifest());
  EXPECT_EQ(RunCmd({Bin("hotboot"), "verify", snap}).exit_code, 0);
  CmdResult in = RunCmd({Bin("hotboot"), "inspect", snap, "--json"});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  EXPECT_EQ(json::parse(in.out)["manifest"]["process"]["weights_dir"], weights_.string());
}

// A version 1 manifest (provided files by path, no content hashes) of the
// same snapshot still restores, under the content-hash rule.
TEST_F(Hostile, AVersion1ManifestStillRestores) {
  auto rd = snapfile::SnapshotReader::Open(TinySnapshot());
  ASSERT_TRUE(rd.ok());
  json v1 = json::parse((*rd)->manifest_json());
  const std::string dir = v1["process"]["weights_dir"];  // where the build's images map it
  v1["manifest_version"] = 1;
  v1["process"].erase("weights_dir");
  for (auto& f : v1["process"]["mapped_files"]) f.erase("content_hash");
  for (auto& f : v1["process"]["provided_files"]) {
    f = {{"path", dir + "/" + f["name"].get<std::string>()}, {"size", f["size"]}, {"section", f["section"]}};
  }
  const std::string snap = Repack("v1.hbsnap", v1);
  ::setenv("HOTBOOT_WEIGHTS_DIR", dir.c_str(), 1);
  const int port = FreePort();
  CmdResult r = RunCmd({Bin("hotboot"), "restore", snap, "--port", std::to_string(port), "--detach", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json out = json::parse(r.out, nullptr, false);
  EXPECT_EQ(HttpStatus(port, "/readyz"), 200);
  ::kill(out.value("pid", -1), SIGKILL);
  for (int i = 0; i < 50 && PidAlive(out.value("pid", -1)); ++i) ::usleep(100 * 1000);
}

// Version 1 manifests named provided files by path: absolute elsewhere,
// with "..", or not a content-hash name. Nothing is created there.
TEST_F(Hostile, ProvidedFilePathsOutsideTheWeightsDirectory) {
  json m = Manifest();
  const json f = m["process"]["provided_files"][0];
  const std::string name = f["name"];
  json v1 = m;
  v1["manifest_version"] = 1;
  v1["process"].erase("weights_dir");
  auto with_path = [&](const std::string& path) {
    json x = v1;
    x["process"]["provided_files"][0] = {{"path", path}, {"size", f["size"]}, {"section", f["section"]}};
    return x;
  };
  // Absolute, elsewhere, content-hash name: its directory is not this host's.
  ExpectRestoreRefused(Repack("abs.hbsnap", with_path((outside_ / "evil" / name).string())), kExitIncompatible,
                       "set HOTBOOT_WEIGHTS_DIR=" + (outside_ / "evil").string());
  // Any other name.
  ExpectUnparsable(Repack("abs-name.hbsnap", with_path((outside_ / "cron.d" / "job").string())),
                   "process.provided_files[0].path");
  // "..": out of the weights directory.
  ExpectUnparsable(Repack("dotdot.hbsnap", with_path(weights_.string() + "/../outside/" + name)),
                   "process.provided_files[0].path");
  // Version 2: a name with a path in it, or a weights directory elsewhere.
  json v2 = m;
  v2["process"]["provided_files"][0]["name"] = "../outside/" + name;
  v2["process"]["provided_files"][0]["section"] = "weights/../outside/" + name;
  ExpectUnparsable(Repack("v2-name.hbsnap", v2), "process.provided_files[0].name");
  v2 = m;
  v2["process"]["weights_dir"] = outside_.string();
  ExpectRestoreRefused(Repack("v2-dir.hbsnap", v2), kExitIncompatible, "process.weights_dir");
  EXPECT_FALSE(fs::exists(outside_));
}

// The weights directory itself: a planted symlink in it, the directory a
// symlink, group-writable, or made first by another user.
TEST_F(Hostile, AnUnsafeWeightsDirectoryIsRefused) {
  const std::string snap = Repack("ok.hbsnap", Manifest());
  const std::string name = Manifest()["process"]["provided_files"][0]["name"];
  fs::create_directories(outside_);
  const auto outside_tree = Tree(outside_);

  fs::create_directory(weights_);
  ::chmod(weights_.c_str(), 0755);
  fs::create_symlink(outside_ / "target.bin", weights_ / name);
  ExpectRestoreRefused(snap, kExitIncompatible, "is not a regular file");
  EXPECT_FALSE(fs::exists(outside_ / "target.bin"));
  fs::remove_all(weights_);

  fs::create_directory_symlink(outside_, weights_);
  ExpectRestoreRefused(snap, kExitIncompatible, "is a symbolic link");
  fs::remove(weights_);

  fs::create_directory(weights_);
  ::chmod(weights_.c_str(), 0775);
  ExpectRestoreRefused(snap, kExitIncompatible, "chmod go-w " + weights_.string());

  ::chmod(weights_.c_str(), 0755);
  ASSERT_EQ(::chown(weights_.c_str(), 65534, 65534), 0);
  ExpectRestoreRefused(snap, kExitIncompatible, "owned by uid 65534");
  EXPECT_EQ(Tree(outside_), outside_tree);
}

// A wrong JSON type and a missing field in every object of the manifest.
TEST_F(Hostile, WrongTypesAndMissingFieldsInEveryObject) {
  json coop = Manifest();
  json transparent = coop;
  transparent["mode"] = "transparent";
  transparent["http"] = {{"port", 8000}, {"ready_path", "/health"}, {"after_restore", {{"path", "/ar"}}}};
  transparent["warm"]["canary"] = {{"request", {{"method", "POST"}, {"path", "/g"}}}, {"expected", "x"}};
  transparent["gpu"] = {{"processes", 1},
                        {"devices", {{{"ordinal", 0}, {"uuid", "GPU-1"}, {"name", "H100"}, {"compute_capability", "9.0"}}}}};
  struct Case {
    const json* base;
    std::string pointer;  // a field of the object
    std::string path;     // as the message names it
  };
  const std::vector<Case> cases = {
      {&coop, "/process/cwd", "process.cwd"},
      {&coop, "/server/build_port", "server.build_port"},
      {&coop, "/warm/digest", "warm.digest"},
      {&coop, "/warm/canary/max_tokens", "warm.canary.max_tokens"},
      {&coop, "/criu/version", "criu.version"},
      {&coop, "/host/arch", "host.arch"},
      {&transparent, "/http/port", "http.port"},
      {&transparent, "/gpu/processes", "gpu.processes"},
      {&coop, "/process/provided_files/0/size", "process.provided_files[0].size"},
      {&coop, "/process/mapped_files/0/path", "process.mapped_files[0].path"},
  };
  int i = 0;
  for (const auto& c : cases) {
    json bad = *c.base;
    const json::json_pointer ptr(c.pointer);
    bad[ptr] = bad[ptr].is_string() ? json({{"not", "a string"}}) : json("not a number");
    ExpectUnparsable(Repack("type-" + std::to_string(i) + ".hbsnap", bad), c.path + ": expected");
    // Missing (for the required ones; the optional ones then take defaults).
    json gone = *c.base;
    gone[ptr.parent_pointer()].erase(ptr.back());
    if (!ParseManifest(gone.dump()).ok()) {
      ExpectUnparsable(Repack("missing-" + std::to_string(i) + ".hbsnap", gone), c.path + ": missing");
    }
    ++i;
  }
  // A whole object of the wrong type.
  for (const std::string key : {"process", "server", "warm", "criu", "host"}) {
    json bad = coop;
    bad[key] = json::array({1, 2});
    ExpectUnparsable(Repack("object-" + key + ".hbsnap", bad), key + ": expected an object, got an array");
  }
}

// Sizes and counts beyond any host: refused before a byte is written.
TEST_F(Hostile, ClaimsBeyondTheHost) {
  json m = Manifest();
  m["process"]["provided_files"][0]["size"] = uint64_t{1} << 50;  // 1 PiB
  ExpectRestoreRefused(Repack("pib.hbsnap", m), kExitIncompatible, "claim 1125899906842624 bytes");
  m["process"]["provided_files"][0]["size"] = (uint64_t{1} << 50) + 1;
  ExpectUnparsable(Repack("over.hbsnap", m), "process.provided_files[0].size");

  // A million mapped files ({} each, so the manifest stays within the
  // format's 16 MiB): refused by count before any element is read.
  std::string text = Manifest().dump();
  const std::string key = "\"mapped_files\":[";
  const size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos);
  std::string many;
  many.reserve(3'000'000);
  for (int i = 0; i < 1'000'000; ++i) many += "{},";
  text.insert(at + key.size(), many);
  ExpectUnparsable(Repack("million.hbsnap", text), "process.mapped_files: 1000001 elements");

  // A claim larger than the weights directory's free space (a 4 MiB tmpfs).
  fs::create_directories(weights_);
  if (::mount("tmpfs", weights_.c_str(), "tmpfs", 0, "size=4m,mode=0755") != 0) {
    GTEST_SKIP() << "mount tmpfs: needs root";
  }
  ExpectRestoreRefused(Repack("nospace.hbsnap", Manifest()), kExitIncompatible, "bytes free");
  ::umount(weights_.c_str());
}

}  // namespace
}  // namespace hotboot::test
