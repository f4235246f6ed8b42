// SHA-256 and Ed25519 through OpenSSL's libcrypto (SHA-256 uses the CPU's SHA
// extensions where it has them). No hand-written crypto: these are thin
// wrappers that turn OpenSSL's return codes into values.
#pragma once

#include <openssl/evp.h>

#include <string>
#include <string_view>

#include "hotboot/snapshot_file.h"

namespace hotboot::snapfile::crypto {

Hash256 Sha256(const void* p, size_t n);

// An incremental SHA-256.
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(const void* p, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  Hash256 Final();

 private:
  EVP_MD_CTX* ctx_;
};

// SPEC.md "Root and signatures": SHA-256 over the root domain string (its NUL
// included), the whole manifest record (fixed part, base name, record hash,
// manifest JSON: given as two pieces), the whole index record, the chunk
// hashes in index order and the base root.
Hash256 SnapshotRoot(std::string_view manifest_record_head, std::string_view manifest_json,
                     std::string_view index_record, const std::vector<Hash256>& chunk_hashes,
                     const Hash256& base_root);
// What an Ed25519 signature signs: the signature domain string (its NUL
// included) followed by the root.
std::string SignedMessage(const Hash256& root);
// "ed25519:" + the first 16 hex digits of SHA-256 of the raw public key.
std::string Fingerprint(const Hash256& public_key);
// True when sig is a valid Ed25519 signature by public_key over SignedMessage(root).
bool VerifyRoot(const Hash256& public_key, const std::array<uint8_t, 64>& sig, const Hash256& root);

}  // namespace hotboot::snapfile::crypto
