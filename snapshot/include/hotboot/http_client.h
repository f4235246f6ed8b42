// A small blocking HTTP/1.1 client (Boost.Beast) with a deadline, for the
// builder's and restorer's probes and canary requests.
#pragma once

#include <chrono>
#include <string>

#include "hotboot/status.h"

namespace hotboot {

struct HttpResponse {
  int status = 0;
  std::string body;
  double elapsed_ms = 0;
};

// Connects to host:port, sends one request, reads the whole response, closes.
// A transport failure or the deadline is an error; any HTTP status is a value.
Result<HttpResponse> HttpRequest(const std::string& host, int port, const std::string& method,
                                 const std::string& target, const std::string& body,
                                 std::chrono::milliseconds timeout);

}  // namespace hotboot
