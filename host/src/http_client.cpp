#include "hotboot/http_client.h"

#include <thread>
#include <utility>  // before Boost 1.74 asio: it uses std::exchange
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace hotboot {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

Result<HttpResponse> HttpRequest(const std::string& host, int port, const std::string& method,
                                 const std::string& target, const std::string& body,
                                 std::chrono::milliseconds timeout, const HttpHeaders& headers) {
  const auto start = std::chrono::steady_clock::now();
  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  boost::system::error_code addr_ec;
  auto addr = asio::ip::make_address(host, addr_ec);
  if (addr_ec) return InvalidArgument("bad host address '" + host + "': " + addr_ec.message());
  tcp::endpoint ep(addr, static_cast<unsigned short>(port));

  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, host + ":" + std::to_string(port));
  req.set(http::field::user_agent, "hotboot/" HOTBOOT_VERSION);
  req.set(http::field::connection, "close");
  for (const auto& [name, value] : headers) req.set(name, value);
  if (!body.empty()) {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64u << 20);
  boost::system::error_code result_ec;
  const char* stage = "connect";

  stream.expires_after(timeout);
  stream.async_connect(ep, [&](boost::system::error_code ec) {
    if (ec) { result_ec = ec; return; }
    stage = "send";
    http::async_write(stream, req, [&](boost::system::error_code ec, size_t) {
      if (ec) { result_ec = ec; return; }
      stage = "read";
      http::async_read(stream, buffer, parser, [&](boost::system::error_code ec, size_t) {
        result_ec = ec;
      });
    });
  });
  ioc.run();
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);

  const std::string where = method + " http://" + host + ":" + std::to_string(port) + target;
  if (result_ec == beast::error::timeout) {
    return Timeout(where + ": no answer within " + std::to_string(timeout.count()) + " ms (" +
                   stage + ")");
  }
  if (result_ec) return IoError(where + ": " + stage + ": " + result_ec.message());
  HttpResponse out;
  out.status = static_cast<int>(parser.get().result_int());
  out.body = std::move(parser.get().body());
  out.elapsed_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return out;
}

Result<HttpCall> HttpCall::FromJson(const nlohmann::json& j) {
  HttpCall c;
  if (!j.is_object()) return InvalidArgument("an HTTP call must be an object {\"method\", \"path\", \"body\"}");
  try {
    c.method = j.value("method", "GET");
    c.path = j.at("path").get<std::string>();
    if (j.contains("body")) c.body = j["body"].is_string() ? j["body"].get<std::string>() : j["body"].dump();
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("HTTP call: ") + e.what());
  }
  if (c.path.empty() || c.path[0] != '/') return InvalidArgument("HTTP call path '" + c.path + "' must start with /");
  if (http::string_to_verb(c.method) == http::verb::unknown) {
    return InvalidArgument("HTTP call method '" + c.method + "' is not an HTTP method");
  }
  return c;
}

nlohmann::json HttpCall::ToJson() const { return {{"method", method}, {"path", path}, {"body", body}}; }

Result<HttpResponse> Send(const std::string& host, int port, const HttpCall& call,
                          std::chrono::milliseconds timeout, const HttpHeaders& headers) {
  return HttpRequest(host, port, call.method, call.path, call.body, timeout, headers);
}

Status WaitHttpReady(const std::string& host, int port, const std::string& path,
                     std::chrono::milliseconds timeout, const std::function<std::string()>& gone) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last = "no answer yet";
  for (;;) {
    auto r = HttpRequest(host, port, "GET", path, "", std::chrono::seconds(5));
    if (r.ok() && r->status == 200) return Status();
    last = r.ok() ? "HTTP " + std::to_string(r->status) : r.status().message();
    if (std::string why = gone ? gone() : ""; !why.empty()) {
      return FailedPrecondition("the server stopped before GET " + path + " answered 200: " + why);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Timeout("GET " + path + " on port " + std::to_string(port) + " did not answer 200 within " +
                     std::to_string(timeout.count() / 1000) + " s (last: " + last + ")");
    }
    // Polling, not a stand-in for work: the server's own boot is the wait.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Result<nlohmann::json> CanaryValue(const std::string& body, const std::string& pointer) {
  if (pointer.empty()) return nlohmann::json(body);
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) return FailedPrecondition("the canary answer is not JSON: " + body.substr(0, 200));
  try {
    nlohmann::json::json_pointer ptr(pointer);
    if (!j.contains(ptr)) {
      return FailedPrecondition("the canary answer has no " + pointer + ": " + body.substr(0, 200));
    }
    return j.at(ptr);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument("canary compare pointer '" + pointer + "': " + e.what());
  }
}

}  // namespace hotboot
