// libcurl plumbing (http_internal.h) and HttpFile: a file on a plain HTTP(S)
// server read by Range.
#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "http_internal.h"

namespace hotboot::fetch {
namespace internal {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r' || s[e - 1] == '\n')) --e;
  return std::string(s.substr(b, e - b));
}

// Per-transfer state the callbacks share.
struct Transfer {
  CURL* easy = nullptr;
  const HttpRequest* req = nullptr;
  HttpResponse* resp = nullptr;
  // body source position
  uint64_t sent = 0;
  // response routing, decided on the first body byte
  bool decided = false;
  bool to_sink = false;
  uint64_t skip = 0;       // bytes still to drop (a 200 to a ranged GET)
  uint64_t remaining = 0;  // bytes the sink may still get (ranged)
  bool finished_early = false;  // we stopped a 200 once the range was delivered
  bool too_large = false;
  Status sink_status;
  Status range_status;
};

size_t HeaderCb(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  std::string_view line(data, len);
  if (line.rfind("HTTP/", 0) == 0) {
    t->resp->headers.clear();  // a new response (after a redirect or 100-continue)
    return len;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return len;
  t->resp->headers[Lower(std::string(line.substr(0, colon)))] = Trim(line.substr(colon + 1));
  return len;
}

size_t WriteCb(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  const HttpRequest& req = *t->req;
  if (!t->decided) {
    t->decided = true;
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    t->to_sink = req.sink != nullptr && code >= 200 && code < 300;
    if (t->to_sink && req.ranged) {
      t->remaining = req.range_length;
      if (code == 206) {
        uint64_t first = 0, last = 0;
        int64_t total = 0;
        std::string cr = t->resp->header("content-range");
        if (!ParseContentRange(cr, &first, &last, &total) || first != req.range_offset ||
            last < first) {
          t->range_status = IoError("GET " + req.url + ": asked for bytes from " +
                                    std::to_string(req.range_offset) + ", the server sent Content-Range '" +
                                    cr + "'");
          return CURL_WRITEFUNC_ERROR;
        }
      } else {
        t->skip = req.range_offset;
      }
    }
  }
  if (!t->to_sink) {
    size_t cap = req.sink != nullptr ? 64 * 1024 : req.max_body;
    if (t->resp->body.size() + len > cap) {
      if (req.sink != nullptr) {  // an error body: keep its start
        t->resp->body.append(data, cap - t->resp->body.size());
        return len;
      }
      t->too_large = true;
      return CURL_WRITEFUNC_ERROR;
    }
    t->resp->body.append(data, len);
    return len;
  }
  const char* p = data;
  size_t left = len;
  if (t->skip > 0) {
    size_t s = static_cast<size_t>(std::min<uint64_t>(t->skip, left));
    t->skip -= s;
    p += s;
    left -= s;
  }
  if (req.ranged) {
    if (left > t->remaining) left = static_cast<size_t>(t->remaining);
  }
  if (left > 0) {
    Status st = (*req.sink)(p, left);
    if (!st.ok()) {
      t->sink_status = st;
      return CURL_WRITEFUNC_ERROR;
    }
    t->resp->sink_bytes += left;
    if (req.ranged) t->remaining -= left;
  }
  if (req.ranged && t->remaining == 0 && t->skip == 0 && (p + left) != data + len) {
    // A whole-resource answer went past the range: stop here.
    t->finished_early = true;
    return CURL_WRITEFUNC_ERROR;
  }
  if (req.ranged && t->remaining == 0 && t->skip == 0) {
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code == 200) {
      t->finished_early = true;
      return CURL_WRITEFUNC_ERROR;
    }
  }
  return len;
}

size_t ReadCb(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const Body& b = t->req->body;
  size_t want = static_cast<size_t>(std::min<uint64_t>(size * n, b.length - t->sent));
  if (want == 0) return 0;
  if (b.fd >= 0) {
    ssize_t r;
    do {
      r = pread(b.fd, buf, want, static_cast<off_t>(b.fd_offset + t->sent));
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return CURL_READFUNC_ABORT;
    want = static_cast<size_t>(r);
  } else {
    std::memcpy(buf, b.bytes.data() + t->sent, want);
  }
  t->sent += want;
  if (t->req->sent != nullptr && *t->req->sent) (*t->req->sent)(t->sent);
  return want;
}

int SeekCb(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > t->req->body.length) {
    return CURL_SEEKFUNC_FAIL;
  }
  t->sent = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

}  // namespace

struct HttpClient::Share {
  CURLSH* sh = nullptr;
  std::array<std::mutex, CURL_LOCK_DATA_LAST> locks;
  static void Lock(CURL*, curl_lock_data d, curl_lock_access, void* user) {
    static_cast<Share*>(user)->locks[d].lock();
  }
  static void Unlock(CURL*, curl_lock_data d, void* user) { static_cast<Share*>(user)->locks[d].unlock(); }
};

HttpClient::HttpClient(const RemoteOptions& opts) : opts_(opts), share_(std::make_unique<Share>()) {
  GlobalInit();
  share_->sh = curl_share_init();
  if (share_->sh != nullptr) {
    curl_share_setopt(share_->sh, CURLSHOPT_LOCKFUNC, &Share::Lock);
    curl_share_setopt(share_->sh, CURLSHOPT_UNLOCKFUNC, &Share::Unlock);
    curl_share_setopt(share_->sh, CURLSHOPT_USERDATA, share_.get());
    curl_share_setopt(share_->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(share_->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share_->sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  }
}

HttpClient::~HttpClient() {
  if (share_ && share_->sh != nullptr) curl_share_cleanup(share_->sh);
}

Result<HttpResponse> HttpClient::Perform(const HttpRequest& req) const {
  HttpResponse resp;
  std::unique_ptr<CURL, void (*)(CURL*)> easy(curl_easy_init(), curl_easy_cleanup);
  if (!easy) return Internal("curl_easy_init failed");
  CURL* e = easy.get();
  Transfer t;
  t.easy = e;
  t.req = &req;
  t.resp = &resp;
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(e, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  // HTTP/1.1: parallel range fetches each get their own TCP connection (no
  // shared HTTP/2 flow-control window).
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, opts_.connect_timeout_s);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, opts_.low_speed_time_s);
  curl_easy_setopt(e, CURLOPT_USERAGENT, opts_.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
  if (share_->sh != nullptr) curl_easy_setopt(e, CURLOPT_SHARE, share_->sh);
  if (!opts_.tls.ca_cert.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, opts_.tls.ca_cert.c_str());
  if (!opts_.tls.verify) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (req.follow_redirects) {
    // libcurl sends a custom Authorization header only to the first host.
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  }
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &HeaderCb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &WriteCb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);

  curl_slist* headers = nullptr;
  for (const auto& h : req.headers) headers = curl_slist_append(headers, h.c_str());
  std::string range;
  if (req.ranged) {
    range = std::to_string(req.range_offset) + "-" + std::to_string(req.range_offset + req.range_length - 1);
    curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());
  }
  if (req.method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (req.method == "GET") {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else if (req.method == "POST" && !req.body.present) {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(0));
  } else if (req.method == "DELETE") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
  } else {  // PUT, PATCH, POST with a body: an upload of body.length bytes
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.length));
    curl_easy_setopt(e, CURLOPT_READFUNCTION, &ReadCb);
    curl_easy_setopt(e, CURLOPT_READDATA, &t);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, &SeekCb);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, &t);
    if (req.method != "PUT") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
  CURLcode rc = curl_easy_perform(e);
  curl_slist_free_all(headers);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp.code);

  if (!t.sink_status.ok()) return t.sink_status;
  if (!t.range_status.ok()) return t.range_status;
  if (rc == CURLE_WRITE_ERROR && t.finished_early) rc = CURLE_OK;
  if (t.too_large) {
    return Corrupt(req.method + " " + req.url + ": the answer is larger than " +
                   std::to_string(req.max_body) + " bytes (the most this client reads for it)");
  }
  if (rc != CURLE_OK) {
    std::string why = errbuf[0] != 0 ? std::string(errbuf) : std::string(curl_easy_strerror(rc));
    std::string msg = req.method + " " + req.url + ": " + why + " (curl error " + std::to_string(rc) + ")";
    if (req.sink != nullptr) msg += " after " + std::to_string(resp.sink_bytes) + " bytes";
    if (!req.ranged || req.range_length == 0) {
    } else {
      msg += " of " + std::to_string(req.range_length) + " asked from byte " + std::to_string(req.range_offset);
    }
    return IoError(msg);
  }
  return resp;
}

std::string UrlEscape(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string BodySnippet(const std::string& body, size_t n) {
  std::string out;
  for (char c : body.substr(0, n)) {
    unsigned char u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : ' ';
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (body.size() > n) out += "...";
  return out;
}

bool IsSha256Digest(std::string_view d) {
  if (d.size() != 71 || d.substr(0, 7) != "sha256:") return false;
  for (char c : d.substr(7)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// A decimal of at most 19 digits (no sign, no spaces): fits in 64 bits.
bool ParseDecimal(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t x = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    x = x * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = x;
  return true;
}

bool ParseContentRange(std::string_view v, uint64_t* first, uint64_t* last, int64_t* total) {
  const auto num = ParseDecimal;
  if (v.substr(0, 6) != "bytes ") return false;
  v.remove_prefix(6);
  size_t dash = v.find('-'), slash = v.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) return false;
  if (!num(v.substr(0, dash), first) || !num(v.substr(dash + 1, slash - dash - 1), last)) return false;
  std::string_view tot = v.substr(slash + 1);
  if (tot == "*") {
    *total = -1;
    return true;
  }
  uint64_t t = 0;
  if (!num(tot, &t)) return false;
  *total = static_cast<int64_t>(t);
  return true;
}

}  // namespace internal

// ---------------------------------------------------------------- HttpFile

namespace {

using internal::HttpClient;
using internal::HttpRequest;
using internal::HttpResponse;

Status HttpCodeError(const std::string& what, const HttpResponse& r) {
  std::string msg = what + ": HTTP " + std::to_string(r.code);
  std::string snip = internal::BodySnippet(r.body);
  if (!snip.empty()) msg += ": " + snip;
  if (r.code == 404 || r.code == 410) return NotFound(msg);
  if (r.code == 401 || r.code == 403) return FailedPrecondition(msg + " (the server wants credentials this client does not send for plain URLs)");
  return IoError(msg);
}

class HttpFileImpl final : public HttpFile {
 public:
  HttpFileImpl(std::string url, const RemoteOptions& opts) : url_(std::move(url)), http_(opts) {}
  uint64_t size() const override { return size_; }
  const std::string& url() const override { return url_; }

  Status Probe() {
    HttpRequest head;
    head.method = "HEAD";
    head.url = url_;
    head.follow_redirects = true;
    HB_ASSIGN_OR_RETURN(HttpResponse r, http_.Perform(head));
    if (r.code == 200) {
      std::string len = r.header("content-length");
      std::string ar = internal::Trim(r.header("accept-ranges"));
      uint64_t n = 0;
      if (!len.empty() && ParseLength(len, &n) && ar == "bytes") {
        size_ = n;
        return Status::Ok();
      }
    } else if (r.code != 405 && r.code != 501 && r.code != 403) {
      return HttpCodeError("HEAD " + url_, r);
    }
    // HEAD said nothing useful: a one-byte ranged GET.
    HttpRequest get;
    get.url = url_;
    get.follow_redirects = true;
    get.ranged = true;
    get.range_offset = 0;
    get.range_length = 1;
    Sink discard = [](const char*, size_t) { return Status::Ok(); };
    get.sink = &discard;
    HB_ASSIGN_OR_RETURN(HttpResponse g, http_.Perform(get));
    if (g.code == 206) {
      uint64_t first = 0, last = 0;
      int64_t total = 0;
      if (internal::ParseContentRange(g.header("content-range"), &first, &last, &total) && total >= 0) {
        size_ = static_cast<uint64_t>(total);
        return Status::Ok();
      }
      return Unsupported("GET " + url_ + " with Range: the server answered 206 without a total size (Content-Range '" +
                         g.header("content-range") + "')");
    }
    if (g.code == 200) {
      return Unsupported("the server of " + url_ +
                         " does not answer Range requests (HTTP 200 to Range: bytes=0-0, no Accept-Ranges: bytes); "
                         "serve the file from one that does (nginx, S3, any CDN) or download it first");
    }
    if (g.code == 416) {  // an empty file
      uint64_t first = 0, last = 0;
      int64_t total = 0;
      if (internal::ParseContentRange(g.header("content-range"), &first, &last, &total) && total == 0) {
        size_ = 0;
        return Status::Ok();
      }
    }
    return HttpCodeError("GET " + url_, g);
  }

  Result<uint64_t> Get(uint64_t offset, uint64_t length, const Sink& sink) override {
    if (length == 0) return uint64_t{0};
    if (offset > size_ || length > size_ - offset) {
      return InvalidArgument("bytes [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                             ") are past the end of " + url_ + " (" + std::to_string(size_) + " bytes)");
    }
    HttpRequest get;
    get.url = url_;
    get.follow_redirects = true;
    get.ranged = true;
    get.range_offset = offset;
    get.range_length = length;
    get.sink = &sink;
    HB_ASSIGN_OR_RETURN(HttpResponse r, http_.Perform(get));
    if (r.code != 200 && r.code != 206) return HttpCodeError("GET " + url_, r);
    if (r.sink_bytes != length) {
      return IoError("GET " + url_ + ": the connection ended after " + std::to_string(r.sink_bytes) + " of " +
                     std::to_string(length) + " bytes asked from byte " + std::to_string(offset));
    }
    return r.sink_bytes;
  }

 private:
  static bool ParseLength(const std::string& s, uint64_t* out) { return internal::ParseDecimal(s, out); }
  std::string url_;
  HttpClient http_;
  uint64_t size_ = 0;
};

}  // namespace

Result<std::unique_ptr<HttpFile>> HttpFile::Open(const std::string& url, const RemoteOptions& opts) {
  if (!IsHttpUrl(url)) return InvalidArgument("'" + url + "' is not an http:// or https:// URL");
  auto f = std::make_unique<HttpFileImpl>(url, opts);
  HB_RETURN_IF_ERROR(f->Probe());
  return std::unique_ptr<HttpFile>(std::move(f));
}

}  // namespace hotboot::fetch
