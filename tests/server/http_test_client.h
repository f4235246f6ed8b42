// A one-request HTTP/1.1 client on 127.0.0.1 for the server tests (Beast).
#pragma once

#include <chrono>
#include <exception>
#include <string>

#include <utility>  // before Boost 1.74 asio: it uses std::exchange
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace hotboot::test {

struct Resp {
  int status = -1;  // -1: no answer
  std::string body;
  double ms = 0;  // wall time as the client saw it
};

inline Resp Http(int port, boost::beast::http::verb verb, const std::string& target, const std::string& body = "") {
  namespace asio = boost::asio;
  namespace beast = boost::beast;
  namespace http = beast::http;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    asio::io_context ioc;
    beast::tcp_stream s(ioc);
    s.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "localhost");
    req.body() = body;
    req.prepare_payload();
    http::write(s, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(s, buf, res);
    return {static_cast<int>(res.result_int()), res.body(),
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()};
  } catch (const std::exception&) {
    return {};
  }
}

}  // namespace hotboot::test
