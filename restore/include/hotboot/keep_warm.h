// Keep-warm by the supervisor, for transparent servers: when the replica has
// been idle for longer than an interval, send it a synthetic request (the
// snapshot's canary request: the http spec's warmup requests are not recorded
// in the manifest) so that its caches, and a GPU that scales its clocks down,
// do not go cold.
//
// "Idle" is observed, not assumed: the replica's TCP connections on its port
// are listed with sock_diag (NETLINK_SOCK_DIAG, in the replica's network
// namespace) every poll. Activity is: a connection not seen at the previous
// look (TIME_WAIT ones included, so a short request between two looks is
// seen when the server closed first), or data moving on one
// (tcp_info.tcpi_last_data_recv/sent). A connection whose last data was
// received after its last data was sent is a request in flight: no keep-warm
// is sent while one is seen.
//
// What it can miss: a whole request between two looks (every 50 ms) on a
// connection the client closed first (its TIME_WAIT is then on the client's
// side, and the client may be in another network namespace); traffic on
// other ports or on UNIX sockets; work the server does with no connection
// open (a queue fed elsewhere). Each of those only makes a keep-warm come
// sooner than needed, never while a visible request is in flight; a request
// that arrives while a keep-warm runs waits behind it as behind any request.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hotboot/http_client.h"
#include "hotboot/manifest.h"
#include "hotboot/status.h"

namespace hotboot {

// One look at the connections on a port.
struct PortActivity {
  int connections = 0;           // sockets on the port other than the listener (TIME_WAIT included)
  bool in_flight = false;        // a request received and not yet answered, as far as it can be seen
  double since_data_s = -1;      // least time since data moved on any open connection; < 0: none open
  bool new_connections = false;  // a connection not there at the previous look
};

// The seam: one real implementation (sock_diag) and fakes in tests.
class PortWatcher {
 public:
  virtual ~PortWatcher() = default;
  virtual Result<PortActivity> Look() = 0;
};

// TCP sockets whose local port is `port`, in the network namespace of `pid`
// (this process's own when they are the same; entering another needs
// CAP_SYS_ADMIN, as restore has).
Result<std::unique_ptr<PortWatcher>> WatchTcpPort(pid_t pid, int port);

// The synthetic requests a keep-warm sends, from the manifest: the canary's
// request (transparent snapshots). Empty when the snapshot records none.
std::vector<HttpCall> KeepWarmRequests(const Manifest& manifest);

struct KeepWarmOptions {
  std::chrono::milliseconds interval{0};  // idle time before a keep-warm; must be > 0
  std::chrono::milliseconds poll{50};     // how often the port is looked at (a dump of a few sockets: microseconds)
};

struct KeepWarmEvents {
  // After every keep-warm: whether it succeeded, its latency, the error.
  std::function<void(bool ok, double latency_s, const std::string& error)> on_sent;
  // When looking at the port fails (said once per kind of failure); no
  // keep-warm is sent while the port cannot be observed.
  std::function<void(const Status&)> on_watch_error;
};

// The loop, on a thread of its own from Start() to Stop() (or destruction).
// `send` performs one keep-warm and returns its latency in seconds.
class KeepWarm {
 public:
  KeepWarm(KeepWarmOptions opts, std::unique_ptr<PortWatcher> watcher, std::function<Result<double>()> send,
           KeepWarmEvents ev);
  ~KeepWarm();
  KeepWarm(const KeepWarm&) = delete;
  KeepWarm& operator=(const KeepWarm&) = delete;
  void Start();
  void Stop();
  uint64_t sent() const { return sent_.load(); }
  uint64_t failed() const { return failed_.load(); }
  double last_latency_s() const { return last_latency_s_.load(); }  // < 0: none yet
  double idle_s() const;  // since the last activity seen (a keep-warm counts)

 private:
  void Run();

  KeepWarmOptions opts_;
  std::unique_ptr<PortWatcher> watcher_;
  std::function<Result<double>()> send_;
  KeepWarmEvents ev_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<uint64_t> sent_{0}, failed_{0};
  std::atomic<double> last_latency_s_{-1};
  std::atomic<int64_t> last_activity_ns_{0};  // steady_clock
};

// `send` for KeepWarm: each call in turn on host:port; fails on a transport
// error or a non-2xx answer. Latency: the whole sequence.
Result<double> SendKeepWarm(const std::string& host, int port, const std::vector<HttpCall>& calls,
                            std::chrono::milliseconds timeout);

}  // namespace hotboot
