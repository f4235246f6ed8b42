// Registry credentials from auth files, and WWW-Authenticate parsing.
#include <openssl/evp.h>
#include <sys/stat.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "auth_internal.h"

namespace hotboot::fetch::internal {
namespace {

constexpr size_t kMaxAuthFile = 1u << 20;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : std::string();
}

std::vector<std::string> DefaultAuthFiles() {
  std::vector<std::string> files;
  if (std::string v = Env("REGISTRY_AUTH_FILE"); !v.empty()) files.push_back(v);
  if (std::string v = Env("XDG_RUNTIME_DIR"); !v.empty()) files.push_back(v + "/containers/auth.json");
  std::string home = Env("HOME");
  if (!home.empty()) files.push_back(home + "/.config/containers/auth.json");
  if (std::string v = Env("DOCKER_CONFIG"); !v.empty()) files.push_back(v + "/config.json");
  if (!home.empty()) files.push_back(home + "/.docker/config.json");
  return files;
}

// "https://host:port/v1/" -> "host:port/v1" ; "host:port" stays.
std::string NormalizeKey(std::string key) {
  for (const char* scheme : {"https://", "http://"}) {
    if (key.rfind(scheme, 0) == 0) {
      key = key.substr(std::strlen(scheme));
      // docker's legacy keys carry the API path; it names no repository.
      size_t slash = key.find('/');
      if (slash != std::string::npos) key = key.substr(0, slash);
      break;
    }
  }
  while (!key.empty() && key.back() == '/') key.pop_back();
  return key;
}

// How well `key` matches registry/repository: -1 not at all, else its length.
int MatchLength(const std::string& key, const std::string& registry, const std::string& repository) {
  if (key == registry) return static_cast<int>(key.size());
  const std::string full = registry + "/" + repository;
  if (key.size() > registry.size() && full.rfind(key, 0) == 0 &&
      (full.size() == key.size() || full[key.size()] == '/')) {
    return static_cast<int>(key.size());
  }
  return -1;
}

// Reads one auth file; found=false when it has no entry for the registry.
Status ReadAuthFile(const std::string& path, const std::string& registry, const std::string& repository,
                    Credentials* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError("cannot read the auth file " + path);
  std::string text;
  text.resize(kMaxAuthFile + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxAuthFile) return Corrupt("auth file " + path + " is larger than 1 MiB");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt("auth file " + path + " is not a JSON object");
  auto auths = j.find("auths");
  if (auths == j.end()) return Status::Ok();
  if (!auths->is_object()) return Corrupt("auth file " + path + ": \"auths\" is not an object");
  int best = -1;
  std::string best_key;
  const nlohmann::json* entry = nullptr;
  for (auto it = auths->begin(); it != auths->end(); ++it) {
    int m = MatchLength(NormalizeKey(it.key()), registry, repository);
    if (m > best) {
      best = m;
      best_key = it.key();
      entry = &it.value();
    }
  }
  if (entry == nullptr) return Status::Ok();
  const std::string where = "auth file " + path + ", entry \"" + best_key + "\"";
  if (!entry->is_object()) return Corrupt(where + " is not an object");
  auto auth = entry->find("auth");
  if (auth != entry->end()) {
    if (!auth->is_string()) return Corrupt(where + ": \"auth\" is not a string");
    auto decoded = Base64Decode(auth->get<std::string>());
    if (!decoded) return Corrupt(where + ": \"auth\" is not base64");
    size_t colon = decoded->find(':');
    if (colon == std::string::npos) return Corrupt(where + ": \"auth\" does not decode to user:password");
    out->user = decoded->substr(0, colon);
    out->password = decoded->substr(colon + 1);
  } else {
    auto u = entry->find("username"), p = entry->find("password");
    if (u == entry->end() || p == entry->end() || !u->is_string() || !p->is_string()) {
      return Corrupt(where + " has neither \"auth\" nor \"username\" and \"password\" strings");
    }
    out->user = u->get<std::string>();
    out->password = p->get<std::string>();
  }
  out->found = true;
  out->file = path;
  return Status::Ok();
}

}  // namespace

Result<Credentials> LookupCredentials(const std::string& registry, const std::string& repository,
                                      const std::string& authfile) {
  Credentials c;
  if (!authfile.empty()) {
    c.looked.push_back(authfile);
    struct stat st {};
    if (stat(authfile.c_str(), &st) != 0) {
      return NotFound("the auth file " + authfile + " does not exist (run `podman login --authfile " + authfile +
                      " " + registry + "`, or leave --authfile out to use the default files)");
    }
    HB_RETURN_IF_ERROR(ReadAuthFile(authfile, registry, repository, &c));
    return c;
  }
  for (const std::string& f : DefaultAuthFiles()) {
    c.looked.push_back(f);
    struct stat st {};
    if (stat(f.c_str(), &st) != 0) continue;
    HB_RETURN_IF_ERROR(ReadAuthFile(f, registry, repository, &c));
    if (c.found) return c;
  }
  return c;
}

std::optional<Challenge> ParseChallenge(std::string_view h) {
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < h.size() && (h[i] == ' ' || h[i] == '\t')) ++i;
  };
  skip_ws();
  size_t start = i;
  while (i < h.size() && h[i] != ' ' && h[i] != '\t') ++i;
  if (i == start) return std::nullopt;
  Challenge c;
  for (size_t k = start; k < i; ++k) c.scheme += static_cast<char>(std::tolower(static_cast<unsigned char>(h[k])));
  while (i < h.size()) {
    skip_ws();
    size_t ns = i;
    while (i < h.size() && h[i] != '=' && h[i] != ',' && h[i] != ' ') ++i;
    std::string name;
    for (size_t k = ns; k < i; ++k) name += static_cast<char>(std::tolower(static_cast<unsigned char>(h[k])));
    skip_ws();
    if (i >= h.size() || h[i] != '=') {
      // a token68 or a second challenge: stop at what we have
      break;
    }
    ++i;
    skip_ws();
    std::string value;
    if (i < h.size() && h[i] == '"') {
      ++i;
      while (i < h.size() && h[i] != '"') {
        if (h[i] == '\\' && i + 1 < h.size()) ++i;
        value += h[i++];
      }
      if (i >= h.size()) return std::nullopt;  // unterminated quote
      ++i;
    } else {
      while (i < h.size() && h[i] != ',' && h[i] != ' ') value += h[i++];
    }
    if (!name.empty()) c.params[name] = value;
    skip_ws();
    if (i < h.size() && h[i] == ',') ++i;
  }
  return c;
}

std::string Base64Encode(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> Base64Decode(std::string_view in) {
  std::string s;
  for (char c : in) {
    if (c == '\n' || c == '\r' || c == ' ') continue;
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=')) return std::nullopt;
    s += c;
  }
  while (s.size() % 4 != 0) s += '=';  // some writers drop the padding
  if (s.empty()) return std::string();
  std::string out(s.size() / 4 * 3 + 1, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(s.data()), static_cast<int>(s.size()));
  if (n < 0) return std::nullopt;
  size_t pad = 0;
  if (s.size() >= 1 && s[s.size() - 1] == '=') ++pad;
  if (s.size() >= 2 && s[s.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

}  // namespace hotboot::fetch::internal
