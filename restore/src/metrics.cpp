#include "hotboot/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "hotboot/io.h"
#include "hotboot/temp_files.h"

namespace hotboot {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string OutcomeFor(Code code, const std::string& message) {
  switch (code) {
    case Code::kOk: return "ready";
    case Code::kIncompatible: return "incompatible";
    case Code::kCorrupt:
    case Code::kTruncated:
    case Code::kUnsupported: return "corrupt";
    case Code::kUntrusted: return "untrusted";
    case Code::kTimeout: return "timeout";
    default: break;
  }
  if (message.find("readiness verification") != std::string::npos) return "not_ready";
  return "failed";
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

// Shortest text that reads back as the same double; NaN/Inf as the format spells them.
std::string Num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

class Writer {
 public:
  void Family(const char* name, const char* type, const char* help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void Sample(const char* name, double v, const std::vector<std::pair<std::string, std::string>>& labels = {}) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      for (size_t i = 0; i < labels.size(); ++i) {
        if (i) out_ += ',';
        out_ += labels[i].first + "=\"" + EscapeLabelValue(labels[i].second) + '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += Num(v);
    out_ += '\n';
  }
  // A family of one sample without labels.
  void Single(const char* name, const char* type, const char* help, double v) {
    Family(name, type, help);
    Sample(name, v);
  }
  // Likewise, left out while unknown (negative).
  void SingleIfKnown(const char* name, const char* help, double v) {
    if (v >= 0) Single(name, "gauge", help, v);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace

std::string RenderPrometheus(const RestoreMetrics& m) {
  Writer w;
  w.Family("hotboot_restore_info", "gauge",
           "The snapshot this replica was restored from (value 1): snapshot, digest, capture mode, source, mode");
  w.Sample("hotboot_restore_info", 1,
           {{"snapshot", m.snapshot},
            {"digest", m.digest},
            {"capture_mode", m.capture_mode},
            {"source", m.source},
            {"mode", m.replica_mode},
            {"instance", m.instance}});
  w.Family("hotboot_restore_outcome", "gauge",
           "1 for the restore's outcome, 0 for the others (restoring while under way)");
  for (const char* o : kRestoreOutcomes) w.Sample("hotboot_restore_outcome", m.outcome == o ? 1 : 0, {{"outcome", o}});
  w.Single("hotboot_restore_start_time_seconds", "gauge", "When the restoring process started, seconds since the epoch",
           m.start_time_unix_s);
  w.SingleIfKnown("hotboot_restore_time_to_ready_seconds",
                  "From the restoring process's start to a verified ready replica", m.time_to_ready_s);
  w.Family("hotboot_restore_phase_seconds", "gauge",
           "Seconds each phase of the restore took (*_overlapped ran beside the others)");
  for (const auto& [phase, s] : m.phase_s) w.Sample("hotboot_restore_phase_seconds", s, {{"phase", phase}});
  if (!m.current_phase.empty()) {
    w.Family("hotboot_restore_current_phase", "gauge", "The phase under way (value 1) while the restore runs");
    w.Sample("hotboot_restore_current_phase", 1, {{"phase", m.current_phase}});
  }
  if (m.fetched) {
    w.Family("hotboot_restore_fetch_bytes", "gauge",
             "Bytes of the snapshot by where they came from: network, cache (node cache), skipped (not needed)");
    w.Sample("hotboot_restore_fetch_bytes", static_cast<double>(m.fetch_network_bytes), {{"from", "network"}});
    w.Sample("hotboot_restore_fetch_bytes", static_cast<double>(m.fetch_cache_bytes), {{"from", "cache"}});
    w.Sample("hotboot_restore_fetch_bytes", static_cast<double>(m.fetch_skipped_bytes), {{"from", "skipped"}});
  }
  w.Family("hotboot_replica_up", "gauge", "1 while the supervised replica runs and passed readiness verification");
  w.Sample("hotboot_replica_up", m.replica_up ? 1 : 0, {{"port", std::to_string(m.port)}});
  w.Single("hotboot_replica_keep_warm_interval_seconds", "gauge",
           "Idle time after which the supervisor sends a keep-warm request (0: off)", m.keep_warm_interval_s);
  w.Single("hotboot_replica_keep_warm_requests_total", "counter", "Keep-warm requests sent to the idle replica",
           static_cast<double>(m.keep_warm_requests));
  w.Single("hotboot_replica_keep_warm_failures_total", "counter",
           "Keep-warm requests that failed (transport error or a non-2xx answer)",
           static_cast<double>(m.keep_warm_failures));
  w.SingleIfKnown("hotboot_replica_keep_warm_last_latency_seconds", "Latency of the last keep-warm request",
                  m.keep_warm_last_latency_s);
  w.SingleIfKnown("hotboot_replica_idle_seconds",
                  "Seconds since the replica's port last showed traffic (as keep-warm observes it)", m.idle_s);
  return w.Take();
}

Status WriteMetricsTextfile(const std::string& path, const std::string& text) {
  if (path.empty()) return InvalidArgument("metrics textfile: empty path");
  HB_ASSIGN_OR_RETURN(int fd, CreateTemporary(path, 0644));
  const std::string tmp = TempPathFor(path);
  Status st = io::WriteAll(fd, text.data(), text.size(), tmp);
  if (st.ok() && ::fchmod(fd, 0644) != 0) st = ErrnoError("chmod " + tmp, errno);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoError("fsync " + tmp, errno);
  if (::close(fd) != 0 && st.ok()) st = ErrnoError("close " + tmp, errno);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoError("rename " + tmp + " to " + path, errno);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st.Prefixed("metrics textfile " + path);
  }
  SyncParentDir(path);
  return Status::Ok();
}

// One connection: read a request (bounded, with a deadline), answer, close.
namespace {

class MetricsSession : public std::enable_shared_from_this<MetricsSession> {
 public:
  MetricsSession(tcp::socket s, const std::function<std::string()>* render)
      : stream_(std::move(s)), render_(render) {}

  void Start() {
    parser_.header_limit(8 * 1024);
    parser_.body_limit(8 * 1024);
    stream_.expires_after(std::chrono::seconds(10));
    http::async_read(stream_, buffer_, parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

 private:
  void OnRead(beast::error_code ec) {
    if (ec) return Close();
    const auto& req = parser_.get();
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(req.version());
    res->keep_alive(false);
    if (path != "/metrics") {
      res->result(http::status::not_found);
      res->set(http::field::content_type, "text/plain");
      res->body() = "only /metrics here\n";
    } else if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res->result(http::status::method_not_allowed);
      res->set(http::field::content_type, "text/plain");
      res->body() = "GET /metrics\n";
    } else {
      res->result(http::status::ok);
      res->set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res->body() = (*render_)();
    }
    res->prepare_payload();
    stream_.expires_after(std::chrono::seconds(10));
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code, size_t) { self->Close(); });
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  http::request_parser<http::string_body> parser_;
  const std::function<std::string()>* render_;
};

}  // namespace

struct MetricsServer::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::function<std::string()> render;
  std::thread thread;
  std::atomic<uint64_t> requests{0};
  int port = 0;

  void Accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) {
        requests.fetch_add(1);
        std::make_shared<MetricsSession>(std::move(s), &render)->Start();
      }
      Accept();
    });
  }
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host, int port,
                                                            std::function<std::string()> render) {
  if (port < 0 || port > 65535) return InvalidArgument("metrics port " + std::to_string(port) + " is not 0..65535");
  auto impl = std::make_unique<Impl>();
  impl->render = std::move(render);
  beast::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgument("metrics host '" + host + "' is not an IP address: " + ec.message());
  const tcp::endpoint ep(addr, static_cast<uint16_t>(port));
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return FailedPrecondition("cannot serve metrics on " + host + ":" + std::to_string(port) + ": " + ec.message() +
                              (ec == asio::error::address_in_use ? "; pick a free --metrics-port" : ""));
  }
  impl->port = impl->acceptor.local_endpoint().port();
  impl->Accept();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

MetricsServer::~MetricsServer() {
  asio::post(impl_->io, [raw = impl_.get()] {
    beast::error_code ec;
    raw->acceptor.close(ec);
    raw->io.stop();
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsServer::port() const { return impl_->port; }
uint64_t MetricsServer::requests() const { return impl_->requests.load(); }

}  // namespace hotboot
