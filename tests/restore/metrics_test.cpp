// The restore's Prometheus text, its textfile and its /metrics listener;
// keep-warm's loop (with a fake port watcher) and its real sock_diag watcher
// on loopback sockets.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "hotboot/http_client.h"
#include "hotboot/keep_warm.h"
#include "hotboot/metrics.h"

namespace hotboot {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

RestoreMetrics Sample() {
  RestoreMetrics m;
  m.outcome = "ready";
  m.start_time_unix_s = 1764662400.25;
  m.time_to_ready_s = 0.39;
  m.phase_s = {{"startup", 0.01}, {"unpack", 0.2}, {"criu_restore", 0.1}};
  m.snapshot = "oci://127.0.0.1:5000/m:v1";
  m.digest = "sha256:abc";
  m.capture_mode = "transparent";
  m.source = "oci";
  m.replica_mode = "restored";
  m.fetched = true;
  m.fetch_network_bytes = 1000;
  m.fetch_cache_bytes = 20;
  m.fetch_skipped_bytes = 3;
  m.replica_up = true;
  m.port = 8000;
  m.keep_warm_interval_s = 30;
  m.keep_warm_requests = 4;
  m.keep_warm_last_latency_s = 0.012;
  return m;
}

// Every line is a comment (# HELP/# TYPE) or `name{labels} value`, every
// family has HELP and TYPE before its samples.
void ExpectWellFormed(const std::string& text) {
  static const std::regex sample(R"re(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf))re");
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)");
  static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter|untyped|summary|histogram))");
  std::set<std::string> helped, typed;
  std::istringstream in(text);
  std::string line;
  ASSERT_FALSE(text.empty());
  ASSERT_EQ(text.back(), '\n');
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      helped.insert(m[1]);
    } else if (std::regex_match(line, m, type)) {
      typed.insert(m[1]);
    } else {
      ASSERT_TRUE(std::regex_match(line, m, sample)) << "not a sample line: " << line;
      EXPECT_TRUE(helped.count(m[1]) && typed.count(m[1])) << "no HELP/TYPE before " << line;
    }
  }
}

TEST(Metrics, RendersEveryFamilyWithHelpAndType) {
  const std::string t = RenderPrometheus(Sample());
  ExpectWellFormed(t);
  EXPECT_NE(t.find("hotboot_restore_outcome{outcome=\"ready\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_restore_outcome{outcome=\"corrupt\"} 0\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_restore_time_to_ready_seconds 0.39\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_restore_phase_seconds{phase=\"unpack\"} 0.2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_restore_fetch_bytes{from=\"network\"} 1000\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_restore_start_time_seconds 1764662400.25\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_replica_keep_warm_requests_total 4\n"), std::string::npos) << t;
  EXPECT_NE(t.find("# TYPE hotboot_replica_keep_warm_requests_total counter\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_replica_up{port=\"8000\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("capture_mode=\"transparent\""), std::string::npos) << t;
}

TEST(Metrics, AFailedRestoreHasNoTimeToReadyAndItsOutcome) {
  RestoreMetrics m;
  m.outcome = OutcomeFor(Code::kCorrupt, "chunk 3 of criu/pages: checksum mismatch");
  m.phase_s = {{"open", 0.001}};
  const std::string t = RenderPrometheus(m);
  ExpectWellFormed(t);
  EXPECT_NE(t.find("hotboot_restore_outcome{outcome=\"corrupt\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("hotboot_restore_outcome{outcome=\"ready\"} 0\n"), std::string::npos) << t;
  EXPECT_EQ(t.find("time_to_ready"), std::string::npos) << t;
  EXPECT_EQ(t.find("hotboot_restore_fetch_bytes"), std::string::npos) << t;
  EXPECT_EQ(OutcomeFor(Code::kFailedPrecondition, "readiness verification failed: canary"), "not_ready");
  EXPECT_EQ(OutcomeFor(Code::kTimeout, "x"), "timeout");
  EXPECT_EQ(OutcomeFor(Code::kUntrusted, "x"), "untrusted");
  EXPECT_EQ(OutcomeFor(Code::kIncompatible, "x"), "incompatible");
  EXPECT_EQ(OutcomeFor(Code::kIo, "x"), "failed");
}

TEST(Metrics, LabelValuesAreEscaped) {
  EXPECT_EQ(EscapeLabelValue(R"(a\b"c)" "\nd"), R"(a\\b\"c\nd)");
  RestoreMetrics m = Sample();
  m.snapshot = "/snaps/we\"ird\\name\n.hbsnap";
  const std::string t = RenderPrometheus(m);
  ExpectWellFormed(t);
  EXPECT_NE(t.find(R"(snapshot="/snaps/we\"ird\\name\n.hbsnap")"), std::string::npos) << t;
}

TEST(Metrics, TextfileIsReplacedAtomically) {
  const fs::path dir = fs::temp_directory_path() / ("hb-metrics-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "hotboot.prom").string();
  ASSERT_TRUE(WriteMetricsTextfile(path, "a 1\n").ok());
  ASSERT_TRUE(WriteMetricsTextfile(path, "a 2\n").ok());
  std::ifstream in(path);
  std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(body, "a 2\n");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);  // no temporary left
  Status bad = WriteMetricsTextfile((dir / "no-such-dir" / "x.prom").string(), "a 1\n");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("no-such-dir"), std::string::npos) << bad.message();
  fs::remove_all(dir);
}

TEST(Metrics, ServerAnswersMetricsAndStops) {
  std::atomic<int> renders{0};
  auto srv = MetricsServer::Start("127.0.0.1", 0, [&] {
    ++renders;
    return RenderPrometheus(Sample());
  });
  ASSERT_TRUE(srv.ok()) << srv.status().ToString();
  const int port = (*srv)->port();
  ASSERT_GT(port, 0);
  auto r = HttpRequest("127.0.0.1", port, "GET", "/metrics", "", std::chrono::seconds(5));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("hotboot_restore_outcome{outcome=\"ready\"} 1"), std::string::npos);
  auto nf = HttpRequest("127.0.0.1", port, "GET", "/other", "", std::chrono::seconds(5));
  ASSERT_TRUE(nf.ok());
  EXPECT_EQ(nf->status, 404);
  auto post = HttpRequest("127.0.0.1", port, "POST", "/metrics", "x", std::chrono::seconds(5));
  ASSERT_TRUE(post.ok());
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(renders.load(), 1);
  // The port is taken while it runs, and free once it is gone.
  auto twice = MetricsServer::Start("127.0.0.1", port, [] { return std::string(); });
  EXPECT_FALSE(twice.ok());
  srv->reset();
  auto again = HttpRequest("127.0.0.1", port, "GET", "/metrics", "", std::chrono::seconds(2));
  EXPECT_FALSE(again.ok());
  EXPECT_FALSE(MetricsServer::Start("not-an-ip", 0, [] { return std::string(); }).ok());
}

// A watcher that answers a script of looks, then idle ones.
class FakeWatcher : public PortWatcher {
 public:
  explicit FakeWatcher(std::shared_ptr<std::deque<PortActivity>> script) : script_(std::move(script)) {}
  Result<PortActivity> Look() override {
    std::lock_guard lk(mu);
    if (script_->empty()) return PortActivity{};
    PortActivity a = script_->front();
    script_->pop_front();
    return a;
  }
  static inline std::mutex mu;

 private:
  std::shared_ptr<std::deque<PortActivity>> script_;
};

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    if (cond()) return true;
    ::usleep(5000);
  }
  return cond();
}

TEST(KeepWarm, SendsOnlyAfterTheIntervalIdleAndNeverWhileARequestIsInFlight) {
  auto script = std::make_shared<std::deque<PortActivity>>();
  PortActivity busy;
  busy.in_flight = true;
  busy.connections = 1;
  busy.since_data_s = 0;
  // 40 looks of 10 ms with a request in flight (400 ms, over the 100 ms
  // interval): nothing may be sent during them.
  for (int i = 0; i < 40; ++i) script->push_back(busy);
  std::atomic<int> sends{0};
  std::atomic<int> sends_while_busy{0};
  KeepWarm kw({.interval = std::chrono::milliseconds(100), .poll = std::chrono::milliseconds(10)},
              std::make_unique<FakeWatcher>(script),
              [&]() -> Result<double> {
                std::lock_guard lk(FakeWatcher::mu);
                if (!script->empty()) ++sends_while_busy;
                ++sends;
                return 0.005;
              },
              {});
  const auto t0 = Clock::now();
  kw.Start();
  ASSERT_TRUE(WaitFor([&] { return sends.load() >= 2; }, std::chrono::seconds(5)));
  kw.Stop();
  EXPECT_EQ(sends_while_busy.load(), 0);
  // The first one came an interval after the busy looks ended, not before.
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(400 + 100));
  EXPECT_EQ(kw.sent(), static_cast<uint64_t>(sends.load()));
  EXPECT_DOUBLE_EQ(kw.last_latency_s(), 0.005);
}

TEST(KeepWarm, FailuresAreCountedAndAnUnobservablePortSendsNothing) {
  class Broken : public PortWatcher {
   public:
    Result<PortActivity> Look() override { return Status(Code::kIo, "sock_diag: permission denied"); }
  };
  std::atomic<int> errors{0}, sends{0};
  {
    KeepWarm kw({.interval = std::chrono::milliseconds(20), .poll = std::chrono::milliseconds(5)},
                std::make_unique<Broken>(), [&]() -> Result<double> { ++sends; return 0.0; },
                KeepWarmEvents{.on_sent = nullptr, .on_watch_error = [&](const Status&) { ++errors; }});
    kw.Start();
    ASSERT_TRUE(WaitFor([&] { return errors.load() >= 1; }, std::chrono::seconds(5)));
    ::usleep(100 * 1000);  // 5 intervals: still nothing may be sent
  }
  EXPECT_EQ(sends.load(), 0);
  EXPECT_EQ(errors.load(), 1);  // said once

  auto script = std::make_shared<std::deque<PortActivity>>();
  KeepWarm kw({.interval = std::chrono::milliseconds(20), .poll = std::chrono::milliseconds(5)},
              std::make_unique<FakeWatcher>(script),
              []() -> Result<double> { return Status(Code::kIo, "connection refused"); }, {});
  kw.Start();
  ASSERT_TRUE(WaitFor([&] { return kw.failed() >= 1; }, std::chrono::seconds(5)));
  EXPECT_EQ(kw.sent(), 0u);
}

// The real watcher on loopback: a listener, a client that sends a request
// (in flight until answered), then the answer.
TEST(KeepWarm, SockDiagSeesConnectionsAndRequestsInFlight) {
  int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(ls, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(ls, 4), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const int port = ntohs(a.sin_port);

  auto w = WatchTcpPort(::getpid(), port);
  if (!w.ok() && w.status().message().find("ermission") != std::string::npos) GTEST_SKIP() << w.status().ToString();
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto idle = (*w)->Look();
  ASSERT_TRUE(idle.ok());
  EXPECT_EQ(idle->connections, 0);
  EXPECT_FALSE(idle->in_flight);

  int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  int s = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(s, 0);
  ASSERT_EQ(::write(c, "GET / HTTP/1.1\r\n\r\n", 18), 18);
  // The kernel delivers loopback bytes synchronously; poll briefly anyway.
  Result<PortActivity> busy = Status(Code::kInternal, "not looked");
  ASSERT_TRUE(WaitFor([&] {
    busy = (*w)->Look();
    return busy.ok() && busy->in_flight;
  }, std::chrono::seconds(2)));
  EXPECT_EQ(busy->connections, 1);
  EXPECT_GE(busy->since_data_s, 0);

  char buf[64];
  ASSERT_EQ(::read(s, buf, sizeof buf), 18);
  ::usleep(2000);  // tcp_info's times are in ms: the answer must come a tick later
  ASSERT_EQ(::write(s, "HTTP/1.1 200 OK\r\n\r\n", 19), 19);
  Result<PortActivity> answered = Status(Code::kInternal, "not looked");
  ASSERT_TRUE(WaitFor([&] {
    answered = (*w)->Look();
    return answered.ok() && !answered->in_flight;
  }, std::chrono::seconds(2)));
  EXPECT_EQ(answered->connections, 1);
  EXPECT_FALSE(answered->new_connections);  // seen at the look before

  ::close(s);  // the server closes first: its side stays in TIME_WAIT
  ::close(c);
  (void)(*w)->Look();
  // A whole connection between two looks, server closing first: seen by its TIME_WAIT.
  {
    int c1 = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(::connect(c1, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    int s1 = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(s1, 0);
    ::close(s1);
    ASSERT_EQ(::read(c1, buf, sizeof buf), 0);
    ::close(c1);
    auto tw = (*w)->Look();
    ASSERT_TRUE(tw.ok());
    EXPECT_TRUE(tw->new_connections) << tw->connections;
    EXPECT_FALSE(tw->in_flight);
  }
  int c2 = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::connect(c2, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  auto fresh = (*w)->Look();
  ASSERT_TRUE(fresh.ok());
  EXPECT_TRUE(fresh->new_connections);
  ::close(c2);
  ::close(ls);
}

}  // namespace
}  // namespace hotboot
