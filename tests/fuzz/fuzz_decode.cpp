// libFuzzer target: any bytes, read as a snapshot through the seekable reader
// (Open with its trust record check, CheckTrust, Verify, ReadSection,
// ReadChunk) and the stream decoder (fed in pieces, its trust record too). Must never crash, hang, leak or allocate without bound; a file
// either reads or fails with a Status.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "hotboot/signing.h"
#include "hotboot/snapshot_file.h"

using namespace hotboot;
using namespace hotboot::snapfile;

namespace {

constexpr uint64_t kMaxDecode = 1u << 20;  // skip decoding files that claim more (zero chunks are cheap to claim)

// A policy trusting the golden files' test key (tests/formats/golden/
// test-signing-key.pem.pub), so that the seed ok-signed.hbsnap passes it and
// its mutants walk every branch of CheckTrust.
const TrustPolicy& Policy() {
  static const TrustPolicy p = [] {
    TrustPolicy t;
    PublicKey k;
    k.raw = {0x26, 0x7d, 0x40, 0x43, 0xca, 0x19, 0xa6, 0x27, 0x66, 0xb2, 0x07, 0x83, 0x5f, 0x5b, 0x36, 0xd9,
             0xdb, 0x5f, 0x38, 0xb5, 0xb4, 0x4b, 0x2b, 0x29, 0x4e, 0x3f, 0x4a, 0x03, 0x76, 0x29, 0xa5, 0xa4};
    k.source = "golden test key";
    t.keys.push_back(k);
    return t;
  }();
  return p;
}

void Seekable(const uint8_t* data, size_t size) {
  int fd = ::memfd_create("fuzz-snapshot", MFD_CLOEXEC);
  if (fd < 0) return;
  if (::write(fd, data, size) == static_cast<ssize_t>(size)) {
    OpenOptions oo;
    oo.base_path = "/nonexistent/base.hbsnap";  // never resolve a base by name here
    auto r = SnapshotReader::Open("/proc/self/fd/" + std::to_string(fd), oo);
    if (r.ok()) {
      (void)CheckTrust(**r, Policy());
      const TrustInfo& t = (*r)->trust();
      if (!t.has_chunk_hashes && (!t.signatures.empty() || t.chunk_count != 0)) __builtin_trap();
      uint64_t total = 0;
      for (const auto& s : (*r)->sections()) total += s.raw_size;
      if (total <= kMaxDecode) {
        (void)(*r)->Verify(1);
        for (const auto& s : (*r)->sections()) {
          (void)(*r)->ReadSection(s.name, kMaxDecode);
          if (!s.chunks.empty()) (void)(*r)->ReadChunk(s.name, s.chunks.size() - 1);
        }
      }
      (void)(*r)->ReadChunk("missing", 0);
    }
  }
  ::close(fd);
}

void Streamed(const uint8_t* data, size_t size) {
  uint64_t seen = 0;
  StreamEvents ev;
  ev.on_data = [&](const SectionInfo& s, uint64_t off, const std::string& b) {
    if (off + b.size() > s.raw_size) __builtin_trap();  // the decoder's own bound
    seen += b.size();
    return Status::Ok();
  };
  ev.on_trust = [&](const TrustInfo& t) { return CheckTrust("fuzz", t, Policy()); };
  StreamDecoder dec(ev, 1, "fuzz");
  dec.set_max_raw_bytes(kMaxDecode);
  // Feed in pieces whose sizes the input itself picks.
  const size_t step = size ? 61 + data[size - 1] * 37 : 1;  // byte-wise feeding is tested in formats_test
  Status s(Code::kNeedMore, "");
  for (size_t at = 0; at < size && s.code() == Code::kNeedMore; at += step) {
    s = dec.Feed(reinterpret_cast<const char*>(data) + at, std::min(step, size - at));
  }
  if (s.code() == Code::kNeedMore) s = dec.Finish();
  if (s.ok() && !dec.done()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Seekable(data, size);
  Streamed(data, size);
  return 0;
}
