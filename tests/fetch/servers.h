// Real servers on 127.0.0.1 for the fetch tests: Debian's docker-registry
// (the CNCF distribution registry) with TLS and htpasswd, nginx serving files
// over HTTPS with Range, and a TCP proxy that cuts connections mid-transfer.
// Each runs as a child process (the proxy as a thread) that the object owns;
// the destructor stops it and removes its directory.
//
// Servers die with the thread that started them (PR_SET_PDEATHSIG), so start
// them on a thread that outlives their use (the test's own).
//
// Skip-friendly: Start returns kNotFound when the server's binary (or
// openssl/htpasswd) is missing, so a test can GTEST_SKIP() on that code.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "hotboot/status.h"

namespace hotboot::testing {

// A scratch CA and a server certificate for 127.0.0.1 / localhost, under dir
// (created if missing): dir/ca.pem, dir/server.pem, dir/server.key.
struct Tls {
  std::string ca_cert, cert, key;
};
Result<Tls> MakeTls(const std::string& dir);

// Debian's docker-registry with a config.yml under dir: filesystem storage
// under dir/storage, http.addr 127.0.0.1:<free port>, TLS with MakeTls's
// certificate (when tls), htpasswd auth (bcrypt) for user()/password() (when
// auth), delete enabled. Start waits (20 s deadline) until GET /v2/ answers
// 200 or 401. kNotFound when /usr/bin/docker-registry is missing.
class RegistryServer {
 public:
  static Result<std::unique_ptr<RegistryServer>> Start(const std::string& dir, bool tls = true,
                                                       bool auth = true);
  // Bearer-token auth instead of htpasswd (TLS on): the registry sends
  // clients to `realm` and accepts JWTs issued by `issuer` for `service`,
  // signed by a certificate in `root_cert_bundle` (an x5c chain).
  struct TokenAuth {
    std::string realm, service, issuer, root_cert_bundle;
  };
  static Result<std::unique_ptr<RegistryServer>> StartWithTokenAuth(const std::string& dir,
                                                                    const TokenAuth& token);
  ~RegistryServer();
  RegistryServer(const RegistryServer&) = delete;
  RegistryServer& operator=(const RegistryServer&) = delete;

  int port() const { return port_; }
  std::string host() const;                          // "127.0.0.1:PORT"
  std::string ca_cert() const { return ca_cert_; }   // empty without tls
  std::string storage() const { return storage_; }   // the filesystem driver's root
  std::string user() const { return user_; }
  std::string password() const { return password_; }
  std::string log_path() const { return dir_ + "/registry.log"; }
  // Writes an auth.json ({"auths": {host(): {"auth": base64(user:pass)}}})
  // with these (or other) credentials; returns its path.
  std::string WriteAuthFile(const std::string& path, const std::string& user,
                            const std::string& pass) const;
  // The file holding a blob's bytes on the registry's disk:
  // storage()/docker/registry/v2/blobs/sha256/<xx>/<hex>/data.
  std::string BlobDataPath(const std::string& digest) const;

 private:
  RegistryServer() = default;
  static Result<std::unique_ptr<RegistryServer>> StartImpl(const std::string& dir, bool tls, bool auth,
                                                           const TokenAuth* token);
  std::string dir_, storage_, ca_cert_, user_, password_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// nginx serving docroot over HTTPS (a config under dir; pid, logs and temp
// paths all under dir; `daemon off; master_process off`). ranges=false
// serves whole files only (max_ranges 0); with claim_ranges it still says
// Accept-Ranges: bytes (a server that claims ranges and answers 200 whole).
// kNotFound when nginx is missing.
class FileServer {
 public:
  static Result<std::unique_ptr<FileServer>> Start(const std::string& dir, const std::string& docroot,
                                                   bool ranges = true, bool claim_ranges = false);
  ~FileServer();
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;

  int port() const { return port_; }
  std::string url(const std::string& name) const;  // https://127.0.0.1:PORT/<name>
  std::string ca_cert() const { return ca_cert_; }

 private:
  FileServer() = default;
  static Result<std::unique_ptr<FileServer>> StartImpl(const std::string& dir, const std::string& docroot,
                                                       bool ranges, bool claim_ranges);
  std::string dir_, ca_cert_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// A TCP proxy on 127.0.0.1:<free port> to 127.0.0.1:target_port (a thread;
// TLS passes through untouched). The first `cuts` connections are closed
// after `cut_after` bytes went from the server to the client; later ones
// pass whole. Counts the bytes it forwarded server->client.
class CuttingProxy {
 public:
  static Result<std::unique_ptr<CuttingProxy>> Start(int target_port, uint64_t cut_after, int cuts);
  ~CuttingProxy();
  CuttingProxy(const CuttingProxy&) = delete;
  CuttingProxy& operator=(const CuttingProxy&) = delete;

  int port() const { return port_; }
  uint64_t bytes_to_client() const { return bytes_to_client_.load(); }
  int connections() const { return connections_.load(); }

 private:
  CuttingProxy() = default;
  void Run();
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  int target_port_ = 0;
  int port_ = 0;
  uint64_t cut_after_ = 0;
  int cuts_ = 0;
  std::atomic<uint64_t> bytes_to_client_{0};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

}  // namespace hotboot::testing
