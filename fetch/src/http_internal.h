// libcurl plumbing shared by the registry client and HttpFile: one easy
// handle per request, connections, DNS and TLS sessions shared through a
// CURLSH. Not a public header.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hotboot/oci.h"
#include "hotboot/status.h"

namespace hotboot::fetch::internal {

// Where a request body comes from: nothing, bytes in memory, or a range of
// a file read with pread (never buffered whole).
struct Body {
  bool present = false;
  std::string_view bytes;  // when fd < 0
  int fd = -1;
  uint64_t fd_offset = 0;
  uint64_t length = 0;
};

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, POST, PUT, PATCH, DELETE
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  Body body;
  bool follow_redirects = false;
  // A ranged GET: sends Range: bytes=off-(off+len-1); a 206 must start at
  // off; a 200 (the whole resource) is skipped up to off and cut at len.
  bool ranged = false;
  uint64_t range_offset = 0, range_length = 0;
  // 2xx bodies go to the sink when set (bounded by the range), else into
  // HttpResponse::body up to max_body (more is kCorrupt "too large").
  const Sink* sink = nullptr;
  size_t max_body = 4u << 20;
  const SentFn* sent = nullptr;
};

struct HttpResponse {
  long code = 0;
  std::map<std::string, std::string> headers;  // lowercase names, of the final response
  std::string body;                            // non-2xx bodies (capped) or 2xx without sink
  uint64_t sink_bytes = 0;                     // what reached the sink
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

class HttpClient {
 public:
  explicit HttpClient(const RemoteOptions& opts);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;
  // Any HTTP answer is a response; a failed transfer (connect, TLS, dropped
  // connection, a slow one cut off) is kIo naming the URL, curl's words and
  // the bytes that did arrive; a sink's error is returned as it is.
  Result<HttpResponse> Perform(const HttpRequest& req) const;
  const RemoteOptions& options() const { return opts_; }

 private:
  struct Share;
  RemoteOptions opts_;
  std::unique_ptr<Share> share_;
};

// "%XX"-escapes everything but unreserved characters (RFC 3986).
std::string UrlEscape(std::string_view s);
// The start of a body for an error message: printable, at most n bytes.
std::string BodySnippet(const std::string& body, size_t n = 300);
// True for "sha256:" + 64 lowercase hex.
bool IsSha256Digest(std::string_view d);
// Parses "bytes A-B/SIZE" (SIZE may be "*": total = -1).
bool ParseContentRange(std::string_view v, uint64_t* first, uint64_t* last, int64_t* total);

}  // namespace hotboot::fetch::internal
