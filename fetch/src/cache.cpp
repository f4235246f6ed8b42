// The node cache (hotboot/cache.h): blobs named by their SHA-256, fetched
// once per host under an flock, listed, collected and pruned together with
// the weights directory.
//
// Every name here comes from a validated digest or from our own counter, and
// every open is relative to the cache's directory fd without following a
// symlink: the directory is ours (checked at Open), so no one else names a
// file in it.
#include "hotboot/cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "hotboot/job.h"
#include "hotboot/node_cache.h"
#include "hotboot/oci.h"

namespace hotboot::fetch {

namespace {

using json = nlohmann::json;

constexpr const char* kBlobDir = "blobs/sha256";
constexpr size_t kHashBlock = 4u << 20;
constexpr uint64_t kMaxRefFile = 8u << 20;  // a manifest is at most 4 MiB (oci.h), plus our fields

// Closes an fd when it leaves scope.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

bool IsLowerHex(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The 64 hex digits of a valid digest, or kInvalidArgument.
Result<std::string> HexOf(const std::string& digest) {
  if (!IsValidDigest(digest)) {
    std::string shown = digest.substr(0, 100);
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return InvalidArgument("'" + shown + "' is not a digest the node cache accepts: only sha256: followed by 64 "
                           "lowercase hex digits (the digest of a manifest or blob names a file here)");
  }
  return digest.substr(7);
}

std::string ToHex(const unsigned char* d, unsigned n) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (unsigned i = 0; i < n; ++i) {
    s.push_back(kHex[d[i] >> 4]);
    s.push_back(kHex[d[i] & 15]);
  }
  return s;
}

std::string Sha256Hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
  return ToHex(md, n);
}

// SHA-256 of a whole file, read with pread in 4 MiB blocks.
Result<std::string> Sha256OfFd(int fd, const std::string& what) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return ErrnoError("stat " + what, errno);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Internal("OpenSSL: SHA-256 unavailable");
  std::vector<char> buf(kHashBlock);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  for (uint64_t off = 0; off < size;) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kHashBlock, size - off));
    const ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read " + what + " at byte " + std::to_string(off), errno);
    }
    if (n == 0) return Truncated(what + " ended at byte " + std::to_string(off) + " of " + std::to_string(size));
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  return ToHex(md, n);
}

int FlockRetry(int fd, int op) {
  int rc;
  do rc = ::flock(fd, op);
  while (rc != 0 && errno == EINTR);
  return rc;
}

// Files any running process maps, by device and inode (/proc/*/maps): what
// a replica maps stays in use under whatever name it now has.
class MapsIndex {
 public:
  static MapsIndex Scan() {
    MapsIndex idx;
    DIR* proc = ::opendir("/proc");
    if (!proc) return idx;
    while (dirent* e = ::readdir(proc)) {
      if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
      const std::string path = std::string("/proc/") + e->d_name + "/maps";
      FILE* f = std::fopen(path.c_str(), "re");
      if (!f) continue;  // gone, or not ours to read
      char line[4096];
      while (std::fgets(line, sizeof line, f)) {
        unsigned maj = 0, min = 0;
        unsigned long long ino = 0;
        if (std::sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &ino) == 3 && ino != 0) {
          idx.mapped_.insert({makedev(maj, min), static_cast<ino_t>(ino)});
        }
        // A line longer than the buffer: skip its rest.
        while (!std::strchr(line, '\n') && std::fgets(line, sizeof line, f)) {
        }
      }
      std::fclose(f);
    }
    ::closedir(proc);
    return idx;
  }
  bool Mapped(const struct stat& st) const { return mapped_.count({st.st_dev, st.st_ino}) > 0; }

 private:
  std::set<std::pair<dev_t, ino_t>> mapped_;
};

// True when process `pid` has the file (dev, ino) open.
bool HoldsOpen(pid_t pid, const struct stat& file) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return false;
  bool found = false;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    struct stat st{};
    if (::stat((dir + "/" + e->d_name).c_str(), &st) == 0 && st.st_dev == file.st_dev && st.st_ino == file.st_ino) {
      found = true;
      break;
    }
  }
  ::closedir(d);
  return found;
}

// "<hex>.<pid>.<n>" -> hex and pid.
bool ParsePartialName(const std::string& name, std::string* hex, pid_t* pid) {
  const size_t a = name.find('.');
  if (a != 64) return false;
  const size_t b = name.find('.', a + 1);
  if (b == std::string::npos || b == a + 1 || b + 1 >= name.size()) return false;
  const std::string h = name.substr(0, 64), p = name.substr(a + 1, b - a - 1), n = name.substr(b + 1);
  auto digits = [](const std::string& s) { return !s.empty() && s.size() <= 10 && std::all_of(s.begin(), s.end(), ::isdigit); };
  if (!IsLowerHex(h) || !digits(p) || !digits(n)) return false;
  *hex = h;
  *pid = static_cast<pid_t>(std::stoll(p));
  return true;
}

bool IsWeightsName(const std::string& name) {
  return name.size() > 12 && name.rfind("weights-", 0) == 0 && name.compare(name.size() - 4, 4, ".bin") == 0 &&
         name.find('/') == std::string::npos;
}

std::string SidecarName(const std::string& weights) { return "." + weights + ".signed"; }

uint64_t Allocated(const struct stat& st) { return static_cast<uint64_t>(st.st_blocks) * 512; }

// Names in a directory relative to `dir_fd` (empty when it is missing).
std::vector<std::string> Names(int dir_fd, const char* sub) {
  std::vector<std::string> out;
  const int fd = ::openat(dir_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return out;
  DIR* d = ::fdopendir(fd);
  if (!d) {
    ::close(fd);
    return out;
  }
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) out.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The cache directory itself, checked the way SafeDir checks the weights
// directory, with messages that name the cache.
Status CheckCacheDirFd(int fd, const std::string& path) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return ErrnoError("stat " + path, errno);
  if (!S_ISDIR(st.st_mode)) return Incompatible("the cache directory " + path + " is not a directory: remove it");
  const uid_t euid = ::geteuid();
  if (st.st_uid != euid) {
    return Incompatible("the cache directory " + path + " is owned by uid " + std::to_string(st.st_uid) +
                        ", not by uid " + std::to_string(euid) + " (this process): remove it (rm -r " + path +
                        "), give it to uid " + std::to_string(euid) + " (chown -R " + std::to_string(euid) + " " +
                        path + ") if you trust what is in it, or use another (--cache-dir, HOTBOOT_CACHE_DIR)");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Incompatible("the cache directory " + path + " (mode " + mode +
                        ") is writable by group or others, who could plant or replace the blobs restores read: "
                        "chmod go-w " + path);
  }
  return Status::Ok();
}

// mkdirat + a check that what is there is a real directory.
Status MakeSubdir(int dir_fd, const std::string& root, const char* sub) {
  if (::mkdirat(dir_fd, sub, 0755) != 0 && errno != EEXIST) return ErrnoError("mkdir " + root + "/" + sub, errno);
  struct stat st{};
  if (::fstatat(dir_fd, sub, &st, AT_SYMLINK_NOFOLLOW) != 0) return ErrnoError("stat " + root + "/" + sub, errno);
  if (!S_ISDIR(st.st_mode)) {
    return Incompatible(root + "/" + sub + " is not a directory (hotboot makes only directories there): remove it");
  }
  return Status::Ok();
}

// What a lock file's state is.
enum class LockState { kAbsent, kFree, kHeld };

// Tries LOCK_EX|LOCK_NB on locks/<hex>.lock. With `create` the file is made
// when missing, and on kFree *held keeps the fd (locked) for the caller.
LockState TryLock(int dir_fd, const std::string& hex, bool create, Fd* held) {
  if (dir_fd < 0) return LockState::kAbsent;
  const std::string name = "locks/" + hex + ".lock";
  const int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (create ? O_CREAT : 0);
  Fd fd(::openat(dir_fd, name.c_str(), flags, 0644));
  if (fd.get() < 0) return LockState::kAbsent;
  if (FlockRetry(fd.get(), LOCK_EX | LOCK_NB) != 0) return LockState::kHeld;
  if (held) *held = std::move(fd);
  return LockState::kFree;
}

std::string LockName(const std::string& hex) { return "locks/" + hex + ".lock"; }

// Blob digests a recorded reference lists, and the references per digest.
struct RefIndex {
  std::map<std::string, std::vector<std::string>> refs_of;  // digest -> references
};

// The digests a manifest lists (config and layers), by the one manifest
// parser (oci.h), which checks each; none when it does not parse.
std::vector<std::string> ManifestDigests(const json& m) {
  std::vector<std::string> out;
  auto parsed = OciManifest::Parse(m.dump());
  if (!parsed.ok()) return out;
  out.push_back(parsed->config.digest);
  for (const auto& l : parsed->layers) out.push_back(l.digest);
  return out;
}

Result<std::string> ReadSmallAt(int dir_fd, const std::string& name, uint64_t cap) {
  Fd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError("open " + name, errno);
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat " + name, errno);
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > cap) {
    return Corrupt(name + " is not a regular file of at most " + std::to_string(cap) + " bytes");
  }
  std::string s(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < s.size()) {
    const ssize_t n = ::pread(fd.get(), s.data() + got, s.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoError("read " + name, n < 0 ? errno : EIO);
    got += static_cast<size_t>(n);
  }
  return s;
}

// Every refs/*.json that parses; a damaged one lists nothing (and so
// protects nothing: gc then treats its blobs as unreferenced).
RefIndex ReadRefs(int dir_fd) {
  RefIndex idx;
  if (dir_fd < 0) return idx;
  for (const std::string& name : Names(dir_fd, "refs")) {
    if (name.size() != 69 || name.compare(64, 5, ".json") != 0) continue;
    auto text = ReadSmallAt(dir_fd, "refs/" + name, kMaxRefFile);
    if (!text.ok()) continue;
    const json j = json::parse(*text, nullptr, false);
    if (!j.is_object() || !j.contains("ref") || !j["ref"].is_string()) continue;
    const std::string ref = j["ref"].get<std::string>();
    std::vector<std::string> digests = j.contains("manifest") ? ManifestDigests(j["manifest"]) : std::vector<std::string>{};
    if (j.contains("digest") && j["digest"].is_string() && IsValidDigest(j["digest"].get<std::string>())) {
      digests.push_back(j["digest"].get<std::string>());
    }
    for (const auto& d : digests) {
      auto& v = idx.refs_of[d];
      if (std::find(v.begin(), v.end(), ref) == v.end()) v.push_back(ref);
    }
  }
  return idx;
}

// One thing on disk, with what gc and prune need besides the CacheItem.
struct Entry {
  CacheItem item;
  std::string hex;       // blobs and partials
  pid_t owner = 0;       // partials
  struct stat st{};
};

// The cache's blobs and partials (dir_fd < 0: none).
std::vector<Entry> ScanCache(int dir_fd, const std::string& dir, const RefIndex& refs, const MapsIndex& maps) {
  std::vector<Entry> out;
  if (dir_fd < 0) return out;
  for (const std::string& hex : Names(dir_fd, kBlobDir)) {
    if (hex.size() != 64 || !IsLowerHex(hex)) continue;
    Entry e;
    const std::string rel = std::string(kBlobDir) + "/" + hex;
    if (::fstatat(dir_fd, rel.c_str(), &e.st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(e.st.st_mode)) continue;
    e.hex = hex;
    e.item.kind = "blob";
    e.item.name = "sha256:" + hex;
    e.item.path = dir + "/" + rel;
    e.item.bytes = Allocated(e.st);
    e.item.last_used_unix = e.st.st_mtim.tv_sec;
    e.item.in_use = maps.Mapped(e.st) || TryLock(dir_fd, hex, false, nullptr) == LockState::kHeld;
    if (auto it = refs.refs_of.find(e.item.name); it != refs.refs_of.end()) e.item.refs = it->second;
    out.push_back(std::move(e));
  }
  for (const std::string& name : Names(dir_fd, "tmp")) {
    Entry e;
    if (!ParsePartialName(name, &e.hex, &e.owner)) continue;  // not ours: left alone
    const std::string rel = "tmp/" + name;
    if (::fstatat(dir_fd, rel.c_str(), &e.st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(e.st.st_mode)) continue;
    e.item.kind = "partial";
    e.item.name = name;
    e.item.path = dir + "/" + rel;
    e.item.bytes = Allocated(e.st);
    e.item.last_used_unix = e.st.st_mtim.tv_sec;
    // Being written: its owner holds it open, or someone fetches that blob
    // now (a process in another pid namespace shows as the lock alone).
    e.item.in_use = HoldsOpen(e.owner, e.st) || TryLock(dir_fd, e.hex, false, nullptr) == LockState::kHeld;
    out.push_back(std::move(e));
  }
  return out;
}

// The weights directory's weights-*.bin files (their .signed sidecars are
// part of them). A missing directory, or "none", holds none.
Result<std::vector<Entry>> ScanWeights(const std::string& weights_dir, const MapsIndex& maps, SafeDir* opened) {
  std::vector<Entry> out;
  if (weights_dir.empty() || weights_dir == "none") return out;
  struct stat probe{};
  if (::lstat(weights_dir.c_str(), &probe) != 0 && errno == ENOENT) return out;
  HB_ASSIGN_OR_RETURN(SafeDir d, SafeDir::Open(weights_dir, /*create=*/false));
  for (const std::string& name : Names(d.fd(), ".")) {
    if (!IsWeightsName(name)) continue;
    Entry e;
    if (::fstatat(d.fd(), name.c_str(), &e.st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(e.st.st_mode)) continue;
    e.item.kind = "weights";
    e.item.name = name;
    e.item.path = d.PathOf(name);
    e.item.bytes = Allocated(e.st);
    e.item.last_used_unix = e.st.st_mtim.tv_sec;
    e.item.in_use = maps.Mapped(e.st);
    out.push_back(std::move(e));
  }
  if (opened) *opened = std::move(d);
  return out;
}

bool KindOrder(const CacheItem& a, const CacheItem& b) {
  auto rank = [](const std::string& k) { return k == "blob" ? 0 : k == "partial" ? 1 : 2; };
  if (rank(a.kind) != rank(b.kind)) return rank(a.kind) < rank(b.kind);
  return a.name < b.name;
}

}  // namespace

std::string ResolveCacheDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("HOTBOOT_CACHE_DIR");
  return env && *env ? env : kDefaultCacheDir;
}

bool IsValidDigest(const std::string& digest) {
  return digest.size() == 71 && digest.rfind("sha256:", 0) == 0 && IsLowerHex(digest.substr(7));
}

BlobLock& BlobLock::operator=(BlobLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

BlobLock::~BlobLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

NodeCache::~NodeCache() {
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

Result<std::unique_ptr<NodeCache>> NodeCache::Open(const std::string& dir) { return Open(dir, true); }

Result<std::unique_ptr<NodeCache>> NodeCache::Open(const std::string& dir_in, bool create) {
  if (dir_in.empty() || dir_in[0] != '/') {
    return InvalidArgument("the cache directory '" + dir_in + "' must be an absolute path (--cache-dir, HOTBOOT_CACHE_DIR)");
  }
  std::string dir = std::filesystem::path(dir_in).lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::unique_ptr<NodeCache> c(new NodeCache());
  c->dir_ = dir;
  bool made = false;
  if (create) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ec);
    if (::mkdir(dir.c_str(), 0755) == 0) {
      made = true;
    } else if (errno != EEXIST) {
      return ErrnoError("create the cache directory " + dir, errno);
    }
  }
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    struct stat st{};
    if (!create && err == ENOENT) return c;  // an empty cache, not made
    if (::lstat(dir.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      return Incompatible("the cache directory " + dir + " is a symbolic link, which hotboot does not follow " +
                          "(someone may steer its writes elsewhere): remove it (rm " + dir + ") or name the real one");
    }
    if (err == ENOTDIR) return Incompatible("the cache directory " + dir + " is not a directory: remove it");
    return ErrnoError("open the cache directory " + dir, err);
  }
  if (made) ::fchmod(fd.get(), 0755);  // the umask may have taken bits from 0755
  HB_RETURN_IF_ERROR(CheckCacheDirFd(fd.get(), dir));
  if (create) {
    for (const char* sub : {"blobs", kBlobDir, "tmp", "locks", "refs"}) HB_RETURN_IF_ERROR(MakeSubdir(fd.get(), dir, sub));
  }
  c->dir_fd_ = fd.release();
  return c;
}

void NodeCache::SetJob(std::shared_ptr<host::Job> job) { job_ = std::move(job); }

std::optional<std::string> NodeCache::Find(const std::string& digest) {
  auto hex = HexOf(digest);
  if (!hex.ok() || dir_fd_ < 0) return std::nullopt;
  const std::string rel = std::string(kBlobDir) + "/" + *hex;
  struct stat st{};
  if (::fstatat(dir_fd_, rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  const struct timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
  ::utimensat(dir_fd_, rel.c_str(), times, AT_SYMLINK_NOFOLLOW);  // best effort: last use for prune
  return dir_ + "/" + rel;
}

namespace {

// Blocks until locks/<hex>.lock is locked with `op` (LOCK_EX or LOCK_SH;
// with LOCK_NB it answers -1 instead of blocking).
// gc removes a lock file it could lock exclusively; one who opened it just
// before and then got the lock holds an unlinked inode, so the lock counts
// only when the name still leads to the locked inode (else: again).
Result<int> LockBlob(int dir_fd, const std::string& dir, const std::string& hex, int op) {
  const std::string name = LockName(hex);
  for (;;) {
    Fd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd.get() < 0) return ErrnoError("open the lock file " + dir + "/" + name, errno);
    if (FlockRetry(fd.get(), op) != 0) {
      if ((op & LOCK_NB) && errno == EWOULDBLOCK) return -1;
      return ErrnoError("flock " + dir + "/" + name, errno);
    }
    struct stat held{}, now{};
    if (::fstat(fd.get(), &held) != 0) return ErrnoError("stat " + dir + "/" + name, errno);
    if (::fstatat(dir_fd, name.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == held.st_dev &&
        now.st_ino == held.st_ino) {
      return fd.release();
    }
  }
}

}  // namespace

Result<BlobLock> NodeCache::LockExclusive(const std::string& digest) {
  HB_ASSIGN_OR_RETURN(std::string hex, HexOf(digest));
  if (dir_fd_ < 0) return FailedPrecondition("the cache directory " + dir_ + " was not created (opened for reading only)");
  HB_ASSIGN_OR_RETURN(int fd, LockBlob(dir_fd_, dir_, hex, LOCK_EX));
  return BlobLock(fd);
}

Result<std::optional<BlobLock>> NodeCache::TryLockExclusive(const std::string& digest) {
  HB_ASSIGN_OR_RETURN(std::string hex, HexOf(digest));
  if (dir_fd_ < 0) return FailedPrecondition("the cache directory " + dir_ + " was not created (opened for reading only)");
  HB_ASSIGN_OR_RETURN(int fd, LockBlob(dir_fd_, dir_, hex, LOCK_EX | LOCK_NB));
  if (fd < 0) return std::optional<BlobLock>();
  return std::optional<BlobLock>(BlobLock(fd));
}

Result<BlobLock> NodeCache::LockShared(const std::string& digest) {
  HB_ASSIGN_OR_RETURN(std::string hex, HexOf(digest));
  if (dir_fd_ < 0) return FailedPrecondition("the cache directory " + dir_ + " was not created (opened for reading only)");
  HB_ASSIGN_OR_RETURN(int fd, LockBlob(dir_fd_, dir_, hex, LOCK_SH));
  return BlobLock(fd);
}

Result<PartialBlob> NodeCache::NewPartial(const std::string& digest, uint64_t size) {
  HB_ASSIGN_OR_RETURN(std::string hex, HexOf(digest));
  if (dir_fd_ < 0) return FailedPrecondition("the cache directory " + dir_ + " was not created (opened for reading only)");
  if (size > (uint64_t{1} << 50)) return InvalidArgument("blob " + digest + ": size " + std::to_string(size) + " is not plausible");
  static std::atomic<unsigned> seq{0};
  for (int attempt = 0; attempt < 64; ++attempt) {
    const std::string name = "tmp/" + hex + "." + std::to_string(::getpid()) + "." + std::to_string(seq++);
    const std::string path = dir_ + "/" + name;
    if (job_) HB_RETURN_IF_ERROR(job_->AddTemporary(path));  // before it exists
    Fd fd(::openat(dir_fd_, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd.get() < 0) {
      const int err = errno;
      if (job_) job_->DropTemporary(path);
      if (err == EEXIST) continue;
      return ErrnoError("create " + path, err);
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
      const int err = errno;
      ::unlinkat(dir_fd_, name.c_str(), 0);
      if (job_) job_->DropTemporary(path);
      return ErrnoError("size " + path + " to " + std::to_string(size) + " bytes", err);
    }
    PartialBlob p;
    p.digest = digest;
    p.size = size;
    p.fd = fd.release();
    p.path = path;
    return p;
  }
  return IoError("create a partial blob in " + dir_ + "/tmp: every name tried exists");
}

void NodeCache::Discard(PartialBlob& p) {
  if (p.fd >= 0) ::close(p.fd);
  p.fd = -1;
  if (p.path.empty()) return;
  const std::string prefix = dir_ + "/tmp/";
  if (dir_fd_ >= 0 && p.path.rfind(prefix, 0) == 0) {
    ::unlinkat(dir_fd_, ("tmp/" + p.path.substr(prefix.size())).c_str(), 0);
  }
  if (job_) job_->DropTemporary(p.path);
}

Status NodeCache::Publish(PartialBlob& p, bool already_hashed) {
  auto hex = HexOf(p.digest);
  const std::string prefix = dir_ + "/tmp/";
  if (!hex.ok() || p.fd < 0 || dir_fd_ < 0 || p.path.rfind(prefix, 0) != 0) {
    Discard(p);
    return hex.ok() ? InvalidArgument("publish " + p.path + ": not an open partial blob of " + dir_) : hex.status();
  }
  const std::string tmp_rel = "tmp/" + p.path.substr(prefix.size());
  if (!already_hashed) {
    auto got = Sha256OfFd(p.fd, p.path);
    if (!got.ok()) {
      Discard(p);
      return got.status().Prefixed("blob " + p.digest);
    }
    if (*got != *hex) {
      Discard(p);
      return Corrupt("blob " + p.digest + " : the bytes fetched hash to sha256:" + *got +
                     ", not the digest the manifest names; nothing was kept");
    }
  }
  if (::fsync(p.fd) != 0 || ::fchmod(p.fd, 0444) != 0) {
    const Status s = ErrnoError("fsync/chmod " + p.path, errno);
    Discard(p);
    return s;
  }
  const std::string rel = std::string(kBlobDir) + "/" + *hex;
  // Never over an existing blob: it has the same bytes, and a reader may have it open.
  int rc = ::renameat2(dir_fd_, tmp_rel.c_str(), dir_fd_, rel.c_str(), RENAME_NOREPLACE);
  int err = rc == 0 ? 0 : errno;
  if (err == EINVAL) {  // a file system without RENAME_NOREPLACE
    struct stat st{};
    if (::fstatat(dir_fd_, rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      err = EEXIST;
    } else {
      rc = ::renameat(dir_fd_, tmp_rel.c_str(), dir_fd_, rel.c_str());
      err = rc == 0 ? 0 : errno;
    }
  }
  if (err == EEXIST) {  // another fetch published it first
    Discard(p);
    return Status::Ok();
  }
  if (err != 0) {
    Discard(p);
    return ErrnoError("rename " + p.path + " to " + dir_ + "/" + rel, err);
  }
  ::close(p.fd);
  p.fd = -1;
  if (job_) job_->DropTemporary(p.path);
  Fd d(::openat(dir_fd_, kBlobDir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (d.get() < 0 || ::fsync(d.get()) != 0) return ErrnoError("fsync " + dir_ + "/" + kBlobDir, errno);
  return Status::Ok();
}

Status NodeCache::RecordRef(const std::string& ref, const std::string& manifest_digest,
                            const std::string& manifest_bytes) {
  HB_RETURN_IF_ERROR(HexOf(manifest_digest).status());
  if (dir_fd_ < 0) return FailedPrecondition("the cache directory " + dir_ + " was not created (opened for reading only)");
  if (ref.empty() || ref.size() > 4096) return InvalidArgument("record a reference: '" + ref.substr(0, 100) + "' is not one");
  if (manifest_bytes.size() > (4u << 20)) return Corrupt("the manifest of " + ref + " is over 4 MiB");
  HB_RETURN_IF_ERROR(OciManifest::Parse(manifest_bytes).status().Prefixed(ref + " (" + manifest_digest + ")"));
  json manifest = json::parse(manifest_bytes, nullptr, false);
  const json rec = {{"ref", ref},
                    {"digest", manifest_digest},
                    {"manifest", std::move(manifest)},
                    {"recorded_unix", static_cast<int64_t>(std::time(nullptr))}};
  const std::string text = rec.dump(2) + "\n";
  const std::string name = "refs/" + Sha256Hex(ref) + ".json";
  static std::atomic<unsigned> seq{0};
  const std::string tmp = name + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(seq++);
  Fd fd(::openat(dir_fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoError("create " + dir_ + "/" + tmp, errno);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::unlinkat(dir_fd_, tmp.c_str(), 0);
      return ErrnoError("write " + dir_ + "/" + tmp, err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0 || ::renameat(dir_fd_, tmp.c_str(), dir_fd_, name.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir_fd_, tmp.c_str(), 0);
    return ErrnoError("write " + dir_ + "/" + name, err);
  }
  return Status::Ok();
}

Result<std::vector<CacheItem>> NodeCache::List(const std::string& weights_dir) {
  const MapsIndex maps = MapsIndex::Scan();
  std::vector<CacheItem> out;
  for (auto& e : ScanCache(dir_fd_, dir_, ReadRefs(dir_fd_), maps)) out.push_back(std::move(e.item));
  HB_ASSIGN_OR_RETURN(std::vector<Entry> weights, ScanWeights(weights_dir, maps, nullptr));
  for (auto& e : weights) out.push_back(std::move(e.item));
  std::sort(out.begin(), out.end(), KindOrder);
  return out;
}

namespace {

// Removes one entry unless it turns out to be in use now (then false).
// Blobs and partials are removed under the blob's lock, taken without
// waiting, so no fetch or read starts on them meanwhile; the lock file of a
// removed blob goes with it (a waiter on it notices and takes a new one).
bool RemoveEntry(int dir_fd, const SafeDir* weights, const Entry& e, bool dry_run) {
  if (e.item.in_use) return false;
  if (e.item.kind == "weights") {
    if (!weights) return false;
    if (dry_run) return true;
    if (::unlinkat(weights->fd(), e.item.name.c_str(), 0) != 0 && errno != ENOENT) return false;
    ::unlinkat(weights->fd(), SidecarName(e.item.name).c_str(), 0);
    return true;
  }
  // A blob's lock is made when missing and held while it goes, so no read
  // starts on it meanwhile; a partial's is only looked at (a fetch that
  // starts now makes a partial of another name).
  Fd lock;
  if (TryLock(dir_fd, e.hex, /*create=*/!dry_run && e.item.kind == "blob", &lock) == LockState::kHeld) return false;
  if (e.item.kind == "partial" && HoldsOpen(e.owner, e.st)) return false;
  if (dry_run) return true;
  const std::string rel = e.item.kind == "blob" ? std::string(kBlobDir) + "/" + e.hex : "tmp/" + e.item.name;
  if (::unlinkat(dir_fd, rel.c_str(), 0) != 0 && errno != ENOENT) return false;
  if (e.item.kind == "blob" && lock.get() >= 0) ::unlinkat(dir_fd, LockName(e.hex).c_str(), 0);
  return true;
}

void Account(CacheReport& rep, const Entry& e, bool removed) {
  if (removed) {
    rep.removed.push_back(e.item);
    rep.freed_bytes += e.item.bytes;
  } else {
    rep.kept_bytes += e.item.bytes;
  }
}

}  // namespace

Result<CacheReport> NodeCache::Gc(const std::string& weights_dir, bool dry_run) {
  const MapsIndex maps = MapsIndex::Scan();
  const RefIndex refs = ReadRefs(dir_fd_);
  CacheReport rep;
  std::vector<Entry> entries = ScanCache(dir_fd_, dir_, refs, maps);
  std::set<std::string> blob_hex, partial_hex;
  for (const Entry& e : entries) {
    const bool garbage = e.item.kind == "partial" || e.item.refs.empty();
    if (!garbage) {
      Account(rep, e, false);
      blob_hex.insert(e.hex);
      continue;
    }
    const bool removed = RemoveEntry(dir_fd_, nullptr, e, dry_run);
    if (!removed) {
      rep.skipped_in_use.push_back(e.item.path);
      (e.item.kind == "blob" ? blob_hex : partial_hex).insert(e.hex);
    }
    Account(rep, e, removed);
  }
  // Lock files of blobs that are not there (and not being fetched).
  if (dir_fd_ >= 0) {
    for (const std::string& name : Names(dir_fd_, "locks")) {
      if (name.size() != 69 || name.compare(64, 5, ".lock") != 0) continue;
      const std::string hex = name.substr(0, 64);
      if (!IsLowerHex(hex) || blob_hex.count(hex) || partial_hex.count(hex)) continue;
      Fd held;
      if (TryLock(dir_fd_, hex, false, &held) != LockState::kFree) continue;  // held: in use
      struct stat st{};
      if (::fstatat(dir_fd_, (std::string(kBlobDir) + "/" + hex).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) continue;
      CacheItem item;
      item.kind = "lock";
      item.name = name;
      item.path = dir_ + "/locks/" + name;
      if (!dry_run && ::unlinkat(dir_fd_, ("locks/" + name).c_str(), 0) != 0) continue;
      rep.removed.push_back(std::move(item));
    }
  }
  // Weights files are never garbage: snapshots on disk may need them (prune removes them).
  HB_ASSIGN_OR_RETURN(std::vector<Entry> weights, ScanWeights(weights_dir, maps, nullptr));
  for (const Entry& e : weights) Account(rep, e, false);
  return rep;
}

Result<CacheReport> NodeCache::Prune(uint64_t keep_bytes, const std::string& weights_dir, bool dry_run) {
  const MapsIndex maps = MapsIndex::Scan();
  std::vector<Entry> entries = ScanCache(dir_fd_, dir_, ReadRefs(dir_fd_), maps);
  SafeDir wdir;
  HB_ASSIGN_OR_RETURN(std::vector<Entry> weights, ScanWeights(weights_dir, maps, &wdir));
  for (auto& e : weights) entries.push_back(std::move(e));
  uint64_t total = 0;
  for (const Entry& e : entries) total += e.item.bytes;
  // Least recently used first; partials are never pruned (gc removes the dead ones).
  std::vector<const Entry*> order;
  for (const Entry& e : entries) {
    if (e.item.kind != "partial") order.push_back(&e);
  }
  std::stable_sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    if (a->item.last_used_unix != b->item.last_used_unix) return a->item.last_used_unix < b->item.last_used_unix;
    return a->item.name < b->item.name;
  });
  CacheReport rep;
  std::set<const Entry*> removed;
  for (const Entry* e : order) {
    if (total <= keep_bytes) break;
    if (!RemoveEntry(dir_fd_, wdir.fd() >= 0 ? &wdir : nullptr, *e, dry_run)) {
      rep.skipped_in_use.push_back(e->item.path);
      continue;
    }
    removed.insert(e);
    total -= e->item.bytes;
  }
  for (const Entry& e : entries) Account(rep, e, removed.count(&e) > 0);
  return rep;
}

}  // namespace hotboot::fetch
