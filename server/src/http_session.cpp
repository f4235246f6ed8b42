// One HTTP/1.1 connection, asio style: error_code in every handler,
// shared_from_this for lifetime, a deadline on every read and write.
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "server_impl.h"

namespace hotboot {

namespace beast = boost::beast;
namespace http = beast::http;
using json = nlohmann::json;

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(ReplicaServer::Impl* srv, tcp::socket socket) : srv_(srv), stream_(std::move(socket)) {}

  void Start() {
    {
      std::lock_guard lock(srv_->sessions_mu);
      srv_->sessions.insert(weak_from_this());
    }
    DoRead();
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

 private:
  void DoRead() {
    parser_.emplace();
    parser_->body_limit(srv_->opts.max_body_bytes);
    stream_.expires_after(std::chrono::seconds(60));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted ||
        ec == asio::error::connection_reset || ec == asio::error::bad_descriptor) {
      return Finish();
    }
    if (ec == http::error::body_limit) {
      return Reply(413, json{{"error", "request body exceeds " + std::to_string(srv_->opts.max_body_bytes) + " bytes"}}.dump(),
                   "application/json", false);
    }
    if (ec) {
      return Reply(400, json{{"error", "malformed HTTP request: " + ec.message()}}.dump(), "application/json", false);
    }
    Route(parser_->release());
  }

  void Route(http::request<http::string_body> req) {
    keep_alive_ = req.keep_alive();
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    const ReplicaState st = srv_->state();
    auto method_only = [&](http::verb v) {
      if (req.method() == v) return true;
      Reply(405, json{{"error", "method not allowed on " + path}}.dump(), "application/json", keep_alive_);
      return false;
    };
    if (path == "/livez") {
      if (method_only(http::verb::get)) Reply(200, "ok\n", "text/plain", keep_alive_);
    } else if (path == "/readyz") {
      if (!method_only(http::verb::get)) return;
      json body = {{"state", StateName(st)}, {"instance", srv_->instance}};
      Reply(st == ReplicaState::kWarm ? 200 : 503, body.dump(), "application/json", keep_alive_);
    } else if (path == "/metrics") {
      if (!method_only(http::verb::get)) return;
      std::string inst;
      {
        std::lock_guard lock(srv_->state_mu);
        inst = srv_->instance;
      }
      Reply(200, srv_->metrics.Render(StateName(st), inst, srv_->boot_kind), "text/plain; version=0.0.4", keep_alive_);
    } else if (path == "/v1/generate") {
      if (method_only(http::verb::post)) Generate(req.body());
    } else {
      Reply(404, json{{"error", "no such endpoint: " + path}}.dump(), "application/json", keep_alive_);
    }
  }

  void Generate(const std::string& body) {
    const ReplicaState st = srv_->state();
    if (st != ReplicaState::kWarm && st != ReplicaState::kVerifying) {
      return Reply(503, json{{"error", "not ready"}, {"state", StateName(st)}}.dump(), "application/json", keep_alive_);
    }
    json req = json::parse(body, nullptr, false);
    if (!req.is_object()) return BadRequest("body must be a JSON object");
    if (!req.contains("prompt") || !req["prompt"].is_string()) return BadRequest("\"prompt\" (a string) is required");
    int max_tokens = 16;
    if (req.contains("max_tokens")) {
      if (!req["max_tokens"].is_number_integer()) return BadRequest("\"max_tokens\" must be an integer");
      long long m = req["max_tokens"].get<long long>();
      if (m < 1 || m > srv_->opts.max_tokens_limit) {
        return BadRequest("\"max_tokens\" must be 1.." + std::to_string(srv_->opts.max_tokens_limit));
      }
      max_tokens = static_cast<int>(m);
    }
    const Tokenizer& tok = srv_->model->tokenizer();
    std::vector<int32_t> prompt = {tok.bos()};
    auto ids = tok.Encode(req["prompt"].get<std::string>());
    prompt.insert(prompt.end(), ids.begin(), ids.end());
    const int limit = srv_->model->config().max_seq_len;
    if (static_cast<int>(prompt.size()) + max_tokens > limit) {
      return BadRequest("prompt (" + std::to_string(prompt.size()) + " tokens) plus max_tokens exceeds the context of " +
                        std::to_string(limit) + " tokens");
    }
    srv_->NoteRealRequest();
    const auto t0 = Clock::now();
    const int n_prompt = static_cast<int>(prompt.size());
    GenJob job;
    job.prompt = std::move(prompt);
    job.max_tokens = max_tokens;
    job.done = [self = shared_from_this(), t0, n_prompt](Result<GenerateResult> r) {
      // Back to the io thread to write the answer.
      asio::post(self->srv_->ioc, [self, t0, n_prompt, r = std::move(r)]() mutable {
        self->OnGenerated(std::move(r), t0, n_prompt);
      });
    };
    if (!srv_->Submit(std::move(job))) {
      return Reply(503, json{{"error", "not taking requests"}, {"state", StateName(srv_->state())}}.dump(),
                   "application/json", false);
    }
  }

  void OnGenerated(Result<GenerateResult> r, Clock::time_point t0, int n_prompt) {
    if (!r.ok()) {
      return Reply(500, json{{"error", r.status().message()}}.dump(), "application/json", keep_alive_);
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    srv_->NoteRealRequest();
    const Tokenizer& tok = srv_->model->tokenizer();
    std::string instance, id;
    {
      std::lock_guard lock(srv_->state_mu);
      instance = srv_->instance;
    }
    id = srv_->NewRequestId();
    json out = {{"id", id},
                {"text", tok.Decode(r->tokens)},
                {"tokens", r->tokens},
                {"prompt_tokens", n_prompt},
                {"completion_tokens", r->tokens.size()},
                {"latency_ms", ms},
                {"instance", instance}};
    {
      std::lock_guard lock(srv_->metrics.mu);
      srv_->metrics.generate_count++;
      srv_->metrics.generate_ms_sum += ms;
      srv_->metrics.tokens_generated += r->tokens.size();
    }
    // Generated bytes may be invalid UTF-8: replace, never throw.
    Reply(200, out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json", keep_alive_);
  }

  void BadRequest(const std::string& why) {
    Reply(400, json{{"error", why}}.dump(-1, ' ', false, json::error_handler_t::replace), "application/json",
          keep_alive_);
  }

  void Reply(int status, std::string body, const char* type, bool keep_alive) {
    {
      std::lock_guard lock(srv_->metrics.mu);
      srv_->metrics.responses[status]++;
    }
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), 11);
    res->set(http::field::server, "hotboot-server/" HOTBOOT_VERSION);
    res->set(http::field::content_type, type);
    res->keep_alive(keep_alive);
    res->body() = std::move(body);
    res->prepare_payload();
    stream_.expires_after(std::chrono::seconds(60));
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
      if (ec || !res->keep_alive()) return self->Finish();
      self->DoRead();
    });
  }

  void Finish() {
    Close();
    std::lock_guard lock(srv_->sessions_mu);
    srv_->sessions.erase(weak_from_this());
  }

  ReplicaServer::Impl* srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool keep_alive_ = false;
};

void StartHttpSession(ReplicaServer::Impl* srv, tcp::socket socket) {
  std::make_shared<HttpSession>(srv, std::move(socket))->Start();
}

void ReplicaServer::Impl::CloseSessions() {
  std::vector<std::shared_ptr<HttpSession>> live;
  {
    std::lock_guard lock(sessions_mu);
    for (const auto& w : sessions) {
      if (auto s = w.lock()) live.push_back(s);
    }
    sessions.clear();
  }
  for (auto& s : live) s->Close();
}

}  // namespace hotboot
