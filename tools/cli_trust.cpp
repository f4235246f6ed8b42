// hotboot keygen and hotboot sign (hotboot/signing.h does the work), and the
// trust options and reports that verify and inspect share.
#include "cli_trust.h"

#include <cstdio>
#include <memory>

#include "cli_common.h"
#include "commands.h"

namespace hotboot::cli {

using json = nlohmann::json;

void AddTrustOptions(CLI::App& app, TrustArgs* args) {
  app.add_option("--trust", args->keys,
                 "Trust this Ed25519 public key (PEM, as hotboot keygen writes KEY.pub); repeatable. With any key "
                 "named, or the trust directory present, a policy is in force: only snapshots signed by a trusted "
                 "key pass");
  app.add_option("--trust-dir", args->dir,
                 "Also trust every *.pub in this directory when it exists (must be owned by root and not "
                 "writable by group or others; symlinks refused). '' for none")
      ->default_str(snapfile::kDefaultTrustDir);
}

Result<snapfile::TrustPolicy> LoadPolicy(const TrustArgs& args) { return snapfile::LoadTrustPolicy(args.keys, args.dir); }

namespace {

bool Trusted(const snapfile::TrustPolicy& p, const snapfile::Hash256& raw) {
  for (const auto& k : p.keys) {
    if (k.raw == raw) return true;
  }
  return false;
}

const char* BaseCheckName(snapfile::TrustInfo::BaseCheck b) {
  switch (b) {
    case snapfile::TrustInfo::BaseCheck::kMatched: return "matched";
    case snapfile::TrustInfo::BaseCheck::kMismatched: return "mismatched";
    case snapfile::TrustInfo::BaseCheck::kNotOpened: return "not opened";
    default: return "none";
  }
}

}  // namespace

json TrustJson(const snapfile::TrustInfo& t, const snapfile::TrustPolicy* policy) {
  json out = {{"format_version", std::to_string(t.version_major) + "." + std::to_string(t.version_minor)},
              {"chunk_hashes", t.has_chunk_hashes ? json("SHA-256") : json(nullptr)},
              {"chunk_hash_count", t.chunk_count},
              {"root", t.has_chunk_hashes ? json(t.root_hex()) : json(nullptr)}};
  if (t.has_base) {
    out["base_root"] = snapfile::IsZero(t.base_root) ? json(nullptr) : json(snapfile::HexOf(t.base_root));
    out["base_check"] = BaseCheckName(t.base_check);
  }
  json sigs = json::array();
  for (const auto& s : t.signatures) {
    json j = {{"fingerprint", s.fingerprint}, {"public_key", snapfile::HexOf(s.public_key)}, {"valid", s.valid}};
    if (policy && policy->in_force()) j["trusted"] = Trusted(*policy, s.public_key);
    sigs.push_back(j);
  }
  out["signatures"] = sigs;
  out["signed"] = t.signed_validly();
  if (policy) {
    json keys = json::array();
    for (const auto& k : policy->keys) keys.push_back({{"fingerprint", k.fingerprint()}, {"source", k.source}});
    out["policy"] = {{"in_force", policy->in_force()},
                     {"trust_dir", policy->dir_present ? json(policy->trust_dir) : json(nullptr)},
                     {"keys", keys}};
  }
  return out;
}

std::vector<std::string> TrustLines(const snapfile::TrustInfo& t, const snapfile::TrustPolicy* policy) {
  std::vector<std::string> out;
  if (!t.has_chunk_hashes) {
    out.push_back("unsigned, format " + std::to_string(t.version_major) + "." + std::to_string(t.version_minor) +
                  ": no chunk hashes");
    return out;
  }
  out.push_back("chunk hashes SHA-256 (" + std::to_string(t.chunk_count) + " chunks), root " + t.root_hex());
  if (t.has_base) {
    out.push_back(snapfile::IsZero(t.base_root)
                      ? std::string("base root    none (the base is a format 1.0 file: not covered by a signature)")
                      : "base root    " + snapfile::HexOf(t.base_root) + " (" + BaseCheckName(t.base_check) + ")");
  }
  if (t.signatures.empty()) out.push_back("unsigned");
  for (const auto& s : t.signatures) {
    std::string who;
    if (!policy || !policy->in_force()) {
      who = "no policy in force";
    } else {
      who = Trusted(*policy, s.public_key) ? "trusted by the policy" : "not trusted";
    }
    out.push_back(s.valid ? "signed by " + s.fingerprint + " (" + who + ")"
                          : "signature by " + s.fingerprint + " (" + who +
                                ") is INVALID: it does not match this snapshot's contents (made over other bytes)");
  }
  return out;
}

namespace {

struct KeygenArgs {
  std::string out;
  bool json_out = false;
};

int RunKeygen(const KeygenArgs& a) {
  auto pub = snapfile::GenerateKeyPair(a.out);
  if (!pub.ok()) return FailJson(pub.status(), a.json_out);
  if (a.json_out) {
    std::printf("%s\n", json{{"ok", true},
                             {"private_key", a.out},
                             {"public_key", pub->source},
                             {"fingerprint", pub->fingerprint()}}
                            .dump()
                            .c_str());
    return kExitOk;
  }
  std::printf("private key  %s (mode 0600: keep it secret; it signs snapshots)\n", a.out.c_str());
  std::printf("public key   %s\n", pub->source.c_str());
  std::printf("fingerprint  %s\n", pub->fingerprint().c_str());
  std::printf("\nSign snapshots with: hotboot sign SNAP --key %s\n"
              "Trust it on replica hosts: copy %s into %s/ there (the directory owned by root,\n"
              "not writable by others), or pass restore --trust %s.\n",
              a.out.c_str(), pub->source.c_str(), snapfile::kDefaultTrustDir, pub->source.c_str());
  return kExitOk;
}

struct SignArgs {
  std::string snapshot;
  std::string key;
  bool json_out = false;
};

int RunSign(const SignArgs& a) {
  auto fail = [&](const Status& s) {
    if (!a.json_out) return Fail(s);
    std::printf("%s\n", json{{"path", a.snapshot}, {"ok", false}, {"error", s.message()}, {"outcome", CodeName(s.code())},
                             {"exit_code", ExitCodeFor(s)}, {"exit", ExitCodeFor(s)}}
                            .dump()
                            .c_str());
    MarkFailurePrinted();
    return ExitCodeFor(s);
  };
  auto key = snapfile::LoadPrivateKey(a.key);
  if (!key.ok()) return fail(key.status());
  auto out = snapfile::SignSnapshot(a.snapshot, *key);
  if (!out.ok()) return fail(out.status());
  if (a.json_out) {
    std::printf("%s\n", json{{"path", a.snapshot},
                             {"ok", true},
                             {"fingerprint", out->fingerprint},
                             {"root", snapfile::HexOf(out->root)},
                             {"replaced", out->replaced},
                             {"signatures", out->signatures}}
                            .dump()
                            .c_str());
    return kExitOk;
  }
  std::printf("%s: signed by %s%s\nroot        %s\nsignatures  %zu\n", a.snapshot.c_str(), out->fingerprint.c_str(),
              out->replaced ? " (its earlier signature replaced)" : "", snapfile::HexOf(out->root).c_str(),
              out->signatures);
  return kExitOk;
}

}  // namespace

Runner AddKeygen(CLI::App& app) {
  auto a = std::make_shared<KeygenArgs>();
  app.footer("Writes KEY (the Ed25519 private key, PEM PKCS#8, mode 0600) and KEY.pub (the public key,\n"
             "PEM, mode 0644): the files `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`\n"
             "write. Refuses to overwrite either. Sign with `hotboot sign SNAP --key KEY`; trust with\n"
             "KEY.pub in /etc/hotboot/trust.d/ on replica hosts, or `restore --trust KEY.pub`.");
  app.add_option("--out", a->out, "The private key file to create (the public key goes to OUT.pub)")->required();
  app.add_flag("--json", a->json_out, "Print the result as JSON (private_key, public_key, fingerprint)");
  return [a] { return RunKeygen(*a); };
}

Runner AddSign(CLI::App& app) {
  auto a = std::make_shared<SignArgs>();
  app.footer("Adds an Ed25519 signature over the snapshot's root (SHA-256 over its manifest, index, every\n"
             "chunk's SHA-256 and its base's root) to its trust record, replacing an earlier one by the\n"
             "same key. The file is rewritten atomically (a temporary beside it, renamed); its digest,\n"
             "and so what base references name, does not change. Format 1.0 snapshots have no chunk\n"
             "hashes and cannot be signed: rebuild them. Exit 0 signed, 4 corrupt, 1 other errors.");
  app.add_option("snapshot", a->snapshot, "Snapshot file (format 1.1)")->required();
  app.add_option("--key", a->key, "Ed25519 private key (PEM, from hotboot keygen)")->required();
  app.add_flag("--json", a->json_out, "Print the result as JSON (fingerprint, root, signatures)");
  return [a] { return RunSign(*a); };
}

}  // namespace hotboot::cli
