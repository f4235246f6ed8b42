// ParseManifest: one pass over the JSON, every field's type checked before it
// is read (nlohmann's get<>/value() throw on a wrong type; nothing here calls
// them on an unchecked value), every length, count and number bounded.
#include "hotboot/manifest.h"

#include <cmath>
#include <limits>

namespace hotboot {

using json = nlohmann::json;

namespace {

const char* TypeName(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer: return "a negative integer";
    case json::value_t::number_unsigned: return "an unsigned integer";
    case json::value_t::number_float: return "a number with a fraction";
    case json::value_t::binary: return "binary";
    case json::value_t::discarded: return "nothing";
  }
  return "?";
}

Status Bad(const std::string& path, const std::string& what) { return Corrupt("manifest: " + path + ": " + what); }

Status WrongType(const std::string& path, const char* expected, const json& got) {
  return Bad(path, std::string("expected ") + expected + ", got " + TypeName(got));
}

std::string Join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string Index(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

// One JSON object at a known path. Get* read one key: a missing key is an
// error when required, else leaves *out as it was.
class Obj {
 public:
  Obj(const json& j, std::string path) : j_(j), path_(std::move(path)) {}
  const std::string& path() const { return path_; }

  // The member, or null when absent (and an error when required).
  Result<const json*> Member(std::string_view key, bool required) const {
    auto it = j_.find(key);
    if (it == j_.end()) {
      if (required) return Bad(Join(path_, key), "missing");
      return static_cast<const json*>(nullptr);
    }
    return &*it;
  }

  Status Str(std::string_view key, std::string* out, bool required, size_t max = kManifestMaxString) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return Status::Ok();
    return ReadStr(*v, Join(path_, key), out, max);
  }
  // Free text (a prompt, a model's answer): any bytes JSON can carry, NUL
  // included (a model may well emit one); bounded like any string.
  Status Text(std::string_view key, std::string* out, bool required) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return Status::Ok();
    return ReadStr(*v, Join(path_, key), out, kManifestMaxString, /*allow_nul=*/true);
  }
  Status U64(std::string_view key, uint64_t* out, bool required, uint64_t max = kManifestMaxSize) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return Status::Ok();
    return ReadU64(*v, Join(path_, key), out, max);
  }
  Status Int(std::string_view key, int64_t* out, bool required, int64_t min, int64_t max) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return Status::Ok();
    return ReadInt(*v, Join(path_, key), out, min, max);
  }
  Status Int(std::string_view key, int* out, bool required, int min, int max) const {
    int64_t v = *out;
    HB_RETURN_IF_ERROR(Int(key, &v, required, min, max));
    *out = static_cast<int>(v);
    return Status::Ok();
  }
  Status Bool(std::string_view key, bool* out, bool required) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return Status::Ok();
    if (!v->is_boolean()) return WrongType(Join(path_, key), "a boolean", *v);
    *out = v->get<bool>();
    return Status::Ok();
  }
  Status Ms(std::string_view key, double* out, bool required) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return Status::Ok();
    return ReadMs(*v, Join(path_, key), out);
  }
  // The member as an object (absent and optional: ok, *present false).
  Result<std::optional<Obj>> Child(std::string_view key, bool required) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return std::optional<Obj>();
    if (!v->is_object()) return WrongType(Join(path_, key), "an object", *v);
    return std::optional<Obj>(Obj(*v, Join(path_, key)));
  }
  // The member as an array of at most `max` elements (absent: null).
  Result<const json*> Array(std::string_view key, bool required, size_t max) const {
    HB_ASSIGN_OR_RETURN(const json* v, Member(key, required));
    if (!v) return v;
    if (!v->is_array()) return WrongType(Join(path_, key), "an array", *v);
    if (v->size() > max) {
      return Bad(Join(path_, key), std::to_string(v->size()) + " elements, more than the " + std::to_string(max) +
                                       " a manifest may hold");
    }
    return v;
  }

  static Status ReadStr(const json& v, const std::string& path, std::string* out, size_t max, bool allow_nul = false) {
    if (!v.is_string()) return WrongType(path, "a string", v);
    const auto& s = v.get_ref<const std::string&>();
    if (s.size() > max) {
      return Bad(path, "a string of " + std::to_string(s.size()) + " bytes, more than the " + std::to_string(max) +
                           " allowed");
    }
    if (!allow_nul && s.find('\0') != std::string::npos) return Bad(path, "a string with a NUL byte");
    *out = s;
    return Status::Ok();
  }
  static Status ReadU64(const json& v, const std::string& path, uint64_t* out, uint64_t max) {
    if (!v.is_number_unsigned()) return WrongType(path, "an unsigned integer", v);
    const uint64_t n = v.get<uint64_t>();
    if (n > max) return Bad(path, std::to_string(n) + " is more than the " + std::to_string(max) + " allowed");
    *out = n;
    return Status::Ok();
  }
  static Status ReadInt(const json& v, const std::string& path, int64_t* out, int64_t min, int64_t max) {
    if (!v.is_number_integer()) return WrongType(path, "an integer", v);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max)) {
      return Bad(path, v.dump() + " is out of range " + std::to_string(min) + ".." + std::to_string(max));
    }
    const int64_t n = v.get<int64_t>();
    if (n < min || n > max) {
      return Bad(path, std::to_string(n) + " is out of range " + std::to_string(min) + ".." + std::to_string(max));
    }
    *out = n;
    return Status::Ok();
  }
  static Status ReadMs(const json& v, const std::string& path, double* out) {
    if (!v.is_number()) return WrongType(path, "a number", v);
    const double d = v.get<double>();
    if (!std::isfinite(d) || d < 0 || d > kManifestMaxMs) {
      return Bad(path, "a duration of " + v.dump() + " ms is out of range 0.." + std::to_string(kManifestMaxMs));
    }
    *out = d;
    return Status::Ok();
  }

 private:
  const json& j_;
  std::string path_;
};

Status ReadStrings(const json& arr, const std::string& path, std::vector<std::string>* out, size_t max_len) {
  out->clear();
  out->reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    std::string s;
    HB_RETURN_IF_ERROR(Obj::ReadStr(arr[i], Index(path, i), &s, max_len));
    out->push_back(std::move(s));
  }
  return Status::Ok();
}

// Free-form JSON (labels, a canary's expected value): at most
// kManifestMaxJsonDepth deep and kManifestMaxJsonBytes serialized. The depth
// is checked before anything recurses over the value without a bound.
Status CheckDepth(const json& v, const std::string& path, int depth) {
  if (depth > kManifestMaxJsonDepth) {
    return Bad(path, "nested deeper than the " + std::to_string(kManifestMaxJsonDepth) + " levels allowed");
  }
  if (v.is_structured()) {
    for (const auto& e : v) HB_RETURN_IF_ERROR(CheckDepth(e, path, depth + 1));
  }
  return Status::Ok();
}

Status ReadFreeJson(const json& v, const std::string& path, json* out) {
  HB_RETURN_IF_ERROR(CheckDepth(v, path, 1));
  const size_t n = v.dump().size();
  if (n > kManifestMaxJsonBytes) {
    return Bad(path, std::to_string(n) + " bytes of JSON, more than the " + std::to_string(kManifestMaxJsonBytes) +
                         " allowed");
  }
  *out = v;
  return Status::Ok();
}

bool IsAbsolutePath(std::string_view p) { return !p.empty() && p[0] == '/'; }

// No "." or ".." component, no empty component but a trailing "/".
bool IsNormalAbsolutePath(std::string_view p) {
  if (!IsAbsolutePath(p)) return false;
  size_t i = 1;
  while (i < p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    const std::string_view c = p.substr(i, j - i);
    if (c == "." || c == "..") return false;
    if (c.empty() && j != p.size()) return false;
    i = j + 1;
  }
  return true;
}

Status ReadHttpCall(const json& v, const std::string& path, ManifestHttpCall* out) {
  if (!v.is_object()) return WrongType(path, "an object", v);
  Obj o(v, path);
  HB_RETURN_IF_ERROR(o.Str("method", &out->method, false, 16));
  HB_RETURN_IF_ERROR(o.Str("path", &out->path, true, kManifestMaxPath));
  HB_RETURN_IF_ERROR(o.Str("body", &out->body, false));
  if (out->method.empty()) return Bad(Join(path, "method"), "empty");
  for (char c : out->method) {
    if (c < 'A' || c > 'Z') return Bad(Join(path, "method"), "'" + out->method + "' is not an HTTP method");
  }
  if (out->path.empty() || out->path[0] != '/') return Bad(Join(path, "path"), "'" + out->path + "' must start with /");
  for (unsigned char c : out->path) {
    if (c <= ' ' || c == 0x7f) return Bad(Join(path, "path"), "a request path with a space or control character");
  }
  return Status::Ok();
}

Status ReadHost(const Obj& o, ManifestHost* h) {
  HB_RETURN_IF_ERROR(o.Str("hostname", &h->hostname, false, 255));
  HB_RETURN_IF_ERROR(o.Str("kernel", &h->kernel, true, 255));
  HB_RETURN_IF_ERROR(o.Str("arch", &h->arch, true, 64));
  HB_RETURN_IF_ERROR(o.Str("cpu_model", &h->cpu_model, false, 1024));
  HB_RETURN_IF_ERROR(o.Int("cpus", &h->cpus, false, 0, 1 << 20));
  HB_ASSIGN_OR_RETURN(const json* flags, o.Array("isa_flags", true, kManifestMaxIsaFlags));
  return ReadStrings(*flags, Join(o.path(), "isa_flags"), &h->isa_flags, 64);
}

Status ReadCriu(const Obj& o, ManifestCriu* c) {
  HB_RETURN_IF_ERROR(o.Str("version", &c->version, true, 64));
  HB_RETURN_IF_ERROR(o.U64("images_bytes", &c->images_bytes, false));
  return o.Int("log_level", &c->log_level, false, 0, 4);
}

Status ReadMappedFile(const json& v, const std::string& path, int version, MappedFileEntry* f) {
  if (!v.is_object()) return WrongType(path, "an object", v);
  Obj o(v, path);
  HB_RETURN_IF_ERROR(o.Str("path", &f->path, true, kManifestMaxPath));
  HB_RETURN_IF_ERROR(o.U64("size", &f->size, true));
  // Optional even in version 2 (a manifest without it gets the size check
  // only): the host's own files are what is checked, and hotboot's builder
  // always records it.
  HB_RETURN_IF_ERROR(o.Str("content_hash", &f->content_hash, false, 32));
  if (!IsAbsolutePath(f->path)) return Bad(Join(path, "path"), "'" + f->path + "' is not an absolute path");
  if (!f->content_hash.empty() && !IsContentHash(f->content_hash)) {
    return Bad(Join(path, "content_hash"), "'" + f->content_hash + "' is not 32 lowercase hex digits");
  }
  return Status::Ok();
}

// Version 2: {name, size, section, content_hash}. Version 1 recorded a path
// instead: its file name must be the content-hash name, its directory is the
// build's weights directory, and the content hash is the name's.
Status ReadProvidedFile(const json& v, const std::string& path, int version, ProvidedFile* f,
                        std::string* v1_dir) {
  if (!v.is_object()) return WrongType(path, "an object", v);
  Obj o(v, path);
  HB_RETURN_IF_ERROR(o.U64("size", &f->size, true));
  HB_RETURN_IF_ERROR(o.Str("section", &f->section, true, kManifestMaxFileName + 16));
  std::string named_hash;
  if (version >= 2) {
    HB_RETURN_IF_ERROR(o.Str("name", &f->name, true, kManifestMaxFileName));
    HB_RETURN_IF_ERROR(o.Str("content_hash", &f->content_hash, true, 32));
    if (!IsContentHash(f->content_hash)) {
      return Bad(Join(path, "content_hash"), "'" + f->content_hash + "' is not 32 lowercase hex digits");
    }
    if (!ParseContentName(f->name, &named_hash)) {
      return Bad(Join(path, "name"), "'" + f->name +
                                         "' is not a content-hash name (weights-<32 hex>.bin or "
                                         "gpu-weights-<32 hex>.bin)");
    }
    if (named_hash != f->content_hash) {
      return Bad(Join(path, "name"), "'" + f->name + "' does not name its content hash " + f->content_hash);
    }
  } else {
    std::string p;
    HB_RETURN_IF_ERROR(o.Str("path", &p, true, kManifestMaxPath));
    const size_t slash = p.rfind('/');
    if (!IsNormalAbsolutePath(p) || slash == std::string::npos || slash == 0) {
      return Bad(Join(path, "path"), "'" + p + "' is not a file in an absolute, normal directory");
    }
    f->name = p.substr(slash + 1);
    if (!ParseContentName(f->name, &named_hash)) {
      return Bad(Join(path, "path"), "'" + p + "': the file name is not a content-hash name (weights-<32 hex>.bin)");
    }
    f->content_hash = named_hash;
    const std::string dir = p.substr(0, slash);
    if (v1_dir->empty()) {
      *v1_dir = dir;
    } else if (*v1_dir != dir) {
      return Bad(Join(path, "path"), "'" + p + "' is not in " + *v1_dir + " with the other provided files");
    }
  }
  if (f->section != "weights/" + f->name) {
    return Bad(Join(path, "section"), "'" + f->section + "' is not weights/" + f->name);
  }
  return Status::Ok();
}

Status ReadProcess(const Obj& o, int version, ManifestProcess* p) {
  HB_ASSIGN_OR_RETURN(const json* cmd, o.Array("command", true, kManifestMaxArgs));
  HB_RETURN_IF_ERROR(ReadStrings(*cmd, Join(o.path(), "command"), &p->command, kManifestMaxString));
  if (p->command.empty()) return Bad(Join(o.path(), "command"), "empty");
  HB_RETURN_IF_ERROR(o.Str("cwd", &p->cwd, false, kManifestMaxPath));
  if (!p->cwd.empty() && !IsAbsolutePath(p->cwd)) {
    return Bad(Join(o.path(), "cwd"), "'" + p->cwd + "' is not an absolute path");
  }
  HB_RETURN_IF_ERROR(o.Bool("pid_namespace", &p->pid_namespace, false));
  HB_ASSIGN_OR_RETURN(const json* pids, o.Array("pids", false, kManifestMaxPids));
  if (pids) {
    for (size_t i = 0; i < pids->size(); ++i) {
      int64_t pid = 0;
      HB_RETURN_IF_ERROR(Obj::ReadInt((*pids)[i], Index(Join(o.path(), "pids"), i), &pid, 1, kManifestMaxPid));
      p->pids.push_back(pid);
    }
  }
  HB_ASSIGN_OR_RETURN(const json* keys, o.Array("fd_keys", true, kManifestMaxFdKeys));
  HB_RETURN_IF_ERROR(ReadStrings(*keys, Join(o.path(), "fd_keys"), &p->fd_keys, kManifestMaxPath));
  HB_ASSIGN_OR_RETURN(const json* mapped, o.Array("mapped_files", true, kManifestMaxMappedFiles));
  p->mapped_files.resize(mapped->size());
  for (size_t i = 0; i < mapped->size(); ++i) {
    HB_RETURN_IF_ERROR(
        ReadMappedFile((*mapped)[i], Index(Join(o.path(), "mapped_files"), i), version, &p->mapped_files[i]));
  }
  HB_ASSIGN_OR_RETURN(const json* provided, o.Array("provided_files", true, kManifestMaxProvidedFiles));
  p->provided_files.resize(provided->size());
  std::string v1_dir;
  uint64_t total = 0;
  for (size_t i = 0; i < provided->size(); ++i) {
    const std::string at = Index(Join(o.path(), "provided_files"), i);
    HB_RETURN_IF_ERROR(ReadProvidedFile((*provided)[i], at, version, &p->provided_files[i], &v1_dir));
    total += p->provided_files[i].size;  // each <= 2^50, at most 64 of them: no overflow
    if (total > kManifestMaxSize) return Bad(at + ".size", "the provided files add up to more than 2^50 bytes");
    for (size_t k = 0; k < i; ++k) {
      if (p->provided_files[k].name == p->provided_files[i].name) {
        return Bad(at + ".name", "'" + p->provided_files[i].name + "' is provided twice");
      }
    }
  }
  if (version >= 2) {
    HB_RETURN_IF_ERROR(o.Str("weights_dir", &p->weights_dir, !p->provided_files.empty(), kManifestMaxPath));
  } else {
    p->weights_dir = v1_dir;
  }
  if (!p->weights_dir.empty() && !IsNormalAbsolutePath(p->weights_dir)) {
    return Bad(Join(o.path(), "weights_dir"), "'" + p->weights_dir + "' is not an absolute, normal path");
  }
  return Status::Ok();
}

Status ReadServer(const Obj& o, ManifestServer* s) {
  HB_RETURN_IF_ERROR(o.Str("host", &s->host, false, 255));
  HB_RETURN_IF_ERROR(o.Int("build_port", &s->build_port, false, 0, 65535));
  return o.Str("instance", &s->instance, false, 256);
}

Status ReadCanary(const Obj& o, bool transparent, ManifestCanary* c) {
  HB_RETURN_IF_ERROR(o.Ms("first_latency_ms", &c->first_latency_ms, false));
  HB_RETURN_IF_ERROR(o.Ms("warm_latency_ms", &c->warm_latency_ms, false));
  HB_RETURN_IF_ERROR(o.Ms("latency_bound_ms", &c->latency_bound_ms, false));
  if (transparent) {
    HB_ASSIGN_OR_RETURN(const json* req, o.Member("request", true));
    c->request.emplace();
    HB_RETURN_IF_ERROR(ReadHttpCall(*req, Join(o.path(), "request"), &*c->request));
    HB_RETURN_IF_ERROR(o.Str("compare", &c->compare, false, kManifestMaxPath));
    if (!c->compare.empty() && c->compare[0] != '/') {
      return Bad(Join(o.path(), "compare"), "'" + c->compare + "' is not a JSON pointer");
    }
    HB_ASSIGN_OR_RETURN(const json* expected, o.Member("expected", true));
    return ReadFreeJson(*expected, Join(o.path(), "expected"), &c->expected);
  }
  HB_RETURN_IF_ERROR(o.Text("prompt", &c->prompt, true));
  HB_RETURN_IF_ERROR(o.Int("max_tokens", &c->max_tokens, true, 1, static_cast<int>(kManifestMaxTokens)));
  HB_ASSIGN_OR_RETURN(const json* tokens, o.Array("tokens", true, kManifestMaxTokens));
  for (size_t i = 0; i < tokens->size(); ++i) {
    int64_t t = 0;
    HB_RETURN_IF_ERROR(
        Obj::ReadInt((*tokens)[i], Index(Join(o.path(), "tokens"), i), &t, 0, std::numeric_limits<int32_t>::max()));
    c->tokens.push_back(t);
  }
  return o.Text("text", &c->text, false);
}

Status ReadWarm(const Obj& o, bool transparent, ManifestWarm* w) {
  HB_RETURN_IF_ERROR(o.Str("digest", &w->digest, !transparent, 256));
  if (!transparent && w->digest.empty()) return Bad(Join(o.path(), "digest"), "empty");
  HB_ASSIGN_OR_RETURN(auto canary, o.Child("canary", true));
  return ReadCanary(*canary, transparent, &w->canary);
}

Status ReadHttp(const Obj& o, ManifestHttp* h) {
  HB_RETURN_IF_ERROR(o.Int("port", &h->port, true, 1, 65535));
  HB_RETURN_IF_ERROR(o.Str("ready_path", &h->ready_path, false, kManifestMaxPath));
  if (h->ready_path.empty() || h->ready_path[0] != '/') {
    return Bad(Join(o.path(), "ready_path"), "'" + h->ready_path + "' must start with /");
  }
  HB_ASSIGN_OR_RETURN(const json* hook, o.Member("after_restore", false));
  if (hook) {
    h->after_restore.emplace();
    HB_RETURN_IF_ERROR(ReadHttpCall(*hook, Join(o.path(), "after_restore"), &*h->after_restore));
  }
  return Status::Ok();
}

Status ReadGpu(const Obj& o, ManifestGpu* g) {
  HB_RETURN_IF_ERROR(o.Str("driver_version", &g->driver_version, false, 64));
  HB_RETURN_IF_ERROR(o.Int("cuda_version", &g->cuda_version, false, 0, 1000000));
  HB_RETURN_IF_ERROR(o.Int("processes", &g->processes, true, 0, 1 << 16));
  HB_ASSIGN_OR_RETURN(const json* devs, o.Array("devices", true, kManifestMaxGpuDevices));
  for (size_t i = 0; i < devs->size(); ++i) {
    const std::string at = Index(Join(o.path(), "devices"), i);
    if (!(*devs)[i].is_object()) return WrongType(at, "an object", (*devs)[i]);
    Obj d((*devs)[i], at);
    ManifestGpuDevice dev;
    HB_RETURN_IF_ERROR(d.Int("ordinal", &dev.ordinal, true, 0, 1 << 16));
    HB_RETURN_IF_ERROR(d.Str("uuid", &dev.uuid, true, 128));
    HB_RETURN_IF_ERROR(d.Str("name", &dev.name, true, 256));
    std::string cc;
    HB_RETURN_IF_ERROR(d.Str("compute_capability", &cc, true, 16));
    int ma = 0, mi = 0, n = 0;
    if (std::sscanf(cc.c_str(), "%3d.%3d%n", &ma, &mi, &n) != 2 || static_cast<size_t>(n) != cc.size() || ma < 0 ||
        mi < 0) {
      return Bad(Join(at, "compute_capability"), "'" + cc + "' is not MAJOR.MINOR");
    }
    dev.cc_major = ma, dev.cc_minor = mi;
    HB_RETURN_IF_ERROR(d.U64("total_bytes", &dev.total_bytes, false));
    HB_RETURN_IF_ERROR(d.U64("used_bytes", &dev.used_bytes, false));
    g->devices.push_back(std::move(dev));
  }
  HB_ASSIGN_OR_RETURN(auto timings, o.Child("timings_ms", false));
  if (timings) {
    HB_RETURN_IF_ERROR(timings->Ms("lock", &g->lock_ms, false));
    HB_RETURN_IF_ERROR(timings->Ms("checkpoint", &g->checkpoint_ms, false));
  }
  if (g->processes > 0 && g->devices.empty()) {
    return Bad(Join(o.path(), "devices"), std::to_string(g->processes) + " CUDA processes on no device");
  }
  return Status::Ok();
}

Status ReadTimings(const json& v, const std::string& path, std::vector<std::pair<std::string, double>>* out) {
  if (!v.is_object()) return WrongType(path, "an object", v);
  if (v.size() > kManifestMaxTimings) {
    return Bad(path, std::to_string(v.size()) + " timings, more than the " + std::to_string(kManifestMaxTimings) +
                         " allowed");
  }
  for (const auto& [k, t] : v.items()) {
    if (k.size() > 64) return Bad(path, "a timing name longer than 64 bytes");
    double ms = 0;
    HB_RETURN_IF_ERROR(Obj::ReadMs(t, Join(path, k), &ms));
    out->emplace_back(k, ms);
  }
  return Status::Ok();
}

Status ReadManifest(const json& j, Manifest* m) {
  if (!j.is_object()) return Corrupt(std::string("manifest: expected a JSON object, got ") + TypeName(j));
  Obj o(j, "");
  std::string format;
  HB_RETURN_IF_ERROR(o.Str("format", &format, true, 64));
  if (format != kManifestFormat) {
    return Corrupt("manifest: format: '" + format + "' is not " + kManifestFormat + ": not a hotboot snapshot manifest");
  }
  HB_RETURN_IF_ERROR(o.Int("manifest_version", &m->manifest_version, true, 0, 1 << 20));
  if (m->manifest_version < kOldestManifestVersion) {
    return Corrupt("manifest: manifest_version: " + std::to_string(m->manifest_version) + " is not a version");
  }
  if (m->manifest_version > kManifestVersion) {
    return Unsupported("manifest: manifest_version " + std::to_string(m->manifest_version) +
                       " is newer than this hotboot reads (" + std::to_string(kManifestVersion) + "): upgrade hotboot");
  }
  const int version = m->manifest_version;
  HB_RETURN_IF_ERROR(o.Str("tool_version", &m->tool_version, false, 64));
  HB_RETURN_IF_ERROR(o.Str("created_at", &m->created_at, false, 64));
  HB_RETURN_IF_ERROR(o.Str("mode", &m->mode, false, 16));
  if (m->mode != "cooperative" && m->mode != "transparent") {
    return Bad("mode", "'" + m->mode + "' is neither \"cooperative\" nor \"transparent\"");
  }
  HB_ASSIGN_OR_RETURN(auto host, o.Child("host", true));
  HB_RETURN_IF_ERROR(ReadHost(*host, &m->host));
  HB_ASSIGN_OR_RETURN(auto criu, o.Child("criu", true));
  HB_RETURN_IF_ERROR(ReadCriu(*criu, &m->criu));
  HB_ASSIGN_OR_RETURN(auto process, o.Child("process", true));
  HB_RETURN_IF_ERROR(ReadProcess(*process, version, &m->process));
  HB_ASSIGN_OR_RETURN(auto server, o.Child("server", false));
  if (server) HB_RETURN_IF_ERROR(ReadServer(*server, &m->server));
  HB_ASSIGN_OR_RETURN(auto warm, o.Child("warm", true));
  HB_RETURN_IF_ERROR(ReadWarm(*warm, m->transparent(), &m->warm));
  HB_ASSIGN_OR_RETURN(const json* timings, o.Member("timings_ms", false));
  if (timings) HB_RETURN_IF_ERROR(ReadTimings(*timings, "timings_ms", &m->timings_ms));
  HB_ASSIGN_OR_RETURN(auto http, o.Child("http", m->transparent()));
  if (http) {
    m->http.emplace();
    HB_RETURN_IF_ERROR(ReadHttp(*http, &*m->http));
  }
  HB_ASSIGN_OR_RETURN(auto gpu, o.Child("gpu", false));
  if (gpu) {
    m->gpu.emplace();
    HB_RETURN_IF_ERROR(ReadGpu(*gpu, &*m->gpu));
  }
  HB_ASSIGN_OR_RETURN(const json* labels, o.Member("labels", false));
  if (labels) HB_RETURN_IF_ERROR(ReadFreeJson(*labels, "labels", &m->labels));
  return Status::Ok();
}

json CallJson(const ManifestHttpCall& c) { return {{"method", c.method}, {"path", c.path}, {"body", c.body}}; }

}  // namespace

double Manifest::Timing(std::string_view key, double otherwise) const {
  for (const auto& [k, v] : timings_ms) {
    if (k == key) return v;
  }
  return otherwise;
}

void Manifest::SetTiming(const std::string& key, double ms) {
  for (auto& [k, v] : timings_ms) {
    if (k == key) {
      v = ms;
      return;
    }
  }
  timings_ms.emplace_back(key, ms);
}

bool IsContentHash(std::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool ParseContentName(std::string_view name, std::string* content_hash) {
  for (std::string_view kind : {std::string_view("weights-"), std::string_view("gpu-weights-")}) {
    if (name.size() == kind.size() + 32 + 4 && name.substr(0, kind.size()) == kind &&
        name.substr(name.size() - 4) == ".bin" && IsContentHash(name.substr(kind.size(), 32))) {
      if (content_hash) *content_hash = std::string(name.substr(kind.size(), 32));
      return true;
    }
  }
  return false;
}

Result<Manifest> ParseManifest(std::string_view json_text) {
  // nlohmann's parser is iterative (no recursion on nesting depth) and with
  // allow_exceptions=false reports a syntax error as a discarded value.
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Corrupt("manifest: not valid JSON");
  Manifest m;
  try {
    HB_RETURN_IF_ERROR(ReadManifest(j, &m));
  } catch (const std::exception& e) {
    // Unreachable by construction (every type is checked before it is
    // read); the boundary holds even so: a bad manifest never aborts.
    return Corrupt(std::string("manifest: ") + e.what());
  }
  return m;
}

json ToJsonValue(const Manifest& m) {
  json mapped = json::array(), provided = json::array();
  for (const auto& f : m.process.mapped_files) {
    mapped.push_back({{"path", f.path}, {"size", f.size}, {"content_hash", f.content_hash}});
  }
  for (const auto& f : m.process.provided_files) {
    provided.push_back({{"name", f.name}, {"size", f.size}, {"section", f.section}, {"content_hash", f.content_hash}});
  }
  json canary = json::object();
  const ManifestCanary& c = m.warm.canary;
  if (m.transparent()) {
    canary["request"] = CallJson(c.request.value_or(ManifestHttpCall{}));
    canary["compare"] = c.compare;
    canary["expected"] = c.expected;
  } else {
    canary["prompt"] = c.prompt;
    canary["max_tokens"] = c.max_tokens;
    canary["tokens"] = c.tokens;
    canary["text"] = c.text;
  }
  canary["first_latency_ms"] = c.first_latency_ms;
  canary["warm_latency_ms"] = c.warm_latency_ms;
  canary["latency_bound_ms"] = c.latency_bound_ms;
  json timings = json::object();
  for (const auto& [k, v] : m.timings_ms) timings[k] = v;
  json j = {
      {"format", kManifestFormat},
      {"manifest_version", kManifestVersion},
      {"tool_version", m.tool_version},
      {"created_at", m.created_at},
      {"mode", m.mode},
      {"host",
       {{"hostname", m.host.hostname},
        {"kernel", m.host.kernel},
        {"arch", m.host.arch},
        {"cpu_model", m.host.cpu_model},
        {"cpus", m.host.cpus},
        {"isa_flags", m.host.isa_flags}}},
      {"criu", {{"version", m.criu.version}, {"images_bytes", m.criu.images_bytes}, {"log_level", m.criu.log_level}}},
      {"process",
       {{"command", m.process.command},
        {"cwd", m.process.cwd},
        {"pid_namespace", m.process.pid_namespace},
        {"pids", m.process.pids},
        {"fd_keys", m.process.fd_keys},
        {"mapped_files", mapped},
        {"provided_files", provided},
        {"weights_dir", m.process.weights_dir}}},
      {"server", {{"host", m.server.host}, {"build_port", m.server.build_port}, {"instance", m.server.instance}}},
      {"warm", {{"digest", m.warm.digest}, {"canary", canary}}},
      {"timings_ms", timings},
      {"labels", m.labels},
  };
  if (m.http) {
    j["http"] = {{"port", m.http->port}, {"ready_path", m.http->ready_path}};
    if (m.http->after_restore) j["http"]["after_restore"] = CallJson(*m.http->after_restore);
  }
  if (m.gpu) {
    json devs = json::array();
    for (const auto& d : m.gpu->devices) {
      devs.push_back({{"ordinal", d.ordinal},
                      {"uuid", d.uuid},
                      {"name", d.name},
                      {"compute_capability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
                      {"total_bytes", d.total_bytes},
                      {"used_bytes", d.used_bytes}});
    }
    j["gpu"] = {{"driver_version", m.gpu->driver_version},
                {"cuda_version", m.gpu->cuda_version},
                {"processes", m.gpu->processes},
                {"devices", devs},
                {"timings_ms", {{"lock", m.gpu->lock_ms}, {"checkpoint", m.gpu->checkpoint_ms}}}};
  }
  return j;
}

std::string ToJson(const Manifest& m) { return ToJsonValue(m).dump(); }

}  // namespace hotboot
