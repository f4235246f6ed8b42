#include "hotboot/safetensors.h"

#include "hotboot/io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <limits>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

namespace hotboot {

using json = nlohmann::json;

namespace {

using io::PreadAll;

constexpr uint64_t kMaxHeader = 100u << 20;  // bounds the header allocation
constexpr size_t kMaxRank = 8;

bool ParseDType(const std::string& s, DType* t) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16}, {"I32", DType::kI32}, {"U8", DType::kU8}};
  for (const auto& [n, d] : kNames) {
    if (s == n) {
      *t = d;
      return true;
    }
  }
  return false;
}



}  // namespace

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI32: return "I32";
    case DType::kU8: return "U8";
  }
  return "?";
}

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32: return 4;
    case DType::kF16:
    case DType::kBF16: return 2;
    case DType::kU8: return 1;
  }
  return 0;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    o.fd_ = -1;
    file_size_ = o.file_size_;
    tensors_ = std::move(o.tensors_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}
SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd_ < 0) return ErrnoError("open " + path, errno);
  struct stat st{};
  if (::fstat(f.fd_, &st) != 0) return ErrnoError("stat " + path, errno);
  f.file_size_ = static_cast<uint64_t>(st.st_size);
  if (f.file_size_ < 8) return Truncated(path + ": " + std::to_string(f.file_size_) + " bytes, too short for a safetensors header");
  unsigned char lenb[8];
  HB_RETURN_IF_ERROR(PreadAll(f.fd_, reinterpret_cast<char*>(lenb), 8, 0, path));
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | lenb[i];
  if (hlen > kMaxHeader) return Corrupt(path + ": header length " + std::to_string(hlen) + " exceeds the 100 MiB cap");
  if (hlen > f.file_size_ - 8) {
    return Truncated(path + ": header says " + std::to_string(hlen) + " bytes, only " + std::to_string(f.file_size_ - 8) + " follow");
  }
  std::string header(hlen, '\0');
  HB_RETURN_IF_ERROR(PreadAll(f.fd_, header.data(), hlen, 8, path));
  json j = json::parse(header, nullptr, false);
  if (!j.is_object()) return Corrupt(path + ": header is not a JSON object");
  const uint64_t data_start = 8 + hlen;
  const uint64_t data_size = f.file_size_ - data_start;
  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return Corrupt(path + ": __metadata__ is not an object");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) return Corrupt(path + ": __metadata__ value of '" + k + "' is not a string");
        f.metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
      return Corrupt(where + " lacks dtype, shape or data_offsets");
    }
    TensorInfo t;
    t.name = name;
    if (!v["dtype"].is_string()) return Corrupt(where + ": dtype is not a string");
    if (!ParseDType(v["dtype"].get<std::string>(), &t.dtype)) {
      return Unsupported(where + ": dtype " + v["dtype"].get<std::string>() + " is not supported");
    }
    const json& shape = v["shape"];
    if (!shape.is_array() || shape.size() > kMaxRank) return Corrupt(where + ": shape must be an array of at most 8 dims");
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) return Corrupt(where + ": shape holds a non-integer or negative dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim) return Corrupt(where + ": shape overflows");
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& offs = v["data_offsets"];
    if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() || !offs[1].is_number_unsigned()) {
      return Corrupt(where + ": data_offsets must be two unsigned integers");
    }
    uint64_t b = offs[0].get<uint64_t>(), e = offs[1].get<uint64_t>();
    if (b > e) return Corrupt(where + ": data_offsets begin after end");
    if (e > data_size) {
      return Truncated(where + ": data ends at byte " + std::to_string(data_start + e) + ", the file has " +
                       std::to_string(f.file_size_));
    }
    if (numel > std::numeric_limits<uint64_t>::max() / DTypeSize(t.dtype) || numel * DTypeSize(t.dtype) != e - b) {
      return Corrupt(where + ": " + std::to_string(e - b) + " bytes do not hold its shape in " + DTypeName(t.dtype));
    }
    t.offset = data_start + b;
    t.nbytes = e - b;
    f.tensors_.push_back(std::move(t));
  }
  // Tensors must tile the data area without overlap.
  std::vector<const TensorInfo*> by_off;
  for (const auto& t : f.tensors_) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  uint64_t end = data_start;
  for (const auto* t : by_off) {
    if (t->offset < end) return Corrupt(path + ": tensor '" + t->name + "' overlaps the tensor before it");
    end = t->offset + t->nbytes;
  }
  return f;
}

Status SafetensorsFile::Read(const TensorInfo& t, void* dst) const {
  if (fd_ < 0) return FailedPrecondition("safetensors file is not open");
  if (t.offset + t.nbytes > file_size_) return Truncated(path_ + ": tensor '" + t.name + "' lies past the end");
  Status s = PreadAll(fd_, static_cast<char*>(dst), t.nbytes, t.offset, path_);
  return s.ok() ? s : s.Prefixed("tensor '" + t.name + "'");
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

void SafetensorsWriter::AddTensor(std::string name, DType dtype, std::vector<int64_t> shape, FillFn fill) {
  tensors_.push_back({std::move(name), dtype, std::move(shape), std::move(fill), nullptr});
}

void SafetensorsWriter::AddTensorRanges(std::string name, DType dtype, std::vector<int64_t> shape, RangeFillFn fill) {
  tensors_.push_back({std::move(name), dtype, std::move(shape), nullptr, std::move(fill)});
}

namespace {

Status PwriteAll(int fd, const std::byte* p, size_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return ErrnoError("write " + path + " at byte " + std::to_string(off), errno);
    p += w;
    off += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

// One fill-and-write job: bytes [begin, begin + len) of tensor `tensor`.
struct WriteJob {
  size_t tensor;
  uint64_t begin, len;
};

}  // namespace

Status SafetensorsWriter::WriteAtomic(const std::string& path, const WriteOptions& opts) {
  if (opts.chunk_bytes == 0 || opts.chunk_bytes > (1u << 30)) return InvalidArgument("chunk_bytes must be 1 B..1 GiB");
  json header = json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t off = 0;
  std::vector<uint64_t> sizes, offsets;
  for (const auto& t : tensors_) {
    uint64_t n = DTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0) return InvalidArgument("tensor '" + t.name + "' has a negative dimension");
      if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
        return InvalidArgument("tensor '" + t.name + "' is too large");
      }
      n *= static_cast<uint64_t>(d);
    }
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    sizes.push_back(n);
    offsets.push_back(off);
    off += n;
  }
  const uint64_t data_bytes = off;
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  const uint64_t data_start = 8 + h.size();
  // The jobs in file order, so that the file fills front to back.
  std::vector<WriteJob> jobs;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!tensors_[i].range) {
      jobs.push_back({i, 0, sizes[i]});
      continue;
    }
    for (uint64_t b = 0; b < sizes[i]; b += opts.chunk_bytes) jobs.push_back({i, b, std::min<uint64_t>(opts.chunk_bytes, sizes[i] - b)});
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return ErrnoError("create " + tmp, errno);
  auto body = [&]() -> Status {
    // Room for the whole file first: a disk without it fails here, at
    // once, not after minutes of filling. (Checked, not fallocated: on
    // tmpfs fallocate zeroes every page, a second pass over 16 GB.)
    const uint64_t file_bytes = data_start + data_bytes;
    struct statvfs vfs{};
    if (::fstatvfs(fd, &vfs) == 0 && vfs.f_frsize > 0 &&
        static_cast<unsigned __int128>(vfs.f_bavail) * vfs.f_frsize < file_bytes) {
      return IoError(tmp + ": needs " + std::to_string(file_bytes) + " bytes, its file system has " +
                     std::to_string(static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize) +
                     " free: free space there or write elsewhere");
    }
    if (::ftruncate(fd, static_cast<off_t>(file_bytes)) != 0) return ErrnoError("resize " + tmp, errno);
    unsigned char lenb[8];
    uint64_t hl = h.size();
    for (int i = 0; i < 8; ++i) lenb[i] = static_cast<unsigned char>(hl >> (8 * i));
    HB_RETURN_IF_ERROR(PwriteAll(fd, reinterpret_cast<const std::byte*>(lenb), 8, 0, tmp));
    HB_RETURN_IF_ERROR(PwriteAll(fd, reinterpret_cast<const std::byte*>(h.data()), h.size(), 8, tmp));
    unsigned threads = opts.threads > 0 ? static_cast<unsigned>(opts.threads) : std::thread::hardware_concurrency();
    threads = std::clamp<unsigned>(threads, 1, static_cast<unsigned>(std::max<size_t>(1, jobs.size())));
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;  // guards first_error, done and the progress calls
    Status first_error;
    uint64_t done = 0;
    auto work = [&] {
      std::vector<std::byte> buf;
      while (!failed.load(std::memory_order_relaxed)) {
        const size_t j = next.fetch_add(1);
        if (j >= jobs.size()) return;
        const WriteJob& job = jobs[j];
        const Pending& t = tensors_[job.tensor];
        if (buf.size() < job.len) buf.resize(job.len);
        std::span<std::byte> dst(buf.data(), job.len);
        Status s = t.range ? t.range(job.begin, dst) : t.fill(dst);
        if (s.ok()) s = PwriteAll(fd, buf.data(), job.len, data_start + offsets[job.tensor] + job.begin, tmp);
        std::lock_guard lock(mu);
        if (!s.ok()) {
          if (first_error.ok()) first_error = s.Prefixed("tensor '" + t.name + "'");
          failed = true;
          return;
        }
        done += job.len;
        if (opts.progress) opts.progress(done, data_bytes);
      }
    };
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
    HB_RETURN_IF_ERROR(first_error);
    if (::fsync(fd) != 0) return ErrnoError("fsync " + tmp, errno);
    return Status::Ok();
  };
  Status s = body();
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + tmp, errno);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = ErrnoError("rename " + tmp, errno);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace hotboot
