// Keys, signing and trust policies (hotboot/signing.h). Key files are the
// PEM formats OpenSSL writes; every file a policy depends on is opened
// without following symlinks and checked for owner and mode, as OpenSSH
// treats authorized_keys.
#include "hotboot/signing.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "crypto.h"
#include "hotboot/io.h"
#include "records.h"
#include "hotboot/temp_files.h"

namespace hotboot::snapfile {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxKeyFile = 64u << 10;  // a PEM Ed25519 key is about 120 bytes

using Bio = std::unique_ptr<BIO, decltype(&BIO_free)>;

std::shared_ptr<evp_pkey_st> Own(EVP_PKEY* k) { return std::shared_ptr<evp_pkey_st>(k, EVP_PKEY_free); }

Result<Hash256> RawPublic(EVP_PKEY* k, const std::string& path) {
  if (EVP_PKEY_get_base_id(k) != EVP_PKEY_ED25519) {
    return InvalidArgument(path + " is a " + std::string(OBJ_nid2sn(EVP_PKEY_get_base_id(k))) +
                           " key, not Ed25519 (make one with hotboot keygen or openssl genpkey -algorithm ed25519)");
  }
  Hash256 raw{};
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(k, raw.data(), &len) != 1 || len != raw.size()) {
    return InvalidArgument(path + ": cannot read the Ed25519 public key");
  }
  return raw;
}

// Reads a small key file. A file the user named (follow) may be a symlink (a
// mounted secret often is); one found in a trust directory may not, so that
// a link planted there cannot add a key from elsewhere.
Result<std::string> ReadKeyFile(int dirfd, const std::string& name, const std::string& shown, struct stat* st_out,
                                bool follow) {
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | (follow ? 0 : O_NOFOLLOW) | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ELOOP) return FailedPrecondition(shown + " is a symbolic link; key files must be regular files");
    return ErrnoError("open " + shown, errno);
  }
  struct stat st{};
  Status s;
  if (::fstat(fd, &st) != 0) s = ErrnoError("stat " + shown, errno);
  if (s.ok() && !S_ISREG(st.st_mode)) s = FailedPrecondition(shown + " is not a regular file");
  if (s.ok() && static_cast<uint64_t>(st.st_size) > kMaxKeyFile) {
    s = InvalidArgument(shown + " is " + std::to_string(st.st_size) + " bytes: not a key file");
  }
  std::string b;
  if (s.ok()) {
    b.resize(static_cast<size_t>(st.st_size));
    s = io::PreadAll(fd, b.data(), b.size(), 0, shown);
  }
  ::close(fd);
  if (!s.ok()) return s;
  if (st_out) *st_out = st;
  return b;
}

Result<PublicKey> ParsePublicKey(const std::string& pem, const std::string& shown) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  if (!bio) return Internal("out of memory");
  EVP_PKEY* k = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (!k) {
    return InvalidArgument(shown + " is not a PEM public key (expected -----BEGIN PUBLIC KEY-----, as written by "
                                   "hotboot keygen or openssl pkey -pubout)");
  }
  auto owned = Own(k);
  PublicKey pub;
  HB_ASSIGN_OR_RETURN(pub.raw, RawPublic(k, shown));
  pub.source = shown;
  return pub;
}

// Writes b to a new file (O_EXCL | O_NOFOLLOW), fsynced, with exactly `mode`.
Status WriteNewFile(const std::string& path, const std::string& b, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return FailedPrecondition(path + " already exists; not overwriting it");
    return ErrnoError("create " + path, errno);
  }
  Status s;
  if (::fchmod(fd, mode) != 0) s = ErrnoError("chmod " + path, errno);  // the umask may have cleared bits
  if (s.ok()) s = io::WriteAll(fd, b.data(), b.size(), path);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoError("fsync " + path, errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError("close " + path, errno);
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

std::string BioString(BIO* b) {
  char* p = nullptr;
  const long n = BIO_get_mem_data(b, &p);
  return n > 0 ? std::string(p, static_cast<size_t>(n)) : std::string();
}

bool OwnerOk(const struct stat& st) { return st.st_uid == 0 || st.st_uid == ::geteuid(); }

std::string Mode(mode_t m) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", static_cast<unsigned>(m & 07777));
  return b;
}

// Whoever can rename an ancestor of the trust directory can swap in another
// one: every ancestor must be owned by root (or this user) and not writable
// by group or others, unless sticky (as /tmp: others cannot rename what they
// do not own there).
Status CheckAncestors(const std::string& dir) {
  std::error_code ec;
  fs::path p = fs::absolute(dir, ec).lexically_normal();
  if (ec) return IoError("resolve " + dir + ": " + ec.message());
  for (p = p.parent_path(); !p.empty(); p = p.parent_path()) {
    struct stat st{};
    if (::stat(p.c_str(), &st) != 0) return ErrnoError("stat " + p.string(), errno);
    if (!OwnerOk(st) || ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0)) {
      return FailedPrecondition("trust directory " + dir + ": its parent " + p.string() + " (uid " +
                                std::to_string(st.st_uid) + ", mode " + Mode(st.st_mode) +
                                ") must be owned by root and not writable by group or others: whoever can write "
                                "it can replace the trust directory");
    }
    if (p == p.root_path()) break;
  }
  return Status::Ok();
}

}  // namespace

std::string Fingerprint(const Hash256& raw_public_key) { return crypto::Fingerprint(raw_public_key); }
std::string PublicKey::fingerprint() const { return crypto::Fingerprint(raw); }

Result<std::array<uint8_t, 64>> PrivateKey::SignRoot(const Hash256& root) const {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1) {
    return Internal("Ed25519 signing could not start (OpenSSL)");
  }
  const std::string msg = crypto::SignedMessage(root);
  std::array<uint8_t, 64> sig{};
  size_t len = sig.size();
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) != 1 ||
      len != sig.size()) {
    return Internal("Ed25519 signing failed (OpenSSL)");
  }
  return sig;
}

Result<PublicKey> GenerateKeyPair(const std::string& path) {
  const std::string pub_path = path + ".pub";
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) return FailedPrecondition(path + " already exists; not overwriting it");
  if (::lstat(pub_path.c_str(), &st) == 0) return FailedPrecondition(pub_path + " already exists; not overwriting it");
  EVP_PKEY* raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (!raw) return Internal("Ed25519 key generation failed (OpenSSL)");
  auto key = Own(raw);
  Bio priv(BIO_new(BIO_s_mem()), BIO_free), pubb(BIO_new(BIO_s_mem()), BIO_free);
  if (!priv || !pubb || PEM_write_bio_PrivateKey(priv.get(), raw, nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
      PEM_write_bio_PUBKEY(pubb.get(), raw) != 1) {
    return Internal("writing the key as PEM failed (OpenSSL)");
  }
  PublicKey pub;
  HB_ASSIGN_OR_RETURN(pub.raw, RawPublic(raw, path));
  pub.source = pub_path;
  HB_RETURN_IF_ERROR(WriteNewFile(path, BioString(priv.get()), 0600));
  Status s = WriteNewFile(pub_path, BioString(pubb.get()), 0644);
  if (!s.ok()) {
    ::unlink(path.c_str());
    return s;
  }
  SyncParentDir(path);
  return pub;
}

Result<PrivateKey> LoadPrivateKey(const std::string& path) {
  HB_ASSIGN_OR_RETURN(std::string pem, ReadKeyFile(AT_FDCWD, path, path, nullptr, /*follow=*/true));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  if (!bio) return Internal("out of memory");
  EVP_PKEY* k = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (!k) {
    return InvalidArgument(path + " is not an unencrypted PEM private key (expected -----BEGIN PRIVATE KEY-----, as "
                                  "written by hotboot keygen or openssl genpkey -algorithm ed25519)");
  }
  PrivateKey key;
  key.key_ = Own(k);
  HB_ASSIGN_OR_RETURN(key.pub_.raw, RawPublic(k, path));
  key.pub_.source = path;
  return key;
}

Result<PublicKey> LoadPublicKey(const std::string& path) {
  HB_ASSIGN_OR_RETURN(std::string pem, ReadKeyFile(AT_FDCWD, path, path, nullptr, /*follow=*/true));
  return ParsePublicKey(pem, path);
}

// ---- Signing a snapshot in place ----

namespace {

// The bytes [0, n) of in, to out at 0: in the kernel (copy_file_range, which
// reflinks where the file system can), through a buffer where it cannot.
Status CopyPrefix(int in, int out, uint64_t n, const std::string& what) {
  loff_t off_in = 0, off_out = 0;
  while (static_cast<uint64_t>(off_in) < n) {
    const ssize_t k = ::copy_file_range(in, &off_in, out, &off_out, n - static_cast<uint64_t>(off_in), 0);
    if (k > 0) continue;
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) return Truncated(what + " ended at byte " + std::to_string(off_in) + " while being copied");
    if (errno != EXDEV && errno != ENOSYS && errno != EOPNOTSUPP && errno != EINVAL) {
      return ErrnoError("copy " + what, errno);
    }
    std::string buf(8u << 20, '\0');  // file systems without in-kernel copies
    while (static_cast<uint64_t>(off_in) < n) {
      const uint64_t m = std::min<uint64_t>(buf.size(), n - static_cast<uint64_t>(off_in));
      HB_RETURN_IF_ERROR(io::PreadAll(in, buf.data(), m, static_cast<uint64_t>(off_in), what));
      ssize_t w = ::pwrite(out, buf.data(), m, off_out);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return ErrnoError("write copy of " + what, errno);
      off_in += w;
      off_out += w;
    }
  }
  return Status::Ok();
}

Status PwriteAll(int fd, const std::string& b, uint64_t off, const std::string& what) {
  for (size_t w = 0; w < b.size();) {
    const ssize_t n = ::pwrite(fd, b.data() + w, b.size() - w, static_cast<off_t>(off + w));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write " + what, errno);
    w += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Result<SignOutcome> SignSnapshot(const std::string& path, const PrivateKey& key) {
  OpenOptions oo;
  oo.check_chunk_hashes = true;
  HB_ASSIGN_OR_RETURN(auto reader, SnapshotReader::Open(path, oo));
  const TrustInfo& ti = reader->trust();
  if (!ti.has_chunk_hashes) {
    return FailedPrecondition(path + ": format " + std::to_string(ti.version_major) + "." +
                              std::to_string(ti.version_minor) +
                              " has no chunk hashes: rebuild it with this hotboot to sign it");
  }
  // Where the trust record is: the trailer says where the index ends.
  const int in = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return ErrnoError("open " + path, errno);
  struct stat st{};
  Status s;
  if (::fstat(in, &st) != 0) s = ErrnoError("stat " + path, errno);
  char tb[kTrailerSize];
  char hb[kHeaderSize];
  Trailer tr;
  Header h;
  if (s.ok()) s = io::PreadAll(in, tb, kTrailerSize, static_cast<uint64_t>(st.st_size) - kTrailerSize, path);
  if (s.ok()) s = DecodeTrailer(tb, &tr);
  if (s.ok()) s = io::PreadAll(in, hb, kHeaderSize, 0, path);
  if (s.ok()) s = DecodeHeader(hb, kHeaderSize, &h);
  const uint64_t trust_at = tr.index_offset + tr.index_size;
  const uint64_t trust_size = static_cast<uint64_t>(st.st_size) - kTrailerSize - trust_at;
  std::string old;
  TrustRecord t;
  if (s.ok() && static_cast<uint64_t>(st.st_size) != reader->file_size()) s = FailedPrecondition(path + " changed while being signed");
  if (s.ok()) {
    old.resize(trust_size);
    s = io::PreadAll(in, old.data(), trust_size, trust_at, path);
  }
  if (s.ok()) s = DecodeTrustRecord(old.data(), old.size(), ti.chunk_count, &t);
  if (!s.ok()) {
    ::close(in);
    return s.Prefixed("sign " + path);
  }
  SignOutcome outcome;
  outcome.root = ti.root;
  outcome.fingerprint = key.public_key().fingerprint();
  const auto before = t.signatures.size();
  t.signatures.erase(std::remove_if(t.signatures.begin(), t.signatures.end(),
                                    [&](const TrustSignature& x) { return x.public_key == key.public_key().raw; }),
                     t.signatures.end());
  outcome.replaced = t.signatures.size() != before;
  if (t.signatures.size() >= kMaxSignatures) {
    ::close(in);
    return FailedPrecondition(path + " already carries " + std::to_string(kMaxSignatures) +
                              " signatures, the most a snapshot holds");
  }
  TrustSignature sig;
  sig.public_key = key.public_key().raw;
  auto signature = key.SignRoot(ti.root);
  if (!signature.ok()) {
    ::close(in);
    return signature.status();
  }
  sig.signature = *signature;
  t.signatures.push_back(sig);
  outcome.signatures = t.signatures.size();
  const std::string record = EncodeTrustRecord(t);
  h.file_size = trust_at + record.size() + kTrailerSize;

  auto created = CreateTemporary(path, st.st_mode & 0777);
  if (!created.ok()) {
    ::close(in);
    return created.status().Prefixed("sign " + path);
  }
  const int out = *created;
  const std::string tmp = TempPathFor(path);
  s = CopyPrefix(in, out, trust_at, path);
  if (s.ok()) s = PwriteAll(out, record + std::string(tb, kTrailerSize), trust_at, tmp);
  if (s.ok()) s = PwriteAll(out, EncodeHeader(h), 0, tmp);
  if (s.ok() && ::fchmod(out, st.st_mode & 07777) != 0) s = ErrnoError("chmod " + tmp, errno);
  if (s.ok() && ::fsync(out) != 0) s = ErrnoError("fsync " + tmp, errno);
  if (::close(out) != 0 && s.ok()) s = ErrnoError("close " + tmp, errno);
  ::close(in);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = ErrnoError("rename " + tmp + " to " + path, errno);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s.Prefixed("sign " + path);
  }
  SyncParentDir(path);
  return outcome;
}

// ---- Trust policy ----

std::string TrustPolicy::Describe() const {
  std::string s = std::to_string(keys.size()) + (keys.size() == 1 ? " key" : " keys");
  for (size_t i = 0; i < keys.size(); ++i) s += (i ? ", " : ": ") + keys[i].fingerprint();
  std::vector<std::string> from;
  if (dir_present) from.push_back(trust_dir);
  for (const auto& k : keys) {
    if (!dir_present || k.source.rfind(trust_dir + "/", 0) != 0) from.push_back(k.source);
  }
  for (size_t i = 0; i < from.size(); ++i) s += (i ? ", " : " from ") + from[i];
  return s;
}

Result<TrustPolicy> LoadTrustPolicy(const std::vector<std::string>& key_files, const std::string& trust_dir) {
  TrustPolicy p;
  for (const auto& f : key_files) {
    HB_ASSIGN_OR_RETURN(PublicKey k, LoadPublicKey(f));
    p.keys.push_back(std::move(k));
  }
  if (trust_dir.empty()) return p;
  const int dfd = ::open(trust_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) {
    if (errno == ENOENT) return p;  // no directory: no keys from it
    if (errno == ELOOP || errno == ENOTDIR) {
      return FailedPrecondition("trust directory " + trust_dir + " is not a directory (or is a symbolic link)");
    }
    return ErrnoError("open trust directory " + trust_dir, errno);
  }
  struct stat st{};
  if (::fstat(dfd, &st) != 0) {
    const int e = errno;
    ::close(dfd);
    return ErrnoError("stat " + trust_dir, e);
  }
  if (!OwnerOk(st) || (st.st_mode & 022) != 0) {
    ::close(dfd);
    return FailedPrecondition("trust directory " + trust_dir + " must be owned by root (or this user) and not " +
                              "writable by group or others (it is uid " + std::to_string(st.st_uid) + ", mode " +
                              Mode(st.st_mode) + "): anyone who can write it can add keys");
  }
  if (Status a = CheckAncestors(trust_dir); !a.ok()) {
    ::close(dfd);
    return a;
  }
  p.dir_present = true;
  p.trust_dir = trust_dir;
  DIR* d = ::fdopendir(dfd);
  if (!d) {
    const int e = errno;
    ::close(dfd);
    return ErrnoError("list " + trust_dir, e);
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.empty() || n[0] == '.' || n.size() < 5 || n.compare(n.size() - 4, 4, ".pub") != 0) continue;
    names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  Status s;
  for (const auto& n : names) {
    const std::string shown = trust_dir + "/" + n;
    struct stat kst{};
    auto pem = ReadKeyFile(::dirfd(d), n, shown, &kst, /*follow=*/false);
    if (!pem.ok()) {
      s = pem.status().Prefixed("trust directory");
      break;
    }
    if (!OwnerOk(kst) || (kst.st_mode & 022) != 0) {
      s = FailedPrecondition("trust directory: " + shown +
                             " must be owned by root (or this user) and not writable by group or others");
      break;
    }
    auto k = ParsePublicKey(*pem, shown);
    if (!k.ok()) {
      s = k.status().Prefixed("trust directory");
      break;
    }
    p.keys.push_back(std::move(*k));
  }
  ::closedir(d);
  if (!s.ok()) return s;
  return p;
}

Status CheckTrust(const SnapshotReader& snapshot, const TrustPolicy& policy) {
  return CheckTrust(snapshot.path(), snapshot.trust(), policy);
}

Status CheckTrust(const std::string& name, const TrustInfo& t, const TrustPolicy& policy) {
  if (!policy.in_force()) return Status::Ok();
  const std::string policy_says = "the trust policy (" + policy.Describe() + ") accepts only snapshots signed by " +
                                  (policy.keys.empty() ? std::string("a key it lists, and lists none")
                                                       : std::string("one of them"));
  if (!t.has_chunk_hashes) {
    return Untrusted("snapshot " + name + " is format " + std::to_string(t.version_major) + "." +
                     std::to_string(t.version_minor) + ", no chunk hashes: cannot be verified; " + policy_says +
                     " (rebuild it with this hotboot and sign it)");
  }
  if (t.signatures.empty()) return Untrusted("snapshot " + name + " is not signed; " + policy_says);
  auto trusted = [&](const Hash256& raw) {
    return std::any_of(policy.keys.begin(), policy.keys.end(), [&](const PublicKey& k) { return k.raw == raw; });
  };
  const SignatureInfo* good = nullptr;
  std::vector<std::string> untrusted_keys, bad_sigs;
  for (const auto& s : t.signatures) {
    if (!trusted(s.public_key)) {
      untrusted_keys.push_back(s.fingerprint);
    } else if (!s.valid) {
      bad_sigs.push_back(s.fingerprint);
    } else if (!good) {
      good = &s;
    }
  }
  if (!good) {
    auto join = [](const std::vector<std::string>& v) {
      std::string out;
      for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
      return out;
    };
    std::string why;
    if (!bad_sigs.empty()) {
      why = "the signature by " + join(bad_sigs) +
            " does not match this snapshot's contents (made over other bytes)";
    }
    if (!untrusted_keys.empty()) {
      why += std::string(why.empty() ? "" : "; ") + "signed by " + join(untrusted_keys) +
             ", which the trust policy does not trust";
    }
    return Untrusted("snapshot " + name + ": " + why + "; " + policy_says);
  }
  if (t.has_base) {
    if (IsZero(t.base_root)) {
      return Untrusted("snapshot " + name + " is signed by " + good->fingerprint +
                       ", but its base snapshot is a format 1.0 file that the signature cannot cover; rebuild the base "
                       "and this snapshot with this hotboot");
    }
    if (t.base_check == TrustInfo::BaseCheck::kMismatched) {
      return Untrusted("snapshot " + name + " is signed by " + good->fingerprint +
                       ", but the base snapshot found is not the one it was signed with (its root differs)");
    }
  }
  return Status::Ok();
}

}  // namespace hotboot::snapfile
