// `hotboot bench format`: the snapshot container against tar + zstd, against
// a floor (writing the same files from a cached buffer: no unpacker can be faster)
// and against a plain-zstd reference, on the same input directories. A
// benchmark, not a test (STYLE.md 9): it reports sizes and MB/s for the README.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "cli_common.h"
#include "commands.h"
#include "hotboot/kernels.h"
#include "hotboot/snapshot_file.h"

extern char** environ;

namespace hotboot::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kBlock = 4u << 20;  // generator block; the pieces of the write floor and the zstd reference,
                                     // the size of the snapshot's chunks (WriteOptions' default)
constexpr size_t kPage = 4096;
constexpr int kZstdLevel = 3;        // ours, tar's zstd and the zstd reference alike
constexpr uint64_t kSeed = 0x686f74626f6f74;

struct BenchArgs {
  bool json_out = false;
  int size_mib = 256;
  int repeat = 3;
  std::string snapshot;
  std::string workdir;
  bool keep = false;
  std::vector<std::string> cases;
  int threads = 0;
};

// ---- the inputs -------------------------------------------------------------

// Fills one generator block; the block index seeds it, so a case's bytes do
// not depend on the thread count.
using Fill = void (*)(uint64_t block, char* out, size_t n);

std::mt19937_64 BlockRng(uint64_t block) { return std::mt19937_64(kSeed + block * 0x9e3779b97f4a7c15ull); }

// Encode: kernels::F32ToBf16 or F32ToF16, both round to nearest even (the
// fp16 one with subnormals and overflow to infinity).
template <uint16_t (*Encode)(float)>
void FillNormal16(uint64_t block, char* out, size_t n) {
  auto rng = BlockRng(block);
  std::normal_distribution<float> d(0.0f, 0.02f);
  for (size_t i = 0; i + 1 < n; i += 2) {
    const uint16_t v = Encode(d(rng));
    out[i] = static_cast<char>(v & 0xff);  // little-endian, as weights are stored
    out[i + 1] = static_cast<char>(v >> 8);
  }
}

// A heap's memory image: 90% of pages zero, the rest 8-byte words that are
// either small integers (counts, lengths, flags) or random bytes.
void FillHeapPages(uint64_t block, char* out, size_t n) {
  auto rng = BlockRng(block);
  std::memset(out, 0, n);
  for (size_t page = 0; page + kPage <= n; page += kPage) {
    if (rng() % 10 != 0) continue;
    for (size_t w = page; w < page + kPage; w += 8) {
      const uint64_t r = rng();
      const uint64_t v = (r & 1) ? (r >> 1) % 1024 : rng();
      for (int b = 0; b < 8; ++b) out[w + b] = static_cast<char>(v >> (8 * b));
    }
  }
}

struct CaseDef {
  const char* name;
  const char* what;
  const char* section;  // the one file of a generated case, relative to its input directory
  snapfile::ElemType elem;
  Fill fill;            // null: the sections of --snapshot
};

constexpr CaseDef kCases[] = {
    {"bf16_random", "N(0, 0.02) weights as bf16", "weights/bf16_random.bin", snapfile::ElemType::kBf16,
     FillNormal16<kernels::F32ToBf16>},
    {"fp16_random", "N(0, 0.02) weights as IEEE fp16", "weights/fp16_random.bin", snapfile::ElemType::kFp16,
     FillNormal16<kernels::F32ToF16>},
    {"reference_server", "CRIU images + weights of the reference server", nullptr, snapfile::ElemType::kBytes,
     nullptr},
    {"zero_heavy", "heap memory image, 90% zero 4 KiB pages", "criu/pages-1.img", snapfile::ElemType::kBytes,
     FillHeapPages},
};

// The directory tree both tools pack; section names are paths relative to
// it, so ExtractTo(out, "") and tar -x give the same tree.
struct CaseInput {
  std::string dir;
  std::vector<snapfile::SectionSource> sections;
  uint64_t raw_bytes = 0;
  std::string what;
};

// ---- small OS helpers -------------------------------------------------------

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now; for files written, where close can report a write error.
  Status Close(const std::string& path) {
    const int fd = std::exchange(fd_, -1);
    return ::close(fd) == 0 ? Status::Ok() : ErrnoError("close " + path, errno);
  }

 private:
  int fd_;
};

Result<int> OpenFile(const std::string& path, int flags, mode_t mode = 0644) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError("open " + path, errno);
  return fd;
}

// off < 0: at the current position.
Status WriteAll(int fd, const char* p, size_t n, int64_t off, const std::string& path) {
  while (n > 0) {
    const ssize_t w = off < 0 ? ::write(fd, p, n) : ::pwrite(fd, p, n, off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return ErrnoError("write " + path, w < 0 ? errno : EIO);
    p += w;
    n -= static_cast<size_t>(w);
    if (off >= 0) off += w;
  }
  return Status::Ok();
}

Status PreadAll(int fd, char* p, size_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("read " + path, errno);
    if (r == 0) return IoError("read " + path + ": unexpected end of file at byte " + std::to_string(off));
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

Status RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  return ec ? IoError("remove " + path + ": " + ec.message()) : Status::Ok();
}

Status MakeDirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  return ec ? IoError("create directory " + path + ": " + ec.message()) : Status::Ok();
}

// Bytes of the regular files under dir.
Result<uint64_t> TreeBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
    if (ec) break;
  }
  if (ec) return IoError("list " + dir + ": " + ec.message());
  return total;
}

// A cheap check that an unpacker produced the whole tree (ours also checks
// every content hash as it extracts).
Status CheckTree(const std::string& dir, uint64_t raw_bytes, const std::string& who) {
  HB_ASSIGN_OR_RETURN(uint64_t got, TreeBytes(dir));
  if (got != raw_bytes) {
    return Internal(who + " unpacked " + std::to_string(got) + " bytes into " + dir + ", expected " +
                    std::to_string(raw_bytes));
  }
  return Status::Ok();
}

// Runs argv (argv[0] looked up on PATH) with stdout sent to stderr, so that
// --json output stays clean; OK when it exits 0.
Status RunCommand(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
  pid_t pid = -1;
  const int err = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + (a.find(' ') == std::string::npos ? a : "'" + a + "'");
  if (err != 0) return ErrnoError("run " + cmd, err);
  int ws = 0;
  while (::waitpid(pid, &ws, 0) < 0) {
    if (errno != EINTR) return ErrnoError("wait for " + cmd, errno);
  }
  if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0) return Status::Ok();
  return Internal(cmd + (WIFEXITED(ws) ? " exited with " + std::to_string(WEXITSTATUS(ws))
                                       : " was killed by signal " + std::to_string(WTERMSIG(ws))));
}

// Runs fn(i, worker) for i in [0, n) on `threads` workers; the first error
// stops the rest.
Status ParallelFor(size_t n, int threads, const std::function<Status(size_t i, int worker)>& fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  Status first;
  auto work = [&](int worker) {
    for (size_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < n;) {
      if (Status s = fn(i, worker); !s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first.ok()) first = s;
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  const int workers = static_cast<int>(std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), n));
  for (int w = 1; w < workers; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
  return first;
}

// The scratch directory: fresh, removed on every way out unless --keep.
class WorkDir {
 public:
  static Result<std::unique_ptr<WorkDir>> Make(const std::string& parent, bool keep) {
    const std::string under = parent.empty() ? fs::temp_directory_path().string() : parent;
    HB_RETURN_IF_ERROR(MakeDirs(under));
    std::string tmpl = under + "/hotboot-bench-XXXXXX";
    if (!::mkdtemp(tmpl.data())) return ErrnoError("mkdtemp " + tmpl, errno);
    return std::unique_ptr<WorkDir>(new WorkDir(tmpl, keep));
  }
  ~WorkDir() {
    if (keep_) {
      Note("kept the scratch directory " + path_);
    } else if (Status s = RemoveAll(path_); !s.ok()) {
      Note("warning: " + s.message());
    }
  }
  const std::string& path() const { return path_; }

 private:
  WorkDir(std::string path, bool keep) : path_(std::move(path)), keep_(keep) {}
  std::string path_;
  bool keep_;
};

// ---- making the inputs ------------------------------------------------------

Status Generate(const std::string& path, uint64_t size, Fill fill, int threads) {
  HB_RETURN_IF_ERROR(MakeDirs(fs::path(path).parent_path().string()));
  HB_ASSIGN_OR_RETURN(int raw_fd, OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC));
  UniqueFd fd(raw_fd);
  std::vector<std::string> scratch(static_cast<size_t>(threads), std::string(kBlock, '\0'));
  HB_RETURN_IF_ERROR(ParallelFor((size + kBlock - 1) / kBlock, threads, [&](size_t b, int w) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kBlock, size - b * kBlock));
    fill(b, scratch[w].data(), n);
    return WriteAll(fd.get(), scratch[w].data(), n, static_cast<int64_t>(b * kBlock), path);
  }));
  return fd.Close(path);
}

Result<CaseInput> GeneratedInput(const CaseDef& c, const BenchArgs& a, const std::string& dir, int threads) {
  CaseInput in;
  in.dir = dir;
  in.raw_bytes = static_cast<uint64_t>(a.size_mib) << 20;
  in.what = HumanBytes(in.raw_bytes) + " of " + c.what;
  snapfile::SectionSource s;
  s.name = c.section;
  s.file_path = dir + "/" + c.section;
  s.elem = c.elem;
  HB_RETURN_IF_ERROR(Generate(s.file_path, in.raw_bytes, c.fill, threads));
  in.sections.push_back(std::move(s));
  return in;
}

// Every section of a snapshot made by `hotboot build`, as files; each keeps
// its name, mode and element type (weights stay bf16).
Result<CaseInput> SnapshotInput(const CaseDef& c, const std::string& snap, const std::string& dir, int threads) {
  HB_ASSIGN_OR_RETURN(auto reader, snapfile::SnapshotReader::Open(snap));
  HB_RETURN_IF_ERROR(MakeDirs(dir));
  Progress p("extracting " + snap);
  Status st = reader->ExtractTo(dir, "", threads, [&](uint64_t d, uint64_t t) { p.Update(d, t); });
  p.Finish();
  HB_RETURN_IF_ERROR(st);
  CaseInput in;
  in.dir = dir;
  for (const auto& sec : reader->sections()) {
    snapfile::SectionSource s;
    s.name = sec.name;
    s.file_path = dir + "/" + sec.name;
    s.mode = sec.mode;
    s.elem = sec.elem;
    in.sections.push_back(std::move(s));
    in.raw_bytes += sec.raw_size;
  }
  in.what = std::string(c.what) + " from " + snap + ", " + std::to_string(in.sections.size()) + " files";
  return in;
}

// ---- what is measured -------------------------------------------------------

Status PackOurs(const CaseInput& in, const std::string& snap, int threads) {
  snapfile::WriteOptions o;
  o.zstd_level = kZstdLevel;
  o.threads = threads;
  return snapfile::WriteSnapshot(snap, json{{"bench", "format"}}.dump(), in.sections, o);
}

Status UnpackOurs(const std::string& snap, const std::string& out, int threads) {
  HB_ASSIGN_OR_RETURN(auto reader, snapfile::SnapshotReader::Open(snap));
  return reader->ExtractTo(out, "", threads);
}

std::string TarCompressor(int threads) {
  return "zstd -" + std::to_string(kZstdLevel) + " -T" + std::to_string(threads);
}

// tar's pack includes an fsync of the archive, as WriteSnapshot syncs its file.
Status PackTar(const std::string& dir, const std::string& tarball, int threads) {
  HB_RETURN_IF_ERROR(RunCommand({"tar", "-I", TarCompressor(threads), "-cf", tarball, "-C", dir, "."}));
  HB_ASSIGN_OR_RETURN(int raw_fd, OpenFile(tarball, O_RDONLY));
  UniqueFd fd(raw_fd);
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + tarball, errno);
  return Status::Ok();
}

// zstd decompresses on one thread whatever -T says.
Status UnpackTar(const std::string& tarball, const std::string& out) {
  return RunCommand({"tar", "-I", "zstd", "-xf", tarball, "-C", out});
}

// The input as the snapshot writer cuts it: each file in 4 MiB pieces, an
// all-zero piece marked (the container stores it as a zero chunk, and
// extraction leaves a hole for it), every other piece's bytes in memory.
struct Pieces {
  struct File {
    std::string name;  // relative to the output directory
    uint32_t mode = 0644;
    uint64_t size = 0;
  };
  struct Piece {
    size_t file;
    uint64_t offset;
    size_t size;
    bool zero;
    std::string bytes;  // empty when zero
  };
  std::vector<File> files;
  std::vector<Piece> pieces;
  uint64_t zero_bytes = 0;
};

bool AllZero(const char* p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

Result<Pieces> LoadPieces(const CaseInput& in, int threads) {
  Pieces out;
  for (const auto& s : in.sections) {
    HB_ASSIGN_OR_RETURN(uint64_t size, [&]() -> Result<uint64_t> {
      std::error_code ec;
      const uint64_t n = fs::file_size(s.file_path, ec);
      if (ec) return IoError("stat " + s.file_path + ": " + ec.message());
      return n;
    }());
    out.files.push_back({s.name, s.mode, size});
    for (uint64_t off = 0; off < size; off += kBlock) {
      out.pieces.push_back({out.files.size() - 1, off, static_cast<size_t>(std::min<uint64_t>(kBlock, size - off)),
                            false, std::string()});
    }
  }
  HB_RETURN_IF_ERROR(ParallelFor(out.pieces.size(), threads, [&](size_t i, int) {
    Pieces::Piece& p = out.pieces[i];
    const std::string& path = in.sections[p.file].file_path;
    HB_ASSIGN_OR_RETURN(int raw_fd, OpenFile(path, O_RDONLY));
    UniqueFd fd(raw_fd);
    p.bytes.resize(p.size);
    HB_RETURN_IF_ERROR(PreadAll(fd.get(), p.bytes.data(), p.size, p.offset, path));
    if (AllZero(p.bytes.data(), p.size)) {
      p.zero = true;
      std::string().swap(p.bytes);
    }
    return Status::Ok();
  }));
  for (const auto& p : out.pieces) out.zero_bytes += p.zero ? p.size : 0;
  return out;
}

// The floor: what writing the unpacked tree costs at least, done the way
// extraction does it and no more (each file created and sized, holes left
// for zero pieces, every other piece written with one pwrite, on the same
// threads), with no reading, no decoding and no checking. Each worker writes
// from one 4 MiB buffer of its own that stays in its cache: an unpacker
// decodes a chunk into such a buffer and writes it while it is still cached,
// and the cost of writing into the page cache does not depend on the bytes;
// writing each piece from its own copy in memory instead adds a read from
// DRAM that an unpacker does not pay (hotboot measured at 109% of that on
// the zero-heavy case). Any unpacker of this tree, ours included, does this
// work and more, so it cannot be faster (up to measurement noise).
Status WriteTree(const Pieces& p, const std::string& out, int threads) {
  std::vector<std::string> hot(static_cast<size_t>(std::max(threads, 1)), std::string(kBlock, '\xa5'));
  std::vector<std::unique_ptr<UniqueFd>> fds;
  for (const auto& f : p.files) {
    const std::string to = out + "/" + f.name;
    HB_RETURN_IF_ERROR(MakeDirs(fs::path(to).parent_path().string()));
    HB_ASSIGN_OR_RETURN(int raw_fd, OpenFile(to, O_RDWR | O_CREAT | O_TRUNC, f.mode & 0777));
    fds.push_back(std::make_unique<UniqueFd>(raw_fd));
    if (::ftruncate(raw_fd, static_cast<off_t>(f.size)) != 0) return ErrnoError("size " + to, errno);
  }
  HB_RETURN_IF_ERROR(ParallelFor(p.pieces.size(), threads, [&](size_t i, int w) {
    const Pieces::Piece& c = p.pieces[i];
    if (c.zero) return Status::Ok();
    return WriteAll(fds[c.file]->get(), hot[static_cast<size_t>(w)].data(), c.size, static_cast<int64_t>(c.offset),
                    p.files[c.file].name);
  }));
  for (size_t i = 0; i < fds.size(); ++i) HB_RETURN_IF_ERROR(fds[i]->Close(out + "/" + p.files[i].name));
  return Status::Ok();
}

// The reference's decoding side: every non-zero piece as one zstd frame at
// kZstdLevel, as a plain-zstd container would store it.
struct Frames {
  std::vector<std::string> stored;
  std::vector<size_t> raw_sizes;
};

using CCtxPtr = std::unique_ptr<ZSTD_CCtx, decltype([](ZSTD_CCtx* c) { ZSTD_freeCCtx(c); })>;
using DCtxPtr = std::unique_ptr<ZSTD_DCtx, decltype([](ZSTD_DCtx* d) { ZSTD_freeDCtx(d); })>;

Result<Frames> CompressFrames(const Pieces& p, int threads) {
  std::vector<const Pieces::Piece*> todo;
  for (const auto& c : p.pieces) {
    if (!c.zero) todo.push_back(&c);
  }
  Frames f;
  f.stored.resize(todo.size());
  f.raw_sizes.resize(todo.size());
  std::vector<CCtxPtr> cctx(static_cast<size_t>(threads));
  HB_RETURN_IF_ERROR(ParallelFor(todo.size(), threads, [&](size_t i, int w) {
    const Pieces::Piece& c = *todo[i];
    if (!cctx[w]) cctx[w].reset(ZSTD_createCCtx());
    if (!cctx[w]) return Internal("ZSTD_createCCtx failed");
    std::string& out = f.stored[i];
    out.resize(ZSTD_compressBound(c.size));
    const size_t n = ZSTD_compressCCtx(cctx[w].get(), out.data(), out.size(), c.bytes.data(), c.size, kZstdLevel);
    if (ZSTD_isError(n)) return Internal(std::string("ZSTD_compressCCtx: ") + ZSTD_getErrorName(n));
    out.resize(n);
    f.raw_sizes[i] = c.size;
    return Status::Ok();
  }));
  return f;
}

// Every frame decompressed in memory, each worker into its own buffer.
struct Decompressor {
  std::vector<DCtxPtr> dctx;
  std::vector<std::string> out;
  explicit Decompressor(int threads) : out(static_cast<size_t>(threads), std::string(kBlock, '\0')) {
    for (int i = 0; i < threads; ++i) dctx.emplace_back(ZSTD_createDCtx());
  }
};

Status DecompressFrames(const Frames& f, Decompressor& d, int threads) {
  return ParallelFor(f.stored.size(), threads, [&](size_t i, int w) {
    if (!d.dctx[w]) return Internal("ZSTD_createDCtx failed");
    const size_t n = ZSTD_decompressDCtx(d.dctx[w].get(), d.out[w].data(), d.out[w].size(), f.stored[i].data(),
                                         f.stored[i].size());
    if (ZSTD_isError(n)) return Internal(std::string("ZSTD_decompressDCtx: ") + ZSTD_getErrorName(n));
    if (n != f.raw_sizes[i]) return Internal("zstd frame " + std::to_string(i) + " decoded to the wrong size");
    return Status::Ok();
  });
}

// ---- running a case ---------------------------------------------------------

struct Measured {
  std::string name;
  std::string what;
  uint64_t raw_bytes = 0;
  size_t files = 0;
  uint64_t stored = 0, tar_stored = 0;
  uint64_t zero_bytes = 0;  // in all-zero 4 MiB pieces: holes for ours, the floor and the reference alike
  double pack_s = 0, unpack_s = 0, tar_pack_s = 0, tar_unpack_s = 0, write_s = 0, decompress_s = 0;
};

double MBps(uint64_t bytes, double s) { return s > 0 ? static_cast<double>(bytes) / s / 1e6 : 0; }

// The best wall time of `repeat` runs of `run`, each after `reset` (not timed).
Result<double> BestOf(const std::string& label, uint64_t raw_bytes, int repeat, const std::function<Status()>& reset,
                      const std::function<Status()>& run) {
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < repeat; ++i) {
    HB_RETURN_IF_ERROR(reset());
    const auto t0 = Clock::now();
    HB_RETURN_IF_ERROR(run().Prefixed(label));
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, ": best %s (%.0f MB/s)", Ms(best * 1000).c_str(), MBps(raw_bytes, best));
  Note("  " + label + buf);
  return best;
}

Result<uint64_t> FileBytes(const std::string& path) {
  std::error_code ec;
  const uint64_t n = fs::file_size(path, ec);
  if (ec) return IoError("stat " + path + ": " + ec.message());
  return n;
}

Result<Measured> RunCase(const CaseDef& c, const BenchArgs& a, const std::string& work, int threads) {
  const std::string dir = work + "/" + c.name;
  const std::string in_dir = dir + "/in", out = dir + "/out";
  const std::string snap = dir + "/packed.hbsnap", tarball = dir + "/packed.tar.zst";
  Note(std::string(c.name) + ": preparing the input");
  Result<CaseInput> made =
      c.fill ? GeneratedInput(c, a, in_dir, threads) : SnapshotInput(c, a.snapshot, in_dir, threads);
  if (!made.ok()) return made.status();
  // Write the fresh input back now, so that its writeback does not land in a timed run.
  ::sync();
  const CaseInput& in = *made;
  const int r = a.repeat;
  const uint64_t raw = in.raw_bytes;
  Measured m{c.name, in.what, raw, in.sections.size()};
  auto none = [] { return Status::Ok(); };
  auto fresh_out = [&] {
    HB_RETURN_IF_ERROR(RemoveAll(out));
    return MakeDirs(out);
  };

  HB_ASSIGN_OR_RETURN(m.pack_s, BestOf("hotboot pack", raw, r, [&] { return RemoveAll(snap); },
                                       [&] { return PackOurs(in, snap, threads); }));
  HB_ASSIGN_OR_RETURN(m.stored, FileBytes(snap));
  HB_ASSIGN_OR_RETURN(m.unpack_s,
                      BestOf("hotboot unpack", raw, r, fresh_out, [&] { return UnpackOurs(snap, out, threads); }));
  HB_RETURN_IF_ERROR(CheckTree(out, raw, "hotboot"));
  HB_RETURN_IF_ERROR(RemoveAll(snap));

  HB_ASSIGN_OR_RETURN(m.tar_pack_s, BestOf("tar+zstd pack", raw, r, [&] { return RemoveAll(tarball); },
                                           [&] { return PackTar(in.dir, tarball, threads); }));
  HB_ASSIGN_OR_RETURN(m.tar_stored, FileBytes(tarball));
  HB_ASSIGN_OR_RETURN(m.tar_unpack_s, BestOf("tar+zstd unpack", raw, r, fresh_out,
                                             [&] { return UnpackTar(tarball, out); }));
  HB_RETURN_IF_ERROR(CheckTree(out, raw, "tar"));
  HB_RETURN_IF_ERROR(RemoveAll(tarball));

  HB_ASSIGN_OR_RETURN(Pieces pieces, LoadPieces(in, threads));
  m.zero_bytes = pieces.zero_bytes;
  HB_ASSIGN_OR_RETURN(m.write_s, BestOf("write floor (the same files from a cached buffer)", raw, r, fresh_out,
                                        [&] { return WriteTree(pieces, out, threads); }));
  HB_RETURN_IF_ERROR(CheckTree(out, raw, "the write floor"));
  HB_RETURN_IF_ERROR(RemoveAll(out));

  HB_ASSIGN_OR_RETURN(Frames frames, CompressFrames(pieces, threads));
  std::vector<Pieces::Piece>().swap(pieces.pieces);  // the raw bytes are not needed any more
  Decompressor d(threads);
  HB_ASSIGN_OR_RETURN(m.decompress_s, BestOf("zstd decompress in memory", raw, r, none,
                                             [&] { return DecompressFrames(frames, d, threads); }));
  if (!a.keep) HB_RETURN_IF_ERROR(RemoveAll(dir));
  return m;
}

// ---- reporting --------------------------------------------------------------

struct Derived {
  double pack, unpack, tar_pack, tar_unpack, write_floor, decompress, reference;
};

// The reference: min(write floor, zstd decompress) in MB/s, the fastest an
// unpacker of plain zstd frames could go here if it overlapped decoding and
// writing perfectly. A bound for that unpacker, not for ours, whose chunks
// are not plain zstd (byte planes, raw blocks) and may decode faster.
Derived Rates(const Measured& m) {
  Derived d{MBps(m.raw_bytes, m.pack_s),       MBps(m.raw_bytes, m.unpack_s),
            MBps(m.raw_bytes, m.tar_pack_s),   MBps(m.raw_bytes, m.tar_unpack_s),
            MBps(m.raw_bytes, m.write_s),      MBps(m.raw_bytes, m.decompress_s), 0};
  d.reference = std::min(d.write_floor, d.decompress);
  return d;
}

double Div(double x, double y) { return y > 0 ? x / y : 0; }

// Keys in the order a reader of the README expects, not sorted.
nlohmann::ordered_json CaseJson(const Measured& m, int threads, int repeat) {
  const Derived d = Rates(m);
  const double raw = static_cast<double>(m.raw_bytes);
  return {{"case", m.name},
          {"files", m.files},
          {"raw_bytes", m.raw_bytes},
          {"stored_bytes", m.stored},
          {"ratio", Div(static_cast<double>(m.stored), raw)},
          {"pack_MBps", d.pack},
          {"unpack_MBps", d.unpack},
          {"tar_zstd_stored_bytes", m.tar_stored},
          {"tar_zstd_ratio", Div(static_cast<double>(m.tar_stored), raw)},
          {"tar_zstd_pack_MBps", d.tar_pack},
          {"tar_zstd_unpack_MBps", d.tar_unpack},
          {"zero_bytes", m.zero_bytes},
          {"write_floor_MBps", d.write_floor},
          {"unpack_vs_write_floor", Div(d.unpack, d.write_floor)},
          {"zstd_decompress_MBps", d.decompress},
          {"reference_unpack_MBps", d.reference},
          {"unpack_vs_reference", Div(d.unpack, d.reference)},
          {"pack_vs_tar", Div(d.pack, d.tar_pack)},
          {"unpack_vs_tar", Div(d.unpack, d.tar_unpack)},
          {"threads", threads},
          {"repeat", repeat}};
}

void PrintCase(const Measured& m, int threads) {
  const Derived d = Rates(m);
  const double raw = static_cast<double>(m.raw_bytes);
  std::printf("\n%s: %s (%s raw)\n", m.name.c_str(), m.what.c_str(), HumanBytes(m.raw_bytes).c_str());
  std::printf("  %-18s %12s %7s %12s %12s\n", "", "stored", "ratio", "pack MB/s", "unpack MB/s");
  auto row = [&](const char* who, uint64_t stored, double pack, double unpack) {
    std::printf("  %-18s %12s %6.1f%% %12.0f %12.0f\n", who, HumanBytes(stored).c_str(),
                100 * Div(static_cast<double>(stored), raw), pack, unpack);
  };
  row("hotboot", m.stored, d.pack, d.unpack);
  row(("tar + zstd -T" + std::to_string(threads)).c_str(), m.tar_stored, d.tar_pack, d.tar_unpack);
  std::printf("  %-18s %12s %7s %11.2fx %11.2fx\n", "hotboot / tar", "", "", Div(d.pack, d.tar_pack),
              Div(d.unpack, d.tar_unpack));
  std::printf("  write floor %.0f MB/s (the same files written from a cached buffer, %s of zero pieces left as holes):\n"
              "    hotboot unpack at %.0f%% of it (100%% is the most any unpacker can reach)\n",
              d.write_floor, HumanBytes(m.zero_bytes).c_str(), 100 * Div(d.unpack, d.write_floor));
  std::printf("  reference %.0f MB/s = min(write floor, zstd -%d decompress in memory %.0f): a perfect plain-zstd\n"
              "    unpacker; hotboot unpack at %.0f%% of it (its chunks are not plain zstd: over 100%% is possible)\n",
              d.reference, kZstdLevel, d.decompress, 100 * Div(d.unpack, d.reference));
}

int RunBenchFormat(const BenchArgs& a) {
  const int threads = a.threads > 0 ? a.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<const CaseDef*> todo;
  for (const CaseDef& c : kCases) {
    if (!a.cases.empty() && std::find(a.cases.begin(), a.cases.end(), c.name) == a.cases.end()) continue;
    if (!c.fill && a.snapshot.empty()) {
      Note(std::string("skipping ") + c.name + ": pass --snapshot SNAP made by `hotboot build --preset small`");
      continue;
    }
    todo.push_back(&c);
  }
  if (todo.empty()) return Fail(InvalidArgument("no case to run (the chosen ones need --snapshot)"));
  if (!a.snapshot.empty()) {  // refuse a bad snapshot now, not after the cases before it ran
    auto r = snapfile::SnapshotReader::Open(a.snapshot);
    if (!r.ok()) return Fail(r.status());
  }
  if (auto tar = FindSibling("tar"), zstd = FindSibling("zstd"); !tar.ok() || !zstd.ok()) {
    return Fail(NotFound("the tar+zstd baseline needs `tar` and `zstd` on PATH (apt-get install tar zstd)"));
  }
  auto work = WorkDir::Make(a.workdir, a.keep);
  if (!work.ok()) return Fail(work.status());
  Note("scratch directory " + (*work)->path() + "; " + std::to_string(threads) + " threads, best of " +
       std::to_string(a.repeat) + " runs, everything in the page cache");

  std::vector<Measured> results;
  for (const CaseDef* c : todo) {
    auto m = RunCase(*c, a, (*work)->path(), threads);
    if (!m.ok()) return Fail(m.status().Prefixed(std::string("bench case ") + c->name));
    results.push_back(std::move(m).value());
  }

  if (a.json_out) {
    auto out = nlohmann::ordered_json::array();
    for (const auto& m : results) out.push_back(CaseJson(m, threads, a.repeat));
    std::printf("%s\n", out.dump(2).c_str());
    return kExitOk;
  }
  std::printf("hotboot bench format: %d threads, zstd level %d, best of %d runs, all in page cache; "
              "MB/s = raw bytes / wall s / 1e6\n",
              threads, kZstdLevel, a.repeat);
  for (const auto& m : results) PrintCase(m, threads);
  return kExitOk;
}

}  // namespace

Runner AddBench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  app.require_subcommand(1);
  CLI::App* fmt = app.add_subcommand(
      "format", "The snapshot container vs tar+zstd, the write floor and a plain-zstd reference: size, pack and unpack MB/s");
  std::vector<std::string> names;
  std::string case_help = "Run only this case (repeatable, or comma-separated):";
  for (const CaseDef& c : kCases) {
    names.push_back(c.name);
    case_help += std::string("\n  ") + c.name + ": " + c.what;
  }
  fmt->footer(
      "Each case's input directory is packed with the snapshot container (WriteSnapshot) and\n"
      "with `tar -I 'zstd -3 -T<threads>'`, and unpacked with SnapshotReader::Open + ExtractTo\n"
      "(every chunk and content hash checked) and with tar -x (whose zstd decompresses on one\n"
      "thread), into a fresh directory; the best of --repeat runs counts. MB/s is raw bytes /\n"
      "wall seconds / 1e6.\n"
      "Everything is in the page cache: inputs are freshly written (and synced) and the cache\n"
      "cannot be dropped without root, so these are CPU and memory numbers, not disk numbers.\n"
      "Our pack fsyncs its file; tar's pack time includes an fsync of the .tar.zst to match.\n"
      "Keep --repeat at 3 or more: single runs are noisy.\n"
      "The write floor writes the same files into a fresh directory the way extraction does\n"
      "(each file created and sized, all-zero 4 MiB pieces left as holes as the container\n"
      "stores them as zero chunks, every other piece one pwrite, on the same threads), each\n"
      "thread from one 4 MiB buffer that stays in its cache, as an unpacker writes a chunk it\n"
      "just decoded: no reading, decoding or checking. Every unpacker does that\n"
      "and more, so unpack / write floor cannot pass 100% (beyond noise).\n"
      "The reference is min(write floor, zstd decompress): zstd level-3 decompression in\n"
      "memory, on the same threads, of the input's non-zero 4 MiB pieces as separate frames.\n"
      "It is the fastest a plain-zstd unpacker could go here with decoding and writing\n"
      "perfectly overlapped; it is not a bound for hotboot, whose chunks may decode faster\n"
      "than plain zstd (byte planes, raw blocks), so unpack / reference can pass 100%.\n"
      "reference_server needs --snapshot SNAP from `hotboot build --preset small`; without\n"
      "it that case is skipped. Progress goes to stderr; --json prints only the results.");
  fmt->add_flag("--json", a->json_out, "Print the results as a JSON array, one object per case");
  fmt->add_option("--size-mib", a->size_mib, "Size of each generated case in MiB (default 256)")
      ->check(CLI::Range(1, 1 << 20));
  fmt->add_option("--repeat", a->repeat, "Runs of each measurement; the fastest counts (default 3)")
      ->check(CLI::Range(1, 1000));
  fmt->add_option("--snapshot", a->snapshot, "A snapshot made by `hotboot build`, for the reference_server case")
      ->check(CLI::ExistingFile);
  fmt->add_option("--workdir", a->workdir, "Make the scratch directory in here (default $TMPDIR or /tmp)");
  fmt->add_flag("--keep", a->keep, "Keep the scratch directory and its inputs");
  fmt->add_option("--case", a->cases, case_help)->check(CLI::IsMember(names))->delimiter(',');
  fmt->add_option("--threads", a->threads,
                  "Threads for ours, for zstd -T, the write floor and the reference (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  Runner gpu, trust, fetch, burst;
  AddBenchGpu(app, &gpu);
  AddBenchTrust(app, &trust);
  AddBenchFetch(app, &fetch);
  AddBenchBurst(app, &burst);
  return [a, gpu, trust, fetch, burst] {
    if (const int rc = gpu(); rc >= 0) return rc;
    if (const int rc = trust(); rc >= 0) return rc;
    if (const int rc = fetch(); rc >= 0) return rc;
    if (const int rc = burst(); rc >= 0) return rc;
    return RunBenchFormat(*a);
  };
}

}  // namespace hotboot::cli
