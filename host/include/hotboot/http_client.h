// A small blocking HTTP/1.1 client (Boost.Beast) with a deadline, for the
// builder's and restorer's probes and canary requests.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/status.h"

namespace hotboot {

struct HttpResponse {
  int status = 0;
  std::string body;
  double elapsed_ms = 0;
};

// Extra request headers, name and value, sent as given (callers pass only
// values they made: no CR or LF).
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// Connects to host:port, sends one request, reads the whole response, closes.
// A transport failure or the deadline is an error; any HTTP status is a value.
Result<HttpResponse> HttpRequest(const std::string& host, int port, const std::string& method,
                                 const std::string& target, const std::string& body,
                                 std::chrono::milliseconds timeout, const HttpHeaders& headers = {});

// One request a build spec names for a server hotboot knows only by its
// HTTP API (transparent mode): readiness probe, warmup, canary, hooks.
struct HttpCall {
  std::string method = "GET";
  std::string path = "/";
  std::string body;  // sent as is (a JSON body in the spec is serialized)
  // {"method": "POST", "path": "/generate", "body": {...} or "..."}
  static Result<HttpCall> FromJson(const nlohmann::json& j);
  nlohmann::json ToJson() const;
};
Result<HttpResponse> Send(const std::string& host, int port, const HttpCall& call,
                          std::chrono::milliseconds timeout, const HttpHeaders& headers = {});

// Polls GET `path` until it answers 200. `gone` is asked between tries and
// returns why to stop waiting (the server exited), or "" to go on.
Status WaitHttpReady(const std::string& host, int port, const std::string& path,
                     std::chrono::milliseconds timeout, const std::function<std::string()>& gone);

// What of a canary's answer must repeat exactly: the JSON value at
// `pointer` (RFC 6901, e.g. "/tokens") of the body, or the whole body as a
// string when `pointer` is empty. A body without it is an error.
Result<nlohmann::json> CanaryValue(const std::string& body, const std::string& pointer);

}  // namespace hotboot
