// Push: a snapshot file as an OCI artifact (formats/OCI.md). The layers are
// byte ranges of the file (PartsOf), so the registry stores each large
// section once however many snapshots hold it, and concatenating the layers
// gives the file back, signatures and digests intact.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "hotboot/fetch.h"

namespace hotboot::fetch {

namespace {

using json = nlohmann::json;

// "sha256:<hex>" of bytes [off, off + len) of fd.
Result<std::string> DigestOfRange(int fd, uint64_t off, uint64_t len, const std::string& what) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Internal("SHA-256 init failed");
  std::string buf(8u << 20, '\0');
  for (uint64_t done = 0; done < len;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), len - done));
    ssize_t k = ::pread(fd, buf.data(), n, static_cast<off_t>(off + done));
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return ErrnoError("read " + what, errno);
    if (k == 0) return Truncated(what + " ended while hashing it");
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(k));
    done += static_cast<uint64_t>(k);
  }
  unsigned char md[32];
  unsigned int mdlen = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &mdlen);
  static const char* hex = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned i = 0; i < mdlen; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string Joined(const std::vector<std::string>& v, size_t max_chars) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += ",";
    if (out.size() + s.size() > max_chars) return out + "...";
    out += s;
  }
  return out;
}

}  // namespace

Result<PushResult> Push(const std::string& snapshot, const OciRef& ref, const PushOptions& opts) {
  if (ref.tag.empty()) return InvalidArgument(ref.str() + ": push needs a tag (oci://HOST/REPO:TAG)");
  // Opened as a restore would open it: a damaged file is refused here, not
  // on every node that pulls it.
  HB_ASSIGN_OR_RETURN(auto reader, snapfile::SnapshotReader::Open(snapshot));
  if (reader->base().digest.zero() == false) {
    for (const auto& s : reader->sections()) {
      if (s.is_ref) {
        return Unsupported(snapshot + " refers to sections of a base snapshot (built with --base); push takes " +
                           "self-contained snapshots only");
      }
    }
  }
  const int fd = ::open(snapshot.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + snapshot, errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  HB_ASSIGN_OR_RETURN(auto reg, Registry::Connect(ref, opts.remote));
  PushResult res;
  res.ref = ref.str();
  res.bytes_total = reader->file_size();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t sent_before = 0;
  auto report = [&](uint64_t sent_now) {
    if (!opts.progress) return;
    opts.progress({.what = "push", .done = sent_before + sent_now, .total = res.bytes_total,
                   .elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
  };

  OciManifest m;
  m.artifact_type = kArtifactType;
  for (Part& p : PartsOf(*reader)) {
    HB_ASSIGN_OR_RETURN(p.digest, DigestOfRange(fd, p.offset, p.size, snapshot));
    PushedPart pp{.part = p};
    HB_ASSIGN_OR_RETURN(const bool has, reg->HasBlob(p.digest));
    if (!has) {
      for (const auto& from : opts.mount_from) {
        HB_ASSIGN_OR_RETURN(pp.mounted, reg->MountBlob(p.digest, from));
        if (pp.mounted) break;
      }
      if (!pp.mounted) {
        HB_RETURN_IF_ERROR(reg->PushBlob(p.digest, fd, p.offset, p.size, opts.upload_chunk, report)
                               .Prefixed("push bytes " + std::to_string(p.offset) + "+" + std::to_string(p.size) +
                                         " of " + snapshot));
        pp.uploaded = true;
        res.bytes_uploaded += p.size;
      }
    }
    sent_before += p.size;
    report(0);
    Descriptor d;
    d.media_type = kPartType;
    d.digest = p.digest;
    d.size = p.size;
    d.annotations["org.hotboot.offset"] = std::to_string(p.offset);
    d.annotations["org.hotboot.sections"] = Joined(p.sections, 1024);
    if (p.own_section) d.annotations["org.hotboot.content-hash"] = p.content_hash;
    m.layers.push_back(std::move(d));
    res.parts.push_back(std::move(pp));
  }

  // The config: what an operator (or `skopeo inspect --config`) wants to know
  // without fetching the snapshot.
  json signers = json::array();
  for (const auto& s : reader->trust().signatures) {
    if (s.valid) signers.push_back(s.fingerprint);
  }
  json cfg = {{"format", std::to_string(reader->version_major()) + "." + std::to_string(reader->version_minor())},
              {"file_size", reader->file_size()},
              {"file_digest", reader->file_digest_hex()},
              {"root", reader->trust().has_chunk_hashes ? reader->trust().root_hex() : ""},
              {"signers", signers},
              {"sections", reader->sections().size()}};
  const std::string cfg_bytes = cfg.dump();
  m.config.media_type = kConfigType;
  m.config.digest = Sha256Digest(cfg_bytes);
  m.config.size = cfg_bytes.size();
  HB_ASSIGN_OR_RETURN(const bool has_cfg, reg->HasBlob(m.config.digest));
  if (!has_cfg) HB_RETURN_IF_ERROR(reg->PushBlobBytes(m.config.digest, cfg_bytes).Prefixed("push the config"));
  res.config_digest = m.config.digest;
  m.annotations["org.hotboot.file-digest"] = reader->file_digest_hex();
  m.annotations["org.hotboot.file-size"] = std::to_string(reader->file_size());
  if (reader->trust().has_chunk_hashes) m.annotations["org.hotboot.root"] = reader->trust().root_hex();
  const std::string body = m.ToJson();
  HB_ASSIGN_OR_RETURN(std::string reported, reg->PutManifest(ref.tag, kOciManifestType, body));
  res.digest = Sha256Digest(body);
  if (!reported.empty() && reported != res.digest) {
    return Corrupt("the registry stored the manifest under " + reported + ", but its bytes hash to " + res.digest);
  }
  return res;
}

}  // namespace hotboot::fetch
