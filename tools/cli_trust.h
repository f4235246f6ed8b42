// Trust on the command line: `--trust KEY.pub` / `--trust-dir DIR` options,
// the policy they make, and how a snapshot's trust record is shown (verify,
// inspect; restore can reuse the same three pieces).
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "hotboot/signing.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

struct TrustArgs {
  std::vector<std::string> keys;                     // --trust (repeatable)
  std::string dir = snapfile::kDefaultTrustDir;      // --trust-dir ("" : none)
};
// Registers --trust and --trust-dir on app.
void AddTrustOptions(CLI::App& app, TrustArgs* args);
Result<snapfile::TrustPolicy> LoadPolicy(const TrustArgs& args);

// The trust record as JSON: format, chunk hashes, root, base root, each
// signature (fingerprint, public key, valid, and `trusted` under a policy),
// and the policy when one is given.
nlohmann::json TrustJson(const snapfile::TrustInfo& t, const snapfile::TrustPolicy* policy);
// The same as text lines: "chunk hashes  SHA-256 (12 chunks), root ...",
// "signed by ed25519:... (trusted by the policy | no policy in force | not
// trusted)", "unsigned", "unsigned, format 1.0: no chunk hashes".
std::vector<std::string> TrustLines(const snapfile::TrustInfo& t, const snapfile::TrustPolicy* policy);

}  // namespace hotboot::cli
