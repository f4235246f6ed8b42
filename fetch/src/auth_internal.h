// Registry credentials: containers-auth.json(5) / docker config.json files,
// and WWW-Authenticate challenges. Not a public header.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::fetch::internal {

struct Credentials {
  bool found = false;
  std::string user, password;
  std::string file;                // where they came from
  std::vector<std::string> looked;  // every file looked at (for messages)
};

// The credentials for `registry` (host[:port]) and `repository`: from
// `authfile` when set (a missing or unreadable one is an error), else from
// the first of $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
// $HOME/.config/containers/auth.json, $DOCKER_CONFIG/config.json,
// $HOME/.docker/config.json that has an entry for the registry. Keys match as
// docker and podman match them: "host:port", "https://host:port[/v1/]",
// "host:port/namespace" (the longest prefix of host/repository wins).
// Malformed files are kCorrupt naming the file and key.
Result<Credentials> LookupCredentials(const std::string& registry, const std::string& repository,
                                      const std::string& authfile);

// One challenge of a WWW-Authenticate header: scheme (lowercased) and its
// parameters (names lowercased), e.g. Bearer realm="..",service="..",scope="..".
struct Challenge {
  std::string scheme;
  std::map<std::string, std::string> params;
};
std::optional<Challenge> ParseChallenge(std::string_view header);

std::string Base64Encode(std::string_view in);
// Strict: kCorrupt-worthy input returns nullopt.
std::optional<std::string> Base64Decode(std::string_view in);

}  // namespace hotboot::fetch::internal
