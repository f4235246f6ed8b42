// Talking to where snapshots are kept: OCI registries (the distribution API,
// https://github.com/opencontainers/distribution-spec) and plain HTTP(S)
// servers that answer Range requests. All HTTP goes through libcurl; TLS
// checks peers against the system CA store or a given CA file.
//
// Thread-safe: one Registry / HttpFile may serve many threads at once (each
// call uses its own curl easy handle; connections are reused from a share).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::fetch {

struct TlsOptions {
  std::string ca_cert;  // a PEM file of CAs to trust instead of the system store; empty: system store
  bool verify = true;   // false: --tls-verify=false (no peer or host check)
};

// Connection settings shared by every command that fetches or pushes.
struct RemoteOptions {
  TlsOptions tls;
  // Credentials file (containers-auth.json(5) / docker config.json format:
  // {"auths": {"host:port": {"auth": base64("user:pass")}}}). Empty: the
  // first that exists of $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
  // $HOME/.config/containers/auth.json, $DOCKER_CONFIG/config.json, $HOME/.docker/config.json.
  std::string authfile;
  bool plain_http = false;  // oci:// over http:// (a registry without TLS)
  long connect_timeout_s = 10;
  // A transfer that moves fewer than 1 KiB/s for this long is cut off (and retried by the caller).
  long low_speed_time_s = 30;
  std::string user_agent = "hotboot";
};

// oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]. REPO is one or more
// lowercase path components ([a-z0-9]+([._-][a-z0-9]+)*); TAG is
// [A-Za-z0-9_][A-Za-z0-9._-]{0,127}; no tag and no digest means "latest".
struct OciRef {
  std::string registry;    // host[:port]
  std::string repository;  // e.g. models/manga-llm
  std::string tag;         // may be empty when digest is set
  std::string digest;      // "sha256:<64 hex>" or empty
  // The reference a manifest GET uses: the digest when set, else the tag.
  std::string reference() const { return digest.empty() ? tag : digest; }
  std::string str() const;  // back to oci://...
};
Result<OciRef> ParseOciRef(std::string_view s);
// True for "oci://..." ; IsHttpUrl for "https://..." and "http://...".
bool IsOciRef(std::string_view s);
bool IsHttpUrl(std::string_view s);

// An OCI content descriptor.
struct Descriptor {
  std::string media_type;
  std::string digest;  // sha256:<hex>
  uint64_t size = 0;
  std::map<std::string, std::string> annotations;
};

// An OCI image manifest (application/vnd.oci.image.manifest.v1+json) as
// artifacts use it: artifactType, a config, layers, annotations.
struct OciManifest {
  std::string artifact_type;
  Descriptor config;
  std::vector<Descriptor> layers;
  std::map<std::string, std::string> annotations;
  std::string ToJson() const;  // canonical bytes to push (schemaVersion 2, mediaType set)
  // Bounded: at most 4 MiB of JSON, 10000 layers; every digest is
  // sha256:<64 lowercase hex>, sizes are integers < 2^50. Errors are kCorrupt naming the field.
  static Result<OciManifest> Parse(std::string_view json);
};
inline constexpr const char* kOciManifestType = "application/vnd.oci.image.manifest.v1+json";

// "sha256:" + hex of SHA-256 over bytes.
std::string Sha256Digest(std::string_view bytes);

// Receives bytes as they arrive; a non-OK status aborts the transfer.
using Sink = std::function<Status(const char* data, size_t n)>;
// Upload progress: bytes sent so far of this call.
using SentFn = std::function<void(uint64_t sent)>;

class Registry {
 public:
  virtual ~Registry() = default;
  // No network traffic yet; authentication happens on the first 401
  // (WWW-Authenticate: Basic, or Bearer with a token from the realm, asking
  // for scope repository:<repo>:pull[,push]), and is then reused.
  static Result<std::unique_ptr<Registry>> Connect(const OciRef& ref, const RemoteOptions& opts);

  const OciRef& ref() const { return ref_; }

  // GET /v2/<repo>/manifests/<reference>: the manifest's bytes (at most
  // 4 MiB) and its digest -- computed from the bytes, and checked against
  // Docker-Content-Digest and a digest reference when there is one (a
  // mismatch is kCorrupt). kNotFound for an unknown tag or digest; kUntrusted
  // is never used here; a 401 after authenticating is kFailedPrecondition
  // saying which credentials were tried and from which file.
  struct ManifestBytes {
    std::string digest;
    std::string media_type;
    std::string bytes;
  };
  virtual Result<ManifestBytes> GetManifest(const std::string& reference) = 0;
  // HEAD /v2/<repo>/blobs/<digest>.
  virtual Result<bool> HasBlob(const std::string& digest) = 0;
  // GET bytes [offset, offset + length) of a blob (Range; a 200 answer to a
  // ranged request is accepted and skipped up to offset). The sink gets the
  // bytes in order as they arrive; returns how many it got. A dropped
  // connection is kIo after the bytes that did arrive reached the sink: the
  // caller resumes from offset + what it got.
  virtual Result<uint64_t> GetBlob(const std::string& digest, uint64_t offset, uint64_t length,
                                   const Sink& sink) = 0;
  // POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<repo>: true when the
  // registry mounted it (201), false when it opened an upload instead (202;
  // that upload is cancelled).
  virtual Result<bool> MountBlob(const std::string& digest, const std::string& from_repository) = 0;
  // Uploads `length` bytes of fd from `offset` as blob `digest`: POST, then
  // PATCH in chunks of `chunk` bytes (Content-Range), then PUT ?digest=.
  // The registry checks the digest; a refusal is an error naming it.
  virtual Status PushBlob(const std::string& digest, int fd, uint64_t offset, uint64_t length,
                          uint64_t chunk = 64ull << 20, const SentFn& sent = nullptr) = 0;
  virtual Status PushBlobBytes(const std::string& digest, std::string_view bytes) = 0;
  // PUT /v2/<repo>/manifests/<tag>; returns the digest the registry reports.
  virtual Result<std::string> PutManifest(const std::string& tag, const std::string& media_type,
                                          std::string_view bytes) = 0;

 protected:
  OciRef ref_;
};

// A file on a plain HTTP(S) server that answers Range requests.
class HttpFile {
 public:
  virtual ~HttpFile() = default;
  // HEAD (or a 1-byte ranged GET when HEAD says nothing useful): the size,
  // and whether ranges work; a server without Range support is
  // kUnsupported, saying so.
  static Result<std::unique_ptr<HttpFile>> Open(const std::string& url, const RemoteOptions& opts);
  virtual uint64_t size() const = 0;
  virtual const std::string& url() const = 0;
  // As Registry::GetBlob, for the file's bytes.
  virtual Result<uint64_t> Get(uint64_t offset, uint64_t length, const Sink& sink) = 0;
};

}  // namespace hotboot::fetch
