// Keep-warm (issue 14): an idle replica sends itself warmup-shaped requests,
// counted apart from real ones, never while it is being captured, and again
// once restored. One test on the real tiny model over HTTP (the latency
// after an idle gap), one on a gated fake model through the capture cycle.
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <mutex>
#include <string>
#include <thread>

#include <utility>  // before Boost 1.74 asio: it uses std::exchange
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include "hotboot/presets.h"
#include "hotboot/replica_server.h"
#include "http_test_client.h"

namespace hotboot {
namespace {

using json = nlohmann::json;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

using test::Http;
using test::Resp;

// The value of an unlabelled sample in Prometheus text; -1 when absent.
double Metric(const std::string& text, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const size_t at = ("\n" + text).find(key);
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + key.size() - 1, nullptr);
}

double MetricNow(int port, const std::string& name) {
  return Metric(Http(port, http::verb::get, "/metrics").body, name);
}

// Polls `cond` until it holds or `limit` passes.
template <typename F>
bool PollUntil(F cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

// ---------------------------------------------------------------- real model

class KeepWarmRealModel : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hotboot-keepwarm.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    model_ = (dir_ / "tiny.safetensors").string();
    // The tiny preset cut to two layers: a real model that boots in a second.
    auto cfg = PresetConfig("tiny");
    ASSERT_TRUE(cfg.ok());
    cfg->n_layers = 2;
    ASSERT_TRUE(WriteModel(model_, *cfg, 7, nullptr).ok());
  }
  void TearDown() override {
    if (server_) server_->Stop();
    if (runner_.joinable()) runner_.join();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void Start(double interval_s) {
    ServerOptions o;
    o.model_path = model_;
    o.port = 0;
    o.max_batch = 4;
    o.keep_warm_interval_s = interval_s;
    o.loader = [](const std::string& path, LoadTimings* lt) { return Model::Load(path, LoadOptions{2, "none", "cpu"}, lt); };
    server_ = std::make_unique<ReplicaServer>(o, [](const std::string&) {});
    runner_ = std::thread([this] { server_->Run(); });
    ASSERT_TRUE(PollUntil([&] { return server_->state() == ReplicaState::kWarm; }, std::chrono::seconds(60)))
        << "state " << StateName(server_->state());
  }
  int port() { return server_->port(); }

  fs::path dir_;
  std::string model_;
  std::unique_ptr<ReplicaServer> server_;
  std::thread runner_;
};

TEST_F(KeepWarmRealModel, IdleReplicaAnswersTheFirstRequestAfterAGapAtWarmLatency) {
  constexpr double kInterval = 0.3;
  Start(kInterval);
  const int p = port();
  // Idle since it became warm: keep-warm starts within about one interval.
  EXPECT_TRUE(PollUntil([&] { return MetricNow(p, "hotboot_keep_warm_requests_total") >= 1; },
                        std::chrono::milliseconds(1500)));
  EXPECT_EQ(MetricNow(p, "hotboot_keep_warm_interval_seconds"), kInterval);
  EXPECT_GT(MetricNow(p, "hotboot_keep_warm_last_latency_seconds"), 0);

  // Warm latency: the median of a few requests of one shape.
  const std::string body = R"({"prompt":"play jazz","max_tokens":4})";
  std::vector<double> warm;
  for (int i = 0; i < 5; ++i) {
    Resp r = Http(p, http::verb::post, "/v1/generate", body);
    ASSERT_EQ(r.status, 200) << r.body;
    warm.push_back(r.ms);
  }
  std::sort(warm.begin(), warm.end());
  const double warm_ms = warm[warm.size() / 2];
  const double bound_ms = std::max(3 * warm_ms, warm_ms + 200);  // snapshot/src/builder.cpp's canary bound

  // An idle gap of several intervals, during which keep-warm goes on (the
  // counter grows while no real request comes). The request is sent just
  // after a keep-warm request finished, so it measures a replica left idle,
  // not one queued behind a synthetic request (that wait is bounded by one
  // of them by design, and is not what this test is about).
  const double before = MetricNow(p, "hotboot_keep_warm_requests_total");
  const auto gap_start = Clock::now();
  ASSERT_TRUE(PollUntil([&] { return MetricNow(p, "hotboot_keep_warm_requests_total") >= before + 3; },
                        std::chrono::seconds(10)));
  const double seen = MetricNow(p, "hotboot_keep_warm_requests_total");
  ASSERT_TRUE(PollUntil([&] { return MetricNow(p, "hotboot_keep_warm_requests_total") > seen; },
                        std::chrono::seconds(5)));
  EXPECT_GE(std::chrono::duration<double>(Clock::now() - gap_start).count(), 3 * kInterval);
  EXPECT_GE(MetricNow(p, "hotboot_seconds_since_last_request"), 3 * kInterval);
  Resp first = Http(p, http::verb::post, "/v1/generate", body);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_LE(first.ms, bound_ms) << "warm median " << warm_ms << " ms";
  EXPECT_LT(MetricNow(p, "hotboot_seconds_since_last_request"), 3 * kInterval);

  // The synthetic requests are not requests: 6 answered, 6 x 4 tokens.
  const std::string m = Http(p, http::verb::get, "/metrics").body;
  EXPECT_EQ(Metric(m, "hotboot_generate_seconds_count"), 6) << m;
  EXPECT_EQ(Metric(m, "hotboot_tokens_generated_total"), 24) << m;
  EXPECT_GE(Metric(m, "hotboot_keep_warm_requests_total"), before + 4);
}

// ---------------------------------------------------------------- capture cycle

class ByteTok : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view t) const override { return std::vector<int32_t>(t.begin(), t.end()); }
  std::string Decode(std::span<const int32_t> ids) const override { return std::string(ids.size(), 'a'); }
  int32_t bos() const override { return 256; }
  int32_t eos() const override { return 257; }
  int32_t vocab_size() const override { return 258; }
};

// A model whose Generate can be held at a gate, and that notes any call made
// while the test says the process is captured.
class GatedModel : public Model {
 public:
  GatedModel() {
    cfg_.max_seq_len = 2048;
    cfg_.n_layers = 1;
    cfg_.dim = 8;
  }
  const ModelConfig& config() const override { return cfg_; }
  const Tokenizer& tokenizer() const override { return tok_; }
  Result<std::vector<GenerateResult>> Generate(const std::vector<GenerateRequest>& batch) override {
    calls++;
    if (captured) calls_while_captured++;
    {
      std::unique_lock lock(mu_);
      running = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !hold; });
      running = false;
    }
    std::vector<GenerateResult> out(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) out[i].tokens.assign(static_cast<size_t>(batch[i].max_tokens), 'a');
    return out;
  }
  void Hold() {
    std::lock_guard lock(mu_);
    hold = true;
  }
  void Release() {
    std::lock_guard lock(mu_);
    hold = false;
    cv_.notify_all();
  }
  bool Running() {
    std::lock_guard lock(mu_);
    return running;
  }
  Status Tune(std::span<const int>) override { return Status::Ok(); }
  std::string PlanDescription() const override { return "gated"; }
  std::string Digest() const override { return "fedcba9876543210fedcba9876543210"; }
  void ReleaseScratch() override {}
  Status ReleaseDevice() override { return Status::Ok(); }
  Result<double> RestoreDevice() override { return 0.0; }
  std::string device() const override { return "cpu"; }
  std::map<std::string, double> device_phases_ms() const override { return {}; }
  uint64_t parameter_count() const override { return 1; }
  uint64_t weight_bytes() const override { return 1; }

  std::atomic<int> calls{0}, calls_while_captured{0};
  std::atomic<bool> captured{false};

 private:
  ModelConfig cfg_;
  ByteTok tok_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold = false, running = false;
};

class KeepWarmCapture : public ::testing::Test {
 protected:
  void Start(double interval_s) {
    ASSERT_EQ(::pipe(cmd_), 0);
    ASSERT_EQ(::pipe(ev_), 0);
    ServerOptions o;
    o.port = 0;
    o.control_in_fd = cmd_[0];
    o.control_out_fd = ev_[1];
    o.keep_warm_interval_s = interval_s;
    o.loader = [this](const std::string&, LoadTimings*) -> Result<std::unique_ptr<Model>> {
      auto m = std::make_unique<GatedModel>();
      model_ = m.get();
      return std::unique_ptr<Model>(std::move(m));
    };
    server_ = std::make_unique<ReplicaServer>(o, [](const std::string&) {});
    runner_ = std::thread([this] { server_->Run(); });
    ASSERT_TRUE(PollUntil([&] { return server_->state() == ReplicaState::kWarm; }, std::chrono::seconds(10)));
  }
  void TearDown() override {
    if (model_) model_->Release();
    if (server_) server_->Stop();
    if (runner_.joinable()) runner_.join();
    for (int fd : {cmd_[1], ev_[0], cmd_[0], ev_[1]}) ::close(fd);
  }
  // The reply to one control command (events are skipped).
  json Call(const json& cmd) {
    const std::string line = cmd.dump() + "\n";
    EXPECT_EQ(::write(cmd_[1], line.data(), line.size()), static_cast<ssize_t>(line.size()));
    for (;;) {
      size_t pos;
      while ((pos = buf_.find('\n')) != std::string::npos) {
        json j = json::parse(buf_.substr(0, pos));
        buf_.erase(0, pos + 1);
        if (j.contains("reply")) return j;
      }
      char c[4096];
      ssize_t n = ::read(ev_[0], c, sizeof c);
      if (n <= 0) return nullptr;
      buf_.append(c, static_cast<size_t>(n));
    }
  }

  int cmd_[2] = {-1, -1}, ev_[2] = {-1, -1};
  std::string buf_;
  std::unique_ptr<ReplicaServer> server_;
  std::thread runner_;
  GatedModel* model_ = nullptr;
};

TEST_F(KeepWarmCapture, OffByDefault) {
  Start(ServerOptions{}.keep_warm_interval_s);
  const int p = server_->port();
  const int after_warmup = model_->calls;
  ASSERT_EQ(Http(p, http::verb::post, "/v1/generate", R"({"prompt":"x","max_tokens":2})").status, 200);
  const std::string m = Http(p, http::verb::get, "/metrics").body;
  EXPECT_EQ(Metric(m, "hotboot_keep_warm_interval_seconds"), 0) << m;
  EXPECT_EQ(Metric(m, "hotboot_keep_warm_requests_total"), 0) << m;
  EXPECT_EQ(Metric(m, "hotboot_keep_warm_last_latency_seconds"), -1) << m;  // absent until one ran
  EXPECT_EQ(Metric(m, "hotboot_generate_seconds_count"), 1) << m;
  EXPECT_EQ(model_->calls, after_warmup + 1);
}

TEST_F(KeepWarmCapture, NeverInFlightWhileCapturedAndResumedAfterRestore) {
  Start(0.05);
  // A keep-warm request held in the model.
  model_->Hold();
  ASSERT_TRUE(PollUntil([&] { return model_->Running(); }, std::chrono::seconds(5)));
  // before_capture waits for it, like for any request in flight.
  auto capture = std::async(std::launch::async, [&] { return Call({{"cmd", "before_capture"}}); });
  ASSERT_TRUE(PollUntil([&] { return server_->state() == ReplicaState::kQuiescing; }, std::chrono::seconds(5)));
  EXPECT_EQ(capture.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout)
      << "before_capture answered while a keep-warm request was in flight";
  model_->Release();
  json frozen = capture.get();
  ASSERT_TRUE(frozen.value("ok", false)) << frozen.dump();
  EXPECT_EQ(server_->state(), ReplicaState::kFrozen);
  EXPECT_FALSE(model_->Running());

  // Captured: many intervals pass and no keep-warm request runs. (Showing
  // that nothing happens takes the time itself; there is no event to poll.)
  model_->captured = true;
  const int calls_frozen = model_->calls;
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(model_->calls, calls_frozen);
  model_->captured = false;
  EXPECT_EQ(model_->calls_while_captured, 0);

  // Restored: verifying is not warm either; once marked ready, keep-warm resumes.
  json restored = Call({{"cmd", "after_restore"}, {"port", 0}});
  ASSERT_TRUE(restored.value("ok", false)) << restored.dump();
  EXPECT_NE(server_->port(), 0);
  json ready = Call({{"cmd", "mark_ready"}});
  ASSERT_TRUE(ready.value("ok", false)) << ready.dump();
  const int calls_ready = model_->calls;
  EXPECT_TRUE(PollUntil([&] { return model_->calls >= calls_ready + 2; }, std::chrono::seconds(5)));
  const std::string m = Http(server_->port(), http::verb::get, "/metrics").body;
  EXPECT_GE(Metric(m, "hotboot_keep_warm_requests_total"), 3) << m;
  EXPECT_EQ(Metric(m, "hotboot_generate_seconds_count"), 0) << m;
  EXPECT_EQ(Metric(m, "hotboot_tokens_generated_total"), 0) << m;
  // Restarted at the restore, on this process's clock.
  EXPECT_LT(Metric(m, "hotboot_seconds_since_last_request"), 5) << m;
}

}  // namespace
}  // namespace hotboot
