#include "crypto.h"

#include <openssl/evp.h>

#include <cstring>
#include <memory>

#include "hotboot/snapshot_format.h"

namespace hotboot::snapfile {

std::string HexOf(const Hash256& h) {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(64);
  for (uint8_t b : h) {
    s.push_back(kHex[b >> 4]);
    s.push_back(kHex[b & 15]);
  }
  return s;
}

bool IsZero(const Hash256& h) {
  for (uint8_t b : h) {
    if (b) return false;
  }
  return true;
}

bool TrustInfo::signed_validly() const {
  for (const auto& s : signatures) {
    if (s.valid) return true;
  }
  return false;
}

namespace crypto {

namespace {
// Fetched once: OpenSSL 3 would otherwise look the algorithm up on every call.
const EVP_MD* Md() {
  static const EVP_MD* md = [] {
    const EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return m ? m : EVP_sha256();
  }();
  return md;
}
}  // namespace

Hash256 Sha256(const void* p, size_t n) {
  Hash256 h{};
  unsigned int len = 0;
  // EVP_Digest fails only on allocation failure; a zero hash then fails every comparison.
  if (EVP_Digest(p, n, h.data(), &len, Md(), nullptr) != 1 || len != h.size()) h.fill(0);
  return h;
}

Sha256Stream::Sha256Stream() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ && EVP_DigestInit_ex(ctx_, Md(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_);
    ctx_ = nullptr;
  }
}
Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(ctx_); }
void Sha256Stream::Update(const void* p, size_t n) {
  if (ctx_ && n > 0 && EVP_DigestUpdate(ctx_, p, n) != 1) {
    EVP_MD_CTX_free(ctx_);
    ctx_ = nullptr;
  }
}
Hash256 Sha256Stream::Final() {
  Hash256 h{};
  unsigned int len = 0;
  if (!ctx_ || EVP_DigestFinal_ex(ctx_, h.data(), &len) != 1 || len != h.size()) h.fill(0);
  return h;
}

Hash256 SnapshotRoot(std::string_view manifest_record_head, std::string_view manifest_json,
                     std::string_view index_record, const std::vector<Hash256>& chunk_hashes,
                     const Hash256& base_root) {
  Sha256Stream s;
  s.Update(kRootDomain, sizeof kRootDomain);
  s.Update(manifest_record_head);
  s.Update(manifest_json);
  s.Update(index_record);
  if (!chunk_hashes.empty()) s.Update(chunk_hashes.data(), chunk_hashes.size() * sizeof(Hash256));
  s.Update(base_root.data(), base_root.size());
  return s.Final();
}

std::string SignedMessage(const Hash256& root) {
  std::string m(kSignatureDomain, sizeof kSignatureDomain);
  m.append(reinterpret_cast<const char*>(root.data()), root.size());
  return m;
}

std::string Fingerprint(const Hash256& public_key) {
  return "ed25519:" + HexOf(Sha256(public_key.data(), public_key.size())).substr(0, 16);
}

bool VerifyRoot(const Hash256& public_key, const std::array<uint8_t, 64>& sig, const Hash256& root) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, public_key.data(), public_key.size()), EVP_PKEY_free);
  if (!key) return false;
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1) return false;
  const std::string msg = SignedMessage(root);
  return EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), reinterpret_cast<const unsigned char*>(msg.data()),
                          msg.size()) == 1;
}

}  // namespace crypto
}  // namespace hotboot::snapfile
