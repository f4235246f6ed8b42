// Signed snapshots (formats/SPEC.md "Trust record", "Root and signatures"):
// Ed25519 keys in the PEM files OpenSSL writes, signing a snapshot in place
// (atomically), and trust policies that decide which snapshots may be used.
//
//   keygen:  GenerateKeyPair("/secure/hotboot.key")   -> .key (0600) + .key.pub
//   sign:    SignSnapshot(snap, *LoadPrivateKey(path))
//   check:   auto policy = LoadTrustPolicy(trust_files, kDefaultTrustDir);
//            auto r = SnapshotReader::Open(snap);
//            HB_RETURN_IF_ERROR(CheckTrust(**r, *policy));  // before writing anything
//
// CheckTrust looks only at what SnapshotReader::Open checked (root, chunk
// hash list, signatures, base root), so a caller can refuse a snapshot before
// it extracts a single byte. The chunk bytes themselves are checked against
// the signed hash list as they are read (every ReadChunkInto of the reader):
// a swapped chunk fails there, with Corrupt naming section, chunk and offset.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "hotboot/snapshot_file.h"
#include "hotboot/status.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace hotboot::snapfile {

// Where replica hosts keep the public keys they trust, one `*.pub` each.
inline constexpr char kDefaultTrustDir[] = "/etc/hotboot/trust.d";

struct PublicKey {
  Hash256 raw{};       // the 32-byte Ed25519 public key
  std::string source;  // the file it came from (for messages)
  std::string fingerprint() const;  // "ed25519:" + 16 hex digits of SHA-256(raw)
};

// An Ed25519 private key; copies share the key.
class PrivateKey {
 public:
  const PublicKey& public_key() const { return pub_; }
  // Ed25519 over SignedMessage(root) (SPEC.md "Root and signatures").
  Result<std::array<uint8_t, 64>> SignRoot(const Hash256& root) const;

 private:
  friend Result<PrivateKey> LoadPrivateKey(const std::string& path);
  friend Result<PublicKey> GenerateKeyPair(const std::string& path);
  std::shared_ptr<evp_pkey_st> key_;
  PublicKey pub_;
};

std::string Fingerprint(const Hash256& raw_public_key);

// Writes a new key pair: `path`, the private key (PEM PKCS#8, mode 0600) and
// `path.pub`, the public key (PEM SubjectPublicKeyInfo, mode 0644), the
// formats of `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
// Both are created with O_CREAT | O_EXCL | O_NOFOLLOW: an existing file (or
// a symlink planted there) is refused, never overwritten. On failure neither
// file is left. Returns the public key.
Result<PublicKey> GenerateKeyPair(const std::string& path);
// PEM files; a clear InvalidArgument for "not a PEM key" or "not Ed25519".
Result<PrivateKey> LoadPrivateKey(const std::string& path);
Result<PublicKey> LoadPublicKey(const std::string& path);

struct SignOutcome {
  Hash256 root{};
  std::string fingerprint;
  bool replaced = false;  // an earlier signature by this key was replaced
  size_t signatures = 0;  // signatures the snapshot now carries
};
// Adds key's signature to the snapshot at path (replacing an earlier one by
// the same key), atomically: the bytes before the trust record are copied to
// a temporary beside it with copy_file_range (reflinks where the file system
// can), then the new trust record, the trailer and the header (new file
// size) are written, fsynced, renamed over path, and the directory fsynced.
// The file digest does not change (it ends where the trust record starts). A
// kill leaves the original intact and at most the temporary
// "<path>.tmp.<pid>", which the next sign or build of that path removes.
// Refuses format 1.0 files (no chunk hashes) and a 17th signature.
Result<SignOutcome> SignSnapshot(const std::string& path, const PrivateKey& key);

// The keys a host trusts. In force when keys were named or the trust
// directory exists (even empty: a host that made the directory refuses
// unsigned snapshots).
struct TrustPolicy {
  std::vector<PublicKey> keys;  // each with its source file
  std::string trust_dir;        // the directory read, when it existed
  bool dir_present = false;
  bool in_force() const { return !keys.empty() || dir_present; }
  // "2 keys: ed25519:..., ed25519:... from /etc/hotboot/trust.d, a.pub".
  std::string Describe() const;
};

// key_files: public keys named on the command line (--trust). trust_dir:
// every "*.pub" in it when it exists (other names are ignored, dot files
// too); empty: none. The directory must be a real directory (not a symlink),
// owned by root or by this process's user and not writable by group or
// others (FailedPrecondition otherwise: whoever can write it can add keys),
// and so must each directory above it (sticky ones, as /tmp, excepted).
// Each key file there is opened with O_NOFOLLOW (a symlink is refused), must
// be a regular file owned by root or this user, not group/other-writable, and
// a valid Ed25519 public key: any other is an error naming it.
Result<TrustPolicy> LoadTrustPolicy(const std::vector<std::string>& key_files,
                                    const std::string& trust_dir = kDefaultTrustDir);

// OK when the policy is not in force. When it is: OK only when at least one
// signature is valid and by a trusted key and, for a snapshot with a base,
// the base is covered (a base root recorded, and not found different when
// the base was opened). Otherwise Untrusted, naming the snapshot and the keys.
// Uses only what Open checked: call it before writing anything.
Status CheckTrust(const SnapshotReader& snapshot, const TrustPolicy& policy);
// The same from a TrustInfo (a StreamDecoder's, say); name is for messages.
Status CheckTrust(const std::string& name, const TrustInfo& trust, const TrustPolicy& policy);

}  // namespace hotboot::snapfile
