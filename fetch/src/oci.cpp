// The OCI registry client (the distribution API over libcurl), references
// and manifests; see oci.h.
#include "hotboot/oci.h"

#include <openssl/evp.h>

#include <mutex>
#include <nlohmann/json.hpp>

#include "auth_internal.h"
#include "http_internal.h"

namespace hotboot::fetch {

using internal::HttpClient;
using internal::HttpRequest;
using internal::HttpResponse;

// ---------------------------------------------------------------- references

namespace {

constexpr const char* kRefForm =
    "expected oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:HEX], e.g. oci://registry.example:5000/models/llm:v3";

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// distribution's path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
bool ValidComponent(std::string_view c) {
  size_t i = 0;
  auto alnums = [&] {
    size_t s = i;
    while (i < c.size() && IsLowerAlnum(c[i])) ++i;
    return i > s;
  };
  if (!alnums()) return false;
  while (i < c.size()) {
    if (c[i] == '.') {
      ++i;
    } else if (c[i] == '_') {
      ++i;
      if (i < c.size() && c[i] == '_') ++i;
    } else if (c[i] == '-') {
      while (i < c.size() && c[i] == '-') ++i;
    } else {
      return false;
    }
    if (!alnums()) return false;
  }
  return true;
}

bool ValidRepository(std::string_view r) {
  if (r.empty() || r.size() > 255) return false;
  size_t start = 0;
  for (;;) {
    size_t slash = r.find('/', start);
    std::string_view comp = r.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (!ValidComponent(comp)) return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

bool ValidTag(std::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  if (!word(t[0])) return false;
  for (char c : t.substr(1)) {
    if (!word(c) && c != '.' && c != '-') return false;
  }
  return true;
}

// host[:port]: DNS labels or an IPv4 address; port 1..65535.
bool ValidRegistry(std::string_view h) {
  std::string_view host = h, port;
  size_t colon = h.find(':');
  if (colon != std::string_view::npos) {
    host = h.substr(0, colon);
    port = h.substr(colon + 1);
    if (port.empty() || port.size() > 5) return false;
    unsigned p = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return false;
      p = p * 10 + static_cast<unsigned>(c - '0');
    }
    if (p < 1 || p > 65535 || port[0] == '0') return false;
  }
  if (host.empty() || host.size() > 253) return false;
  size_t start = 0;
  for (;;) {
    size_t dot = host.find('.', start);
    std::string_view label = host.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

}  // namespace

bool IsOciRef(std::string_view s) { return s.rfind("oci://", 0) == 0; }
bool IsHttpUrl(std::string_view s) { return s.rfind("https://", 0) == 0 || s.rfind("http://", 0) == 0; }

Result<OciRef> ParseOciRef(std::string_view s) {
  const std::string shown(s.substr(0, 300));
  auto bad = [&](const std::string& why) {
    return InvalidArgument("'" + shown + "' is not an OCI reference: " + why + "; " + kRefForm);
  };
  if (!IsOciRef(s)) return bad("it does not start with oci://");
  std::string_view rest = s.substr(6);
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return bad("there is no repository after the registry");
  OciRef ref;
  ref.registry = std::string(rest.substr(0, slash));
  if (!ValidRegistry(ref.registry)) {
    return bad("registry '" + ref.registry + "' is not host[:port] (DNS name or IPv4 address, port 1-65535)");
  }
  std::string_view name = rest.substr(slash + 1);
  size_t at = name.find('@');
  if (at != std::string_view::npos) {
    ref.digest = std::string(name.substr(at + 1));
    name = name.substr(0, at);
    if (!internal::IsSha256Digest(ref.digest)) {
      return bad("digest '" + ref.digest + "' is not sha256: followed by 64 lowercase hex digits");
    }
  }
  size_t last_slash = name.rfind('/');
  size_t colon = name.rfind(':');
  if (colon != std::string_view::npos && (last_slash == std::string_view::npos || colon > last_slash)) {
    ref.tag = std::string(name.substr(colon + 1));
    name = name.substr(0, colon);
    if (!ValidTag(ref.tag)) {
      return bad("tag '" + ref.tag + "' is not [A-Za-z0-9_][A-Za-z0-9._-]{0,127}");
    }
  }
  ref.repository = std::string(name);
  if (!ValidRepository(ref.repository)) {
    return bad("repository '" + ref.repository +
               "' is not lowercase path components ([a-z0-9]+ joined by '.', '_', '__' or '-', separated by '/')");
  }
  if (ref.tag.empty() && ref.digest.empty()) ref.tag = "latest";
  return ref;
}

std::string OciRef::str() const {
  std::string s = "oci://" + registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

std::string Sha256Digest(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

// ---------------------------------------------------------------- manifests

namespace {

using nlohmann::json;

constexpr size_t kMaxManifestBytes = 4u << 20;
constexpr size_t kMaxLayers = 10000;
constexpr uint64_t kMaxSize = 1ull << 50;
constexpr const char* kDockerManifestType = "application/vnd.docker.distribution.manifest.v2+json";

json DescriptorJson(const Descriptor& d) {
  json j = json::object();
  j["mediaType"] = d.media_type;
  j["digest"] = d.digest;
  j["size"] = d.size;
  if (!d.annotations.empty()) j["annotations"] = d.annotations;
  return j;
}

Status ParseAnnotations(const json& parent, const std::string& path, std::map<std::string, std::string>* out) {
  auto it = parent.find("annotations");
  if (it == parent.end() || it->is_null()) return Status::Ok();
  if (!it->is_object()) return Corrupt("manifest field " + path + ".annotations is not an object");
  for (auto a = it->begin(); a != it->end(); ++a) {
    if (!a->is_string()) {
      return Corrupt("manifest field " + path + ".annotations[\"" + a.key().substr(0, 100) + "\"] is not a string");
    }
    (*out)[a.key()] = a->get<std::string>();
  }
  return Status::Ok();
}

Status ParseDescriptor(const json& j, const std::string& path, Descriptor* d) {
  if (!j.is_object()) return Corrupt("manifest field " + path + " is not an object");
  auto mt = j.find("mediaType");
  if (mt == j.end() || !mt->is_string() || mt->get_ref<const std::string&>().empty()) {
    return Corrupt("manifest field " + path + ".mediaType is missing or not a non-empty string");
  }
  d->media_type = mt->get<std::string>();
  auto dg = j.find("digest");
  if (dg == j.end() || !dg->is_string() || !internal::IsSha256Digest(dg->get_ref<const std::string&>())) {
    return Corrupt("manifest field " + path + ".digest is missing or not sha256:<64 lowercase hex>");
  }
  d->digest = dg->get<std::string>();
  auto sz = j.find("size");
  if (sz == j.end() || !(sz->is_number_unsigned() || sz->is_number_integer())) {
    return Corrupt("manifest field " + path + ".size is missing or not an integer");
  }
  if (sz->is_number_integer() && !sz->is_number_unsigned() && sz->get<int64_t>() < 0) {
    return Corrupt("manifest field " + path + ".size is negative");
  }
  uint64_t size = sz->get<uint64_t>();
  if (size >= kMaxSize) return Corrupt("manifest field " + path + ".size " + std::to_string(size) + " is not below 2^50");
  d->size = size;
  return ParseAnnotations(j, path, &d->annotations);
}

}  // namespace

std::string OciManifest::ToJson() const {
  json j = json::object();
  j["schemaVersion"] = 2;
  j["mediaType"] = kOciManifestType;
  if (!artifact_type.empty()) j["artifactType"] = artifact_type;
  j["config"] = DescriptorJson(config);
  json layers_j = json::array();
  for (const auto& l : layers) layers_j.push_back(DescriptorJson(l));
  j["layers"] = std::move(layers_j);
  if (!annotations.empty()) j["annotations"] = annotations;
  return j.dump();
}

Result<OciManifest> OciManifest::Parse(std::string_view text) {
  if (text.size() > kMaxManifestBytes) {
    return Corrupt("manifest is " + std::to_string(text.size()) + " bytes, more than the 4 MiB limit");
  }
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Corrupt("manifest is not valid JSON");
  if (!j.is_object()) return Corrupt("manifest is not a JSON object");
  auto sv = j.find("schemaVersion");
  if (sv == j.end() || !sv->is_number_integer() || sv->get<int64_t>() != 2) {
    return Corrupt("manifest field schemaVersion is missing or not 2");
  }
  auto mt = j.find("mediaType");
  if (mt != j.end()) {
    if (!mt->is_string()) return Corrupt("manifest field mediaType is not a string");
    const std::string& m = mt->get_ref<const std::string&>();
    if (m != kOciManifestType && m != kDockerManifestType) {
      return Corrupt("manifest field mediaType is '" + m.substr(0, 200) + "', not " + kOciManifestType +
                     " (an image index or another kind of manifest)");
    }
  }
  OciManifest m;
  auto at = j.find("artifactType");
  if (at != j.end()) {
    if (!at->is_string()) return Corrupt("manifest field artifactType is not a string");
    m.artifact_type = at->get<std::string>();
  }
  auto cfg = j.find("config");
  if (cfg == j.end()) return Corrupt("manifest field config is missing");
  HB_RETURN_IF_ERROR(ParseDescriptor(*cfg, "config", &m.config));
  auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array()) return Corrupt("manifest field layers is missing or not an array");
  if (layers->size() > kMaxLayers) {
    return Corrupt("manifest field layers has " + std::to_string(layers->size()) + " entries, more than 10000");
  }
  m.layers.resize(layers->size());
  for (size_t i = 0; i < layers->size(); ++i) {
    HB_RETURN_IF_ERROR(ParseDescriptor((*layers)[i], "layers[" + std::to_string(i) + "]", &m.layers[i]));
  }
  HB_RETURN_IF_ERROR(ParseAnnotations(j, "", &m.annotations));
  return m;
}

// ---------------------------------------------------------------- registry

namespace {

constexpr const char* kAcceptManifests =
    "Accept: application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json;q=0.9";

class RegistryImpl final : public Registry {
 public:
  RegistryImpl(const OciRef& ref, const RemoteOptions& opts) : opts_(opts), http_(opts) {
    ref_ = ref;
    origin_ = std::string(opts.plain_http ? "http" : "https") + "://" + ref.registry;
    base_ = origin_ + "/v2/" + ref.repository;
  }

  Result<ManifestBytes> GetManifest(const std::string& reference) override;
  Result<bool> HasBlob(const std::string& digest) override;
  Result<uint64_t> GetBlob(const std::string& digest, uint64_t offset, uint64_t length, const Sink& sink) override;
  Result<bool> MountBlob(const std::string& digest, const std::string& from_repository) override;
  Status PushBlob(const std::string& digest, int fd, uint64_t offset, uint64_t length, uint64_t chunk,
                  const SentFn& sent) override;
  Status PushBlobBytes(const std::string& digest, std::string_view bytes) override;
  Result<std::string> PutManifest(const std::string& tag, const std::string& media_type,
                                  std::string_view bytes) override;

 private:
  // What a request needs the token to allow.
  struct Scope {
    bool push = false;
    std::string also_pull;  // another repository (a mount's source)
  };
  Result<HttpResponse> Send(HttpRequest req, const Scope& scope);
  Status Authenticate(const HttpResponse& challenge_resp, const Scope& scope, const std::string& tried);
  Status Refused(long code, const std::string& what);
  Status LoadCredentials();
  std::string Resolve(const std::string& location) const;
  Status Unexpected(const std::string& what, const HttpResponse& r);
  Result<std::string> StartUpload(const std::string& what);

  RemoteOptions opts_;
  HttpClient http_;
  std::string origin_, base_;

  std::mutex mu_;
  std::string auth_header_;  // "Authorization: ..." in use, empty before the first 401
  std::string auth_scope_;   // the Bearer token's scope ("" for Basic)
  bool creds_loaded_ = false;
  internal::Credentials creds_;
};

std::string ScopeString(const std::string& repo, bool push, const std::string& also_pull) {
  std::string s = "repository:" + repo + (push ? ":pull,push" : ":pull");
  if (!also_pull.empty()) s += " repository:" + also_pull + ":pull";
  return s;
}

Status RegistryImpl::LoadCredentials() {
  if (creds_loaded_) return Status::Ok();
  HB_ASSIGN_OR_RETURN(creds_, internal::LookupCredentials(ref_.registry, ref_.repository, opts_.authfile));
  creds_loaded_ = true;
  return Status::Ok();
}

Status RegistryImpl::Refused(long code, const std::string& what) {
  if (creds_.found) {
    return FailedPrecondition("registry " + ref_.registry + " refused the credentials for user '" + creds_.user +
                              "' from " + creds_.file + " (HTTP " + std::to_string(code) + " to " + what +
                              "): check them, or run `podman login " + ref_.registry + "`");
  }
  std::string files;
  for (const auto& f : creds_.looked) files += (files.empty() ? "" : ", ") + f;
  if (files.empty()) files = "none (no --authfile, $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR, $DOCKER_CONFIG or $HOME)";
  return FailedPrecondition("registry " + ref_.registry + " wants credentials (HTTP " + std::to_string(code) +
                            " to " + what + ") and none were found for it; looked in: " + files +
                            ". Run `podman login " + ref_.registry + "` or pass --authfile");
}

Status RegistryImpl::Authenticate(const HttpResponse& r, const Scope& scope, const std::string& tried) {
  HB_RETURN_IF_ERROR(LoadCredentials());
  std::string header = r.header("www-authenticate");
  auto ch = internal::ParseChallenge(header);
  if (!ch) return Refused(r.code, tried);
  if (ch->scheme == "basic") {
    if (!creds_.found) return Refused(r.code, tried);
    std::string h = "Authorization: Basic " + internal::Base64Encode(creds_.user + ":" + creds_.password);
    if (h == auth_header_) return Refused(r.code, tried);  // these very credentials were just refused
    auth_header_ = h;
    auth_scope_.clear();
    return Status::Ok();
  }
  if (ch->scheme != "bearer") {
    return Unsupported("registry " + ref_.registry + " asks for '" + ch->scheme +
                       "' authentication (WWW-Authenticate: " + header.substr(0, 200) +
                       "); this client speaks Basic and Bearer");
  }
  auto realm = ch->params.find("realm");
  if (realm == ch->params.end() || !IsHttpUrl(realm->second)) {
    return Corrupt("registry " + ref_.registry + " sent a Bearer challenge without an http(s) realm: " +
                   header.substr(0, 300));
  }
  std::string scope_str = ScopeString(ref_.repository, scope.push, scope.also_pull);
  std::string url = realm->second;
  url += (url.find('?') == std::string::npos ? "?" : "&");
  auto svc = ch->params.find("service");
  if (svc != ch->params.end()) url += "service=" + internal::UrlEscape(svc->second) + "&";
  // One scope parameter per repository, as docker sends them.
  url += "scope=" + internal::UrlEscape("repository:" + ref_.repository + (scope.push ? ":pull,push" : ":pull"));
  if (!scope.also_pull.empty()) url += "&scope=" + internal::UrlEscape("repository:" + scope.also_pull + ":pull");
  HttpRequest tok;
  tok.url = url;
  tok.max_body = 1u << 20;
  tok.follow_redirects = true;
  if (creds_.found) {
    tok.headers.push_back("Authorization: Basic " + internal::Base64Encode(creds_.user + ":" + creds_.password));
  }
  HB_ASSIGN_OR_RETURN(HttpResponse t, http_.Perform(tok));
  if (t.code == 401 || t.code == 403) return Refused(t.code, "the token request to " + realm->second);
  if (t.code != 200) {
    return IoError("token request to " + realm->second + " for " + ref_.registry + ": HTTP " + std::to_string(t.code) +
                   ": " + internal::BodySnippet(t.body));
  }
  nlohmann::json j = nlohmann::json::parse(t.body, nullptr, false);
  std::string token;
  if (j.is_object()) {
    for (const char* k : {"token", "access_token"}) {
      auto it = j.find(k);
      if (it != j.end() && it->is_string() && !it->get_ref<const std::string&>().empty()) {
        token = it->get<std::string>();
        break;
      }
    }
  }
  if (token.empty()) {
    return Corrupt("token answer from " + realm->second + " has no \"token\" or \"access_token\" string: " +
                   internal::BodySnippet(t.body));
  }
  auth_header_ = "Authorization: Bearer " + token;
  auth_scope_ = scope_str;
  return Status::Ok();
}

Result<HttpResponse> RegistryImpl::Send(HttpRequest req, const Scope& scope) {
  const std::vector<std::string> base_headers = req.headers;
  const std::string what = req.method + " " + req.url;
  // A 401 gets one fresh authentication (a first one, a token that expired
  // or lacks this scope); a 401 to what it yielded is a refusal.
  bool renewed = false;
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::string auth;
    {
      std::lock_guard<std::mutex> l(mu_);
      auth = auth_header_;
    }
    req.headers = base_headers;
    if (!auth.empty()) req.headers.push_back(auth);
    HB_ASSIGN_OR_RETURN(HttpResponse r, http_.Perform(req));
    if (r.code != 401) return r;
    std::lock_guard<std::mutex> l(mu_);
    if (auth_header_ != auth) continue;  // another thread authenticated meanwhile
    if (renewed) {
      HB_RETURN_IF_ERROR(LoadCredentials());
      return Refused(r.code, what);
    }
    HB_RETURN_IF_ERROR(Authenticate(r, scope, what));
    renewed = true;
  }
  std::lock_guard<std::mutex> l(mu_);
  HB_RETURN_IF_ERROR(LoadCredentials());
  return Refused(401, what);
}

std::string RegistryImpl::Resolve(const std::string& loc) const {
  if (IsHttpUrl(loc)) return loc;
  if (!loc.empty() && loc[0] == '/') return origin_ + loc;
  return origin_ + "/" + loc;
}

Status RegistryImpl::Unexpected(const std::string& what, const HttpResponse& r) {
  std::string msg = "registry " + ref_.registry + ": " + what + ": HTTP " + std::to_string(r.code);
  std::string snip = internal::BodySnippet(r.body);
  if (!snip.empty()) msg += ": " + snip;
  if (r.code == 403) return FailedPrecondition(msg + " (the credentials lack permission for " + ref_.repository + ")");
  if (r.code == 404) return NotFound(msg);
  return IoError(msg);
}

Result<Registry::ManifestBytes> RegistryImpl::GetManifest(const std::string& reference) {
  HttpRequest req;
  req.url = base_ + "/manifests/" + reference;
  req.headers.push_back(kAcceptManifests);
  req.max_body = kMaxManifestBytes;
  auto r = Send(req, Scope{});
  if (!r.ok()) {
    if (r.status().code() == Code::kCorrupt) {
      return Corrupt("manifest " + reference + " of " + ref_.registry + "/" + ref_.repository +
                     " is larger than 4 MiB; refused");
    }
    return r.status();
  }
  if (r->code == 404) {
    return NotFound("manifest '" + reference + "' not found in " + ref_.registry + "/" + ref_.repository +
                    " (HTTP 404: " + internal::BodySnippet(r->body, 200) + ")");
  }
  if (r->code != 200) return Unexpected("GET manifest " + reference, *r);
  ManifestBytes m;
  m.bytes = std::move(r->body);
  m.digest = Sha256Digest(m.bytes);
  m.media_type = r->header("content-type");
  if (size_t semi = m.media_type.find(';'); semi != std::string::npos) m.media_type.resize(semi);
  const std::string dcd = r->header("docker-content-digest");
  if (!dcd.empty() && internal::IsSha256Digest(dcd) && dcd != m.digest) {
    return Corrupt("manifest " + reference + " of " + ref_.registry + "/" + ref_.repository + ": its bytes hash to " +
                   m.digest + " but the registry says Docker-Content-Digest " + dcd);
  }
  if (internal::IsSha256Digest(reference) && reference != m.digest) {
    return Corrupt("manifest asked by digest " + reference + " from " + ref_.registry + "/" + ref_.repository +
                   " hashes to " + m.digest + "; refused");
  }
  return m;
}

Result<bool> RegistryImpl::HasBlob(const std::string& digest) {
  if (!internal::IsSha256Digest(digest)) return InvalidArgument("'" + digest + "' is not a sha256 digest");
  HttpRequest req;
  req.method = "HEAD";
  req.url = base_ + "/blobs/" + digest;
  req.follow_redirects = true;
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(req, Scope{}));
  if (r.code == 200) return true;
  if (r.code == 404) return false;
  return Unexpected("HEAD blob " + digest, r);
}

Result<uint64_t> RegistryImpl::GetBlob(const std::string& digest, uint64_t offset, uint64_t length,
                                       const Sink& sink) {
  if (!internal::IsSha256Digest(digest)) return InvalidArgument("'" + digest + "' is not a sha256 digest");
  if (length == 0) return uint64_t{0};
  if (offset >= kMaxSize || length >= kMaxSize) {
    return InvalidArgument("range " + std::to_string(offset) + "+" + std::to_string(length) + " of blob " + digest +
                           " is beyond 2^50 bytes");
  }
  HttpRequest req;
  req.url = base_ + "/blobs/" + digest;
  req.follow_redirects = true;
  req.ranged = true;
  req.range_offset = offset;
  req.range_length = length;
  req.sink = &sink;
  // Transfer errors name the URL (registry, repository, digest) and the
  // bytes that arrived; a sink's error comes back as the sink said it.
  HB_ASSIGN_OR_RETURN(HttpResponse resp, Send(req, Scope{}));
  HttpResponse* r = &resp;
  if (r->code == 404) {
    return NotFound("blob " + digest + " not found in " + ref_.registry + "/" + ref_.repository + " (HTTP 404)");
  }
  if (r->code == 416) {
    return InvalidArgument("blob " + digest + " of " + ref_.registry + "/" + ref_.repository + ": bytes from " +
                           std::to_string(offset) + " (" + std::to_string(length) +
                           " asked) are past its end (HTTP 416)");
  }
  if (r->code != 200 && r->code != 206) return Unexpected("GET blob " + digest, *r);
  if (r->sink_bytes != length) {
    return IoError("blob " + digest + " of " + ref_.registry + "/" + ref_.repository + ": the transfer ended after " +
                   std::to_string(r->sink_bytes) + " of " + std::to_string(length) + " bytes asked from byte " +
                   std::to_string(offset));
  }
  return r->sink_bytes;
}

Result<std::string> RegistryImpl::StartUpload(const std::string& what) {
  HttpRequest post;
  post.method = "POST";
  post.url = base_ + "/blobs/uploads/";
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(post, Scope{true, ""}));
  if (r.code != 202) return Unexpected("start upload of " + what, r);
  std::string loc = r.header("location");
  if (loc.empty()) return IoError("registry " + ref_.registry + ": upload of " + what + ": 202 without Location");
  return Resolve(loc);
}

namespace {
std::string WithDigest(const std::string& location, const std::string& digest) {
  return location + (location.find('?') == std::string::npos ? "?" : "&") + "digest=" + internal::UrlEscape(digest);
}
}  // namespace

Status RegistryImpl::PushBlob(const std::string& digest, int fd, uint64_t offset, uint64_t length, uint64_t chunk,
                              const SentFn& sent) {
  if (!internal::IsSha256Digest(digest)) return InvalidArgument("'" + digest + "' is not a sha256 digest");
  if (chunk == 0) chunk = 64ull << 20;
  const std::string what = "blob " + digest + " to " + ref_.registry + "/" + ref_.repository;
  HB_ASSIGN_OR_RETURN(std::string location, StartUpload(what));
  uint64_t done = 0;
  while (done < length) {
    const uint64_t n = std::min(chunk, length - done);
    HttpRequest patch;
    patch.method = "PATCH";
    patch.url = location;
    patch.headers = {"Content-Type: application/octet-stream",
                     "Content-Range: " + std::to_string(done) + "-" + std::to_string(done + n - 1),
                     "Expect:"};
    patch.body.present = true;
    patch.body.fd = fd;
    patch.body.fd_offset = offset + done;
    patch.body.length = n;
    SentFn progress;
    if (sent) {
      progress = [&sent, done](uint64_t s) { sent(done + s); };
      patch.sent = &progress;
    }
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(patch, Scope{true, ""}));
    if (r.code != 202) {
      return Unexpected("upload of " + what + ", chunk at byte " + std::to_string(done) + " (" + std::to_string(n) +
                            " bytes)",
                        r);
    }
    std::string loc = r.header("location");
    if (!loc.empty()) location = Resolve(loc);
    done += n;
  }
  HttpRequest put;
  put.method = "PUT";
  put.url = WithDigest(location, digest);
  put.headers = {"Content-Type: application/octet-stream"};
  put.body.present = true;
  put.body.length = 0;
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(put, Scope{true, ""}));
  if (r.code == 201) return Status::Ok();
  if (r.code == 400 && r.body.find("DIGEST_INVALID") != std::string::npos) {
    return Corrupt("registry " + ref_.registry + " refused " + what + ": the " + std::to_string(length) +
                   " bytes sent do not hash to that digest (DIGEST_INVALID)");
  }
  return Unexpected("finish upload of " + what, r);
}

Status RegistryImpl::PushBlobBytes(const std::string& digest, std::string_view bytes) {
  if (!internal::IsSha256Digest(digest)) return InvalidArgument("'" + digest + "' is not a sha256 digest");
  const std::string what = "blob " + digest + " to " + ref_.registry + "/" + ref_.repository;
  HB_ASSIGN_OR_RETURN(std::string location, StartUpload(what));
  // A monolithic upload: the bytes ride on the closing PUT.
  HttpRequest put;
  put.method = "PUT";
  put.url = WithDigest(location, digest);
  put.headers = {"Content-Type: application/octet-stream", "Expect:"};
  put.body.present = true;
  put.body.bytes = bytes;
  put.body.length = bytes.size();
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(put, Scope{true, ""}));
  if (r.code == 201) return Status::Ok();
  if (r.code == 400 && r.body.find("DIGEST_INVALID") != std::string::npos) {
    return Corrupt("registry " + ref_.registry + " refused " + what + ": the " + std::to_string(bytes.size()) +
                   " bytes sent do not hash to that digest (DIGEST_INVALID)");
  }
  return Unexpected("upload of " + what, r);
}

Result<bool> RegistryImpl::MountBlob(const std::string& digest, const std::string& from_repository) {
  if (!internal::IsSha256Digest(digest)) return InvalidArgument("'" + digest + "' is not a sha256 digest");
  if (!ValidRepository(from_repository)) {
    return InvalidArgument("'" + from_repository + "' is not a repository name to mount from");
  }
  HttpRequest post;
  post.method = "POST";
  post.url = base_ + "/blobs/uploads/?mount=" + internal::UrlEscape(digest) + "&from=" +
             internal::UrlEscape(from_repository);
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(post, Scope{true, from_repository}));
  if (r.code == 201) return true;
  if (r.code != 202) return Unexpected("mount blob " + digest + " from " + from_repository, r);
  // The registry opened an upload instead: cancel it.
  std::string loc = r.header("location");
  if (!loc.empty()) {
    HttpRequest del;
    del.method = "DELETE";
    del.url = Resolve(loc);
    auto d = Send(del, Scope{true, ""});
    (void)d;  // a leftover upload is purged by the registry; not worth failing for
  }
  return false;
}

Result<std::string> RegistryImpl::PutManifest(const std::string& tag, const std::string& media_type,
                                              std::string_view bytes) {
  if (!ValidTag(tag) && !internal::IsSha256Digest(tag)) {
    return InvalidArgument("'" + tag + "' is not a tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) or a digest");
  }
  if (bytes.size() > kMaxManifestBytes) {
    return InvalidArgument("manifest of " + std::to_string(bytes.size()) + " bytes is larger than 4 MiB");
  }
  HttpRequest put;
  put.method = "PUT";
  put.url = base_ + "/manifests/" + tag;
  put.headers = {"Content-Type: " + media_type, "Expect:"};
  put.body.present = true;
  put.body.bytes = bytes;
  put.body.length = bytes.size();
  HB_ASSIGN_OR_RETURN(HttpResponse r, Send(put, Scope{true, ""}));
  if (r.code != 201 && r.code != 200) return Unexpected("PUT manifest " + tag, r);
  const std::string computed = Sha256Digest(bytes);
  const std::string dcd = r.header("docker-content-digest");
  if (!dcd.empty() && internal::IsSha256Digest(dcd) && dcd != computed) {
    return Corrupt("registry " + ref_.registry + " stored manifest " + tag + " as " + dcd + " but its bytes hash to " +
                   computed);
  }
  return computed;
}

}  // namespace

Result<std::unique_ptr<Registry>> Registry::Connect(const OciRef& ref, const RemoteOptions& opts) {
  if (!ValidRegistry(ref.registry) || !ValidRepository(ref.repository)) {
    return InvalidArgument("'" + ref.str() + "' is not a valid OCI reference; " + kRefForm);
  }
  if (!opts.authfile.empty()) {
    // Named on the command line: a missing file is the user's mistake, said now.
    HB_RETURN_IF_ERROR(internal::LookupCredentials(ref.registry, ref.repository, opts.authfile).status());
  }
  return std::unique_ptr<Registry>(std::make_unique<RegistryImpl>(ref, opts));
}

}  // namespace hotboot::fetch
