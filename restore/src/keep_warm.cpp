#include "hotboot/keep_warm.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

namespace hotboot {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTcpListen = 10;     // TCP_LISTEN in the kernel's enum
constexpr int kTcpTimeWait = 6;    // TCP_TIME_WAIT
constexpr uint32_t kAllStates = 0xfff;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// A NETLINK_SOCK_DIAG socket in the network namespace of `pid`: made on a
// thread that entered it (a socket stays in the namespace it was made in).
Result<int> DiagSocketIn(pid_t pid) {
  struct stat self_ns {}, their_ns {};
  const std::string theirs = "/proc/" + std::to_string(pid) + "/ns/net";
  if (::stat("/proc/self/ns/net", &self_ns) != 0) return ErrnoError("stat /proc/self/ns/net", errno);
  if (::stat(theirs.c_str(), &their_ns) != 0) return ErrnoError("stat " + theirs, errno);
  auto make = [] { return ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG); };
  if (self_ns.st_ino == their_ns.st_ino && self_ns.st_dev == their_ns.st_dev) {
    int fd = make();
    if (fd < 0) return ErrnoError("socket(NETLINK_SOCK_DIAG)", errno);
    return fd;
  }
  int ns = ::open(theirs.c_str(), O_RDONLY | O_CLOEXEC);
  if (ns < 0) return ErrnoError("open " + theirs, errno);
  int fd = -1, err = 0;
  std::thread([&] {
    if (::setns(ns, CLONE_NEWNET) != 0) {
      err = errno;
      return;
    }
    fd = make();
    if (fd < 0) err = errno;
  }).join();
  ::close(ns);
  if (fd < 0) return ErrnoError("socket(NETLINK_SOCK_DIAG) in the network namespace of pid " + std::to_string(pid), err);
  return fd;
}

class SockDiagWatcher final : public PortWatcher {
 public:
  SockDiagWatcher(int fd, int port) : fd_(fd), port_(port) {}
  ~SockDiagWatcher() override { ::close(fd_); }

  Result<PortActivity> Look() override {
    PortActivity a;
    std::set<uint64_t> now;
    for (int family : {AF_INET, AF_INET6}) HB_RETURN_IF_ERROR(Dump(family, &a, &now));
    if (primed_) {
      for (uint64_t c : now) {
        if (!seen_.count(c)) a.new_connections = true;
      }
    }
    seen_ = std::move(now);
    primed_ = true;
    return a;
  }

 private:
  Status Dump(int family, PortActivity* a, std::set<uint64_t>* cookies) {
    struct {
      nlmsghdr nlh;
      inet_diag_req_v2 r;
    } req{};
    req.nlh.nlmsg_len = sizeof req;
    req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nlh.nlmsg_seq = ++seq_;
    req.r.sdiag_family = static_cast<uint8_t>(family);
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_states = kAllStates & ~(1u << kTcpListen);
    req.r.idiag_ext = 1 << (INET_DIAG_INFO - 1);
    sockaddr_nl nl{};
    nl.nl_family = AF_NETLINK;
    if (::sendto(fd_, &req, sizeof req, 0, reinterpret_cast<sockaddr*>(&nl), sizeof nl) < 0) {
      return ErrnoError("sock_diag request", errno);
    }
    alignas(nlmsghdr) char buf[32 * 1024];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("sock_diag answer", errno);
      }
      if (n == 0) return Internal("sock_diag: the kernel closed the socket");
      int left = static_cast<int>(n);
      for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
        if (h->nlmsg_seq != seq_) continue;
        if (h->nlmsg_type == NLMSG_DONE) return Status::Ok();
        if (h->nlmsg_type == NLMSG_ERROR) {
          const auto* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
          return ErrnoError("sock_diag", -e->error);
        }
        if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
        const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
        if (ntohs(m->id.idiag_sport) != port_ || m->idiag_state == kTcpListen) continue;
        ++a->connections;
        cookies->insert(uint64_t{m->id.idiag_cookie[1]} << 32 | m->id.idiag_cookie[0]);
        if (m->idiag_state == kTcpTimeWait) continue;  // no tcp_info for those
        // Attributes: tcp_info, as long as this kernel's struct (copied up to ours).
        int alen = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(inet_diag_msg)));
        for (auto* at = reinterpret_cast<rtattr*>(const_cast<inet_diag_msg*>(m) + 1); RTA_OK(at, alen);
             at = RTA_NEXT(at, alen)) {
          if (at->rta_type != INET_DIAG_INFO) continue;
          tcp_info ti{};
          std::memcpy(&ti, RTA_DATA(at), std::min<size_t>(RTA_PAYLOAD(at), sizeof ti));
          const double recv_s = ti.tcpi_last_data_recv / 1000.0, sent_s = ti.tcpi_last_data_sent / 1000.0;
          const double since = std::min(recv_s, sent_s);
          if (a->since_data_s < 0 || since < a->since_data_s) a->since_data_s = since;
          // Received after it last sent, and a request's bytes are there (or
          // were read): an answer is owed. A connection that only ever
          // received counts too (its sent time is since boot).
          if (recv_s < sent_s || m->idiag_rqueue > 0) a->in_flight = true;
        }
      }
    }
  }

  int fd_;
  int port_;
  uint32_t seq_ = 0;
  bool primed_ = false;
  std::set<uint64_t> seen_;
};

}  // namespace

Result<std::unique_ptr<PortWatcher>> WatchTcpPort(pid_t pid, int port) {
  if (port <= 0 || port > 65535) return InvalidArgument("keep-warm: port " + std::to_string(port) + " is not 1..65535");
  HB_ASSIGN_OR_RETURN(int fd, DiagSocketIn(pid));
  auto w = std::make_unique<SockDiagWatcher>(fd, port);
  // One look now: a kernel without sock_diag for TCP says so here, not later.
  auto first = w->Look();
  if (!first.ok()) return first.status().Prefixed("keep-warm cannot observe port " + std::to_string(port));
  return std::unique_ptr<PortWatcher>(std::move(w));
}

std::vector<HttpCall> KeepWarmRequests(const Manifest& manifest) {
  std::vector<HttpCall> out;
  if (const auto& r = manifest.warm.canary.request) {
    HttpCall c;
    c.method = r->method;
    c.path = r->path;
    c.body = r->body;
    out.push_back(std::move(c));
  }
  return out;
}

Result<double> SendKeepWarm(const std::string& host, int port, const std::vector<HttpCall>& calls,
                            std::chrono::milliseconds timeout) {
  if (calls.empty()) return FailedPrecondition("keep-warm: the snapshot records no request to send");
  const auto t0 = Clock::now();
  for (const HttpCall& c : calls) {
    HB_ASSIGN_OR_RETURN(HttpResponse r, Send(host, port, c, timeout));
    if (r.status / 100 != 2) {
      return FailedPrecondition("keep-warm " + c.method + " " + c.path + " answered HTTP " + std::to_string(r.status));
    }
  }
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

KeepWarm::KeepWarm(KeepWarmOptions opts, std::unique_ptr<PortWatcher> watcher, std::function<Result<double>()> send,
                   KeepWarmEvents ev)
    : opts_(opts), watcher_(std::move(watcher)), send_(std::move(send)), ev_(std::move(ev)) {
  last_activity_ns_.store(NowNs());
}

KeepWarm::~KeepWarm() { Stop(); }

void KeepWarm::Start() {
  if (thread_.joinable() || opts_.interval.count() <= 0) return;
  last_activity_ns_.store(NowNs());
  thread_ = std::thread([this] { Run(); });
}

void KeepWarm::Stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

double KeepWarm::idle_s() const { return static_cast<double>(NowNs() - last_activity_ns_.load()) / 1e9; }

void KeepWarm::Run() {
  std::string last_error;
  const int64_t interval_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(opts_.interval).count();
  for (;;) {
    {
      std::unique_lock lk(mu_);
      if (cv_.wait_for(lk, opts_.poll, [this] { return stop_; })) return;
    }
    auto look = watcher_->Look();
    if (!look.ok()) {
      if (look.status().message() != last_error && ev_.on_watch_error) ev_.on_watch_error(look.status());
      last_error = look.status().message();
      continue;  // not observed: not idle
    }
    last_error.clear();
    const int64_t now = NowNs();
    int64_t seen = 0;
    if (look->new_connections || look->in_flight) seen = now;
    if (look->since_data_s >= 0) seen = std::max(seen, now - static_cast<int64_t>(look->since_data_s * 1e9));
    if (seen > last_activity_ns_.load()) last_activity_ns_.store(seen);
    if (look->in_flight || now - last_activity_ns_.load() < interval_ns) continue;

    auto latency = send_();
    if (latency.ok()) {
      sent_.fetch_add(1);
      last_latency_s_.store(*latency);
    } else {
      failed_.fetch_add(1);
    }
    last_activity_ns_.store(NowNs());
    // Our own connection is not the replica's traffic: absorbed by a look now.
    (void)watcher_->Look();
    if (ev_.on_sent) {
      ev_.on_sent(latency.ok(), latency.ok() ? *latency : -1, latency.ok() ? "" : latency.status().message());
    }
  }
}

}  // namespace hotboot
