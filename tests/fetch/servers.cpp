// Real servers on loopback for the fetch tests; see servers.h.
#include "servers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace hotboot::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

bool Executable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return IoError("write " + path + " failed");
  return Status::Ok();
}

std::string ReadTail(const std::string& path, size_t max = 2000) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > max ? s.substr(s.size() - max) : s;
}

// Runs argv to completion; stdout+stderr go to *out. OK only on exit 0.
Status RunCapture(const std::vector<std::string>& argv, std::string* out) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return ErrnoError("pipe", errno);
  pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork", errno);
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(p[1]);
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  close(p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (out) *out = text;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    return IoError(argv[0] + " failed (status " + std::to_string(st) + "): " + text.substr(0, 1500));
  }
  return Status::Ok();
}

// Starts argv as a child whose output goes to log; it dies with us.
Result<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork", errno);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void Stop(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  auto deadline = Clock::now() + std::chrono::seconds(5);
  int st = 0;
  while (Clock::now() < deadline) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
}

Result<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoError("socket", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    int e = errno;
    close(fd);
    return ErrnoError("bind 127.0.0.1:0", e);
  }
  close(fd);
  return static_cast<int>(ntohs(a.sin_port));
}

// The HTTP status of GET url, by the curl CLI ("000" when nothing answered).
std::string HttpCode(const std::string& url, const std::string& ca) {
  std::vector<std::string> argv = {"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                   "--max-time", "2"};
  if (!ca.empty()) {
    argv.push_back("--cacert");
    argv.push_back(ca);
  }
  argv.push_back(url);
  std::string out;
  (void)RunCapture(argv, &out);
  return out;
}

bool TcpAccepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// Polls until `ready` says yes, the child exits, or 20 s pass.
Status WaitReady(pid_t* pid, const std::string& what, const std::string& log,
                 const std::function<bool()>& ready) {
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    int st = 0;
    if (waitpid(*pid, &st, WNOHANG) == *pid) {
      *pid = -1;  // reaped: never signal that number again
      return IoError(what + " exited (status " + std::to_string(st) + ") before it answered; log " + log +
                     ":\n" + ReadTail(log));
    }
    if (ready()) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return Timeout(what + " did not answer within 20 s; log " + log + ":\n" + ReadTail(log));
}

std::string Base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

}  // namespace

Result<Tls> MakeTls(const std::string& dir) {
  const std::string openssl = "/usr/bin/openssl";
  if (!Executable(openssl)) return NotFound(openssl + " is missing (apt-get install openssl)");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return IoError("mkdir " + dir + ": " + ec.message());
  Tls t{dir + "/ca.pem", dir + "/server.pem", dir + "/server.key"};
  const std::string ca_key = dir + "/ca.key", csr = dir + "/server.csr", ext = dir + "/server.ext";
  std::string out;
  HB_RETURN_IF_ERROR(RunCapture({openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key, "-out",
                                 t.ca_cert, "-days", "3", "-subj", "/CN=hotboot test CA", "-addext",
                                 "basicConstraints=critical,CA:TRUE", "-addext",
                                 "keyUsage=critical,keyCertSign,cRLSign"},
                                &out));
  HB_RETURN_IF_ERROR(RunCapture({openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                 "-nodes", "-keyout", t.key, "-out", csr, "-subj", "/CN=127.0.0.1"},
                                &out));
  HB_RETURN_IF_ERROR(WriteText(ext,
                               "basicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\n"
                               "extendedKeyUsage=serverAuth\n"
                               "subjectAltName=IP:127.0.0.1,DNS:localhost\n"));
  HB_RETURN_IF_ERROR(RunCapture({openssl, "x509", "-req", "-in", csr, "-CA", t.ca_cert, "-CAkey", ca_key,
                                 "-CAcreateserial", "-out", t.cert, "-days", "3", "-extfile", ext},
                                &out));
  return t;
}

// ---------------------------------------------------------------- registry

namespace {
// FreePort's port can be taken by another process before the server binds
// it (tests run in parallel): try again with another.
template <typename F>
auto RetryOnPortClash(F start) -> decltype(start()) {
  for (int attempt = 0;; ++attempt) {
    auto r = start();
    if (r.ok() || attempt == 4) return r;
    const std::string& m = r.status().message();
    if (m.find("ddress already in use") == std::string::npos) return r;
  }
}
}  // namespace

Result<std::unique_ptr<RegistryServer>> RegistryServer::Start(const std::string& dir, bool tls, bool auth) {
  return RetryOnPortClash([&] { return StartImpl(dir, tls, auth, nullptr); });
}

Result<std::unique_ptr<RegistryServer>> RegistryServer::StartWithTokenAuth(const std::string& dir,
                                                                          const TokenAuth& token) {
  return RetryOnPortClash([&] { return StartImpl(dir, /*tls=*/true, /*auth=*/false, &token); });
}

Result<std::unique_ptr<RegistryServer>> RegistryServer::StartImpl(const std::string& dir, bool tls, bool auth,
                                                                  const TokenAuth* token) {
  const std::string bin = "/usr/bin/docker-registry";
  if (!Executable(bin)) return NotFound(bin + " is missing (apt-get install docker-registry)");
  const std::string htpasswd = "/usr/bin/htpasswd";
  if (auth && !Executable(htpasswd)) return NotFound(htpasswd + " is missing (apt-get install apache2-utils)");
  std::unique_ptr<RegistryServer> s(new RegistryServer());
  s->dir_ = dir;
  s->storage_ = dir + "/storage";
  std::error_code ec;
  fs::create_directories(s->storage_, ec);
  if (ec) return IoError("mkdir " + s->storage_ + ": " + ec.message());
  std::string tls_yaml, auth_yaml;
  if (tls) {
    HB_ASSIGN_OR_RETURN(Tls t, MakeTls(dir + "/tls"));
    s->ca_cert_ = t.ca_cert;
    tls_yaml = "  tls:\n    certificate: " + t.cert + "\n    key: " + t.key + "\n";
  }
  if (auth) {
    s->user_ = "hotboot";
    s->password_ = "s3cret-pass";
    std::string line;
    HB_RETURN_IF_ERROR(RunCapture({htpasswd, "-Bbn", s->user_, s->password_}, &line));
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    HB_RETURN_IF_ERROR(WriteText(dir + "/htpasswd", line + "\n"));
    auth_yaml = "auth:\n  htpasswd:\n    realm: hotboot-test\n    path: " + dir + "/htpasswd\n";
  }
  if (token != nullptr) {
    auth_yaml = "auth:\n  token:\n    realm: " + token->realm + "\n    service: " + token->service +
                "\n    issuer: " + token->issuer + "\n    rootcertbundle: " + token->root_cert_bundle + "\n";
  }
  HB_ASSIGN_OR_RETURN(s->port_, FreePort());
  const std::string config = dir + "/config.yml";
  HB_RETURN_IF_ERROR(WriteText(config, "version: 0.1\n"
                                       "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                                       "storage:\n  filesystem:\n    rootdirectory: " +
                                           s->storage_ +
                                           "\n  delete:\n    enabled: true\n"
                                           "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                                           "http:\n  addr: 127.0.0.1:" +
                                           std::to_string(s->port_) + "\n  secret: hotboot-test-secret\n" +
                                           tls_yaml + auth_yaml));
  HB_ASSIGN_OR_RETURN(s->pid_, Spawn({bin, "serve", config}, s->log_path()));
  const std::string url = std::string(tls ? "https" : "http") + "://" + s->host() + "/v2/";
  const bool have_curl = Executable("/usr/bin/curl");
  const std::string ca = s->ca_cert_;
  const int port = s->port_;
  HB_RETURN_IF_ERROR(WaitReady(&s->pid_, "docker-registry on " + s->host(), s->log_path(), [&] {
    if (!have_curl) return TcpAccepts(port);
    std::string code = HttpCode(url, ca);
    return code == "200" || code == "401";
  }));
  return s;
}

RegistryServer::~RegistryServer() {
  Stop(pid_);
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::string RegistryServer::host() const { return "127.0.0.1:" + std::to_string(port_); }

std::string RegistryServer::WriteAuthFile(const std::string& path, const std::string& user,
                                          const std::string& pass) const {
  (void)WriteText(path, "{\n  \"auths\": {\n    \"" + host() + "\": {\n      \"auth\": \"" +
                            Base64(user + ":" + pass) + "\"\n    }\n  }\n}\n");
  return path;
}

std::string RegistryServer::BlobDataPath(const std::string& digest) const {
  std::string hex = digest.rfind("sha256:", 0) == 0 ? digest.substr(7) : digest;
  return storage_ + "/docker/registry/v2/blobs/sha256/" + hex.substr(0, 2) + "/" + hex + "/data";
}

// ---------------------------------------------------------------- nginx

Result<std::unique_ptr<FileServer>> FileServer::Start(const std::string& dir, const std::string& docroot,
                                                      bool ranges, bool claim_ranges) {
  return RetryOnPortClash([&] { return StartImpl(dir, docroot, ranges, claim_ranges); });
}

Result<std::unique_ptr<FileServer>> FileServer::StartImpl(const std::string& dir, const std::string& docroot,
                                                          bool ranges, bool claim_ranges) {
  const std::string bin = "/usr/sbin/nginx";
  if (!Executable(bin)) return NotFound(bin + " is missing (apt-get install nginx-light)");
  std::unique_ptr<FileServer> s(new FileServer());
  s->dir_ = dir;
  std::error_code ec;
  fs::create_directories(dir + "/tmp", ec);
  if (ec) return IoError("mkdir " + dir + "/tmp: " + ec.message());
  HB_ASSIGN_OR_RETURN(Tls t, MakeTls(dir + "/tls"));
  s->ca_cert_ = t.ca_cert;
  HB_ASSIGN_OR_RETURN(s->port_, FreePort());
  const std::string tmp = dir + "/tmp";
  std::string conf = "daemon off;\nmaster_process off;\nworker_processes 1;\n";
  if (geteuid() == 0) conf += "user root;\n";
  conf += "pid " + dir + "/nginx.pid;\nerror_log " + dir + "/error.log warn;\n" +
          "events { worker_connections 256; }\n"
          "http {\n  access_log off;\n  default_type application/octet-stream;\n  sendfile on;\n"
          "  client_body_temp_path " + tmp + "/body;\n  proxy_temp_path " + tmp + "/proxy;\n"
          "  fastcgi_temp_path " + tmp + "/fastcgi;\n  uwsgi_temp_path " + tmp + "/uwsgi;\n"
          "  scgi_temp_path " + tmp + "/scgi;\n"
          "  server {\n    listen 127.0.0.1:" + std::to_string(s->port_) + " ssl;\n"
          "    ssl_certificate " + t.cert + ";\n    ssl_certificate_key " + t.key + ";\n"
          "    root " + docroot + ";\n" + (ranges ? "" : "    max_ranges 0;\n") +
          (!ranges && claim_ranges ? "    add_header Accept-Ranges bytes always;\n" : "") +
          "    location / { }\n  }\n}\n";
  const std::string config = dir + "/nginx.conf";
  HB_RETURN_IF_ERROR(WriteText(config, conf));
  const std::string log = dir + "/nginx.out";
  HB_ASSIGN_OR_RETURN(s->pid_, Spawn({bin, "-p", dir, "-e", dir + "/error.log", "-c", config}, log));
  const bool have_curl = Executable("/usr/bin/curl");
  const std::string url = "https://127.0.0.1:" + std::to_string(s->port_) + "/";
  const int port = s->port_;
  Status st = WaitReady(&s->pid_, "nginx on 127.0.0.1:" + std::to_string(port), log, [&] {
    if (!have_curl) return TcpAccepts(port);
    return HttpCode(url, t.ca_cert) != "000";
  });
  if (!st.ok()) return st.Prefixed("error.log: " + ReadTail(dir + "/error.log", 600));
  return s;
}

FileServer::~FileServer() {
  Stop(pid_);
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::string FileServer::url(const std::string& name) const {
  return "https://127.0.0.1:" + std::to_string(port_) + "/" + name;
}

// ---------------------------------------------------------------- proxy

Result<std::unique_ptr<CuttingProxy>> CuttingProxy::Start(int target_port, uint64_t cut_after, int cuts) {
  std::unique_ptr<CuttingProxy> p(new CuttingProxy());
  p->target_port_ = target_port;
  p->cut_after_ = cut_after;
  p->cuts_ = cuts;
  if (pipe2(p->stop_pipe_, O_CLOEXEC) != 0) return ErrnoError("pipe", errno);
  p->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->listen_fd_ < 0) return ErrnoError("socket", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(p->listen_fd_, 64) != 0 ||
      getsockname(p->listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    return ErrnoError("proxy listen on 127.0.0.1", errno);
  }
  p->port_ = ntohs(a.sin_port);
  p->thread_ = std::thread([raw = p.get()] { raw->Run(); });
  return p;
}

namespace {

int ConnectLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

void CuttingProxy::Run() {
  std::vector<std::thread> conns;
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    int index = connections_.fetch_add(1);
    const bool cut = index < cuts_;
    conns.emplace_back([this, client, cut] {
      int server = ConnectLoopback(target_port_);
      if (server < 0) {
        close(client);
        return;
      }
      uint64_t to_client = 0;
      char buf[64 * 1024];
      bool done = false;
      while (!done) {
        pollfd f[3] = {{client, POLLIN, 0}, {server, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
        if (poll(f, 3, -1) < 0) {
          if (errno == EINTR) continue;
          break;
        }
        if (f[2].revents) break;
        if (f[0].revents & (POLLIN | POLLHUP | POLLERR)) {
          ssize_t n = recv(client, buf, sizeof buf, 0);
          if (n <= 0 || !SendAll(server, buf, static_cast<size_t>(n))) done = true;
        }
        if (!done && (f[1].revents & (POLLIN | POLLHUP | POLLERR))) {
          size_t want = sizeof buf;
          if (cut) want = static_cast<size_t>(std::min<uint64_t>(want, cut_after_ - to_client));
          ssize_t n = want == 0 ? 0 : recv(server, buf, want, 0);
          if (n <= 0 || !SendAll(client, buf, static_cast<size_t>(n))) {
            done = true;
          } else {
            to_client += static_cast<uint64_t>(n);
            bytes_to_client_ += static_cast<uint64_t>(n);
            if (cut && to_client >= cut_after_) done = true;
          }
        }
      }
      close(server);
      close(client);
    });
  }
  for (auto& t : conns) t.join();
}

CuttingProxy::~CuttingProxy() {
  if (stop_pipe_[1] >= 0) {
    char c = 1;
    (void)!write(stop_pipe_[1], &c, 1);
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (stop_pipe_[0] >= 0) close(stop_pipe_[0]);
  if (stop_pipe_[1] >= 0) close(stop_pipe_[1]);
}

}  // namespace hotboot::testing
