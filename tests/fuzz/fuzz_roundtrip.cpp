// libFuzzer target: sections made from the input are written, then read back
// seekable and streamed; every byte must come back, every check must pass;
// the trust record lists every chunk, both readers agree on the root, and
// (option bit 7) signing keeps the digest and gives a valid signature.
// Also the byte-plane transform on its own. Any difference traps.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "hotboot/signing.h"
#include "hotboot/snapshot_file.h"
#include "records.h"

using namespace hotboot;
using namespace hotboot::snapfile;

namespace {

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

const std::string& Dir() {
  static const std::string d = [] {
    // tmpfs: the writer's fsyncs cost nothing there.
    std::string p = "/dev/shm/hotboot-fuzz-roundtrip." + std::to_string(::getpid());
    std::filesystem::create_directories(p);
    return p;
  }();
  return d;
}

// Input: byte 0 options, then sections as [u8 kind][u16 length][bytes].
std::vector<SectionSource> Sections(const uint8_t* data, size_t size, uint8_t* opts) {
  std::vector<SectionSource> out;
  *opts = size ? data[0] : 0;
  size_t at = 1;
  while (at + 3 <= size && out.size() < 8) {
    const uint8_t kind = data[at];
    size_t len = std::min<size_t>(data[at + 1] | (data[at + 2] << 8), size - at - 3);
    std::string bytes(reinterpret_cast<const char*>(data + at + 3), len);
    at += 3 + len;
    if (kind & 0x80 && !bytes.empty()) {  // expand to > 128 KiB so that planes are tried
      std::string big;
      for (uint8_t rep = 0; big.size() < (140u << 10); ++rep) {
        for (char c : bytes) big.push_back(static_cast<char>(c + rep));
      }
      bytes = std::move(big);
    }
    if (kind & 0x40) bytes.append(kind & 0x3f, '\0');
    SectionSource s;
    s.name = "s/" + std::to_string(out.size());
    s.elem = static_cast<ElemType>(kind & 3);
    s.bytes = std::move(bytes);
    out.push_back(std::move(s));
  }
  return out;
}

// One key for the whole run, made once.
const PrivateKey& Key() {
  static const PrivateKey k = [] {
    const std::string path = Dir() + "/key";
    std::filesystem::remove(path);
    std::filesystem::remove(path + ".pub");
    auto made = GenerateKeyPair(path);
    Check(made.ok());
    auto loaded = LoadPrivateKey(path);
    Check(loaded.ok());
    return *loaded;
  }();
  return k;
}

void Planes(const uint8_t* data, size_t size) {
  for (int w : {2, 4}) {
    std::string planes(size, '\0'), back(size, '\0');
    SplitPlanes(reinterpret_cast<const char*>(data), size, w, planes.data());
    JoinPlanes(planes.data(), size, w, back.data());
    Check(std::memcmp(back.data(), data, size) == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Planes(data, size);
  uint8_t opts;
  auto secs = Sections(data, size, &opts);
  WriteOptions wo;
  wo.chunk_size = (opts & 1) ? 4096 : (opts & 2) ? (128u << 10) : (4u << 20);
  wo.transforms = !(opts & 4);
  wo.threads = 1 + ((opts >> 3) & 1);
  wo.zstd_level = 1;
  const std::string path = Dir() + "/snap.hbsnap";
  Check(WriteSnapshot(path, "{\"fuzz\":true}", secs, wo).ok());
  auto r = SnapshotReader::Open(path);
  Check(r.ok());
  Check((*r)->sections().size() == secs.size());
  Check((*r)->Verify(1).ok());
  uint64_t chunks = 0;
  for (const auto& s : (*r)->sections()) chunks += s.chunks.size();
  const TrustInfo trust = (*r)->trust();
  Check(trust.has_chunk_hashes && trust.chunk_count == chunks && trust.signatures.empty());
  for (const auto& s : secs) {
    auto got = (*r)->ReadSection(s.name);
    Check(got.ok() && *got == s.bytes);
  }
  // The same bytes streamed, in pieces.
  std::map<std::string, std::string> streamed;
  StreamEvents ev;
  ev.on_data = [&](const SectionInfo& s, uint64_t, const std::string& b) {
    streamed[s.name] += b;
    return Status::Ok();
  };
  std::string file;
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    char buf[65536];
    for (size_t n; f && (n = std::fread(buf, 1, sizeof buf, f)) > 0;) file.append(buf, n);
    if (f) std::fclose(f);
  }
  StreamDecoder dec(ev, 1);
  const size_t step = 1 + (opts >> 4) * 977;
  Status st(Code::kNeedMore, "");
  for (size_t at = 0; at < file.size(); at += step) {
    Check(st.code() == Code::kNeedMore);
    st = dec.Feed(file.data() + at, std::min(step, file.size() - at));
  }
  Check(st.ok());
  for (const auto& s : secs) Check(streamed[s.name] == s.bytes);
  Check(dec.trust().has_chunk_hashes && dec.trust().root == trust.root);
  if (opts & 0x80) {
    const Digest128 digest = (*r)->file_digest();
    r->reset();
    auto signed_ = SignSnapshot(path, Key());
    Check(signed_.ok() && signed_->root == trust.root);
    auto again = SnapshotReader::Open(path);
    Check(again.ok() && (*again)->file_digest() == digest && (*again)->trust().signed_validly());
  }
  return 0;
}
