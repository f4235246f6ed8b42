// The HTTP front, lifecycle and control channel of the reference server,
// over a fake model (the real one has its own tests).
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include <utility>  // before Boost 1.74 asio: it uses std::exchange
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <future>
#include <thread>

#include <nlohmann/json.hpp>

#include "hotboot/replica_server.h"
#include "http_test_client.h"

namespace hotboot {
namespace {

using json = nlohmann::json;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view t) const override {
    std::vector<int32_t> v;
    for (unsigned char c : t) v.push_back(c);
    return v;
  }
  std::string Decode(std::span<const int32_t> ids) const override {
    std::string s;
    for (int32_t i : ids) s.push_back(static_cast<char>(i & 0xff));
    return s;
  }
  int32_t bos() const override { return 256; }
  int32_t eos() const override { return 257; }
  int32_t vocab_size() const override { return 258; }
};

// Deterministic "model": the next token is a function of the sequence so far.
class FakeModel : public Model {
 public:
  explicit FakeModel(std::atomic<int>* generating = nullptr) : generating_(generating) {
    cfg_.max_seq_len = 64;
    cfg_.n_layers = 1;
    cfg_.dim = 8;
  }
  const ModelConfig& config() const override { return cfg_; }
  const Tokenizer& tokenizer() const override { return tok_; }
  Result<std::vector<GenerateResult>> Generate(const std::vector<GenerateRequest>& batch) override {
    if (generating_) ++*generating_;
    std::vector<GenerateResult> out;
    for (const auto& r : batch) {
      GenerateResult g;
      uint32_t h = 7;
      for (int32_t t : r.prompt) h = h * 31 + static_cast<uint32_t>(t);
      for (int i = 0; i < r.max_tokens; ++i) {
        h = h * 1103515245u + 12345u;
        g.tokens.push_back(static_cast<int32_t>('a' + (h >> 16) % 26));
      }
      out.push_back(g);
    }
    if (generating_) --*generating_;
    return out;
  }
  Status Tune(std::span<const int>) override { return Status::Ok(); }
  std::string PlanDescription() const override { return "fake"; }
  std::string Digest() const override { return "0123456789abcdef0123456789abcdef"; }
  void ReleaseScratch() override { released++; }
  // A device whose weight memory goes before a capture and comes back after.
  Status ReleaseDevice() override {
    if (fail_device_release) return Internal("cuMemUnmap failed (injected)");
    device_resident = false;
    return Status();
  }
  Result<double> RestoreDevice() override {
    if (fail_device_restore) return Internal("cuMemCreate failed: CUDA_ERROR_OUT_OF_MEMORY (injected)");
    device_resident = true;
    ++device_restores;
    last_restore_adopted = false;
    return 12.5;
  }
  // The weights handoff: a model with device weights has an image size
  // and a registered GPU weights file; image_bytes 0 is a CPU model.
  uint64_t device_image_bytes() const override { return image_bytes; }
  std::vector<std::string> weight_files() const override { return files; }
  Result<double> AdoptDevice(const DeviceWeightsHandoff& h) override {
    if (image_bytes == 0) return Model::AdoptDevice(h);
    adopted = h;
    if (fail_adopt) return NotFound("pidfd_getfd: process " + std::to_string(h.pid) + " has no fd 9 (injected)");
    device_resident = true;
    ++device_adopts;
    last_restore_adopted = true;
    return 4.5;
  }
  std::string device() const override { return "Fake GPU"; }
  std::map<std::string, double> device_phases_ms() const override {
    std::map<std::string, double> p = {{"weight_upload", 3.0}};
    if (last_restore_adopted) {
      p["restore_weight_adopt"] = 1.5;
    } else if (device_restores > 0) {
      p["restore_weight_upload"] = 2.0;
    }
    if (device_restores + device_adopts > 0) p["restore_graph_capture"] = 0.5;
    return p;
  }
  uint64_t image_bytes = 0;
  std::vector<std::string> files;
  bool fail_adopt = false, last_restore_adopted = false;
  int device_adopts = 0;
  DeviceWeightsHandoff adopted;
  uint64_t parameter_count() const override { return 1; }
  uint64_t weight_bytes() const override { return 2; }
  int released = 0;
  bool device_resident = true, fail_device_release = false, fail_device_restore = false;
  int device_restores = 0;

 private:
  ModelConfig cfg_;
  ByteTokenizer tok_;
  std::atomic<int>* generating_;
};

using test::Http;
using test::Resp;

// A server on an ephemeral port with a control channel over pipes.
class ServerFixture : public ::testing::Test {
 protected:
  void Start(bool fail_load = false) {
    ASSERT_EQ(pipe(cmd_), 0);
    ASSERT_EQ(pipe(ev_), 0);
    ServerOptions o;
    o.port = 0;
    o.control_in_fd = cmd_[0];
    o.control_out_fd = ev_[1];
    o.loader = [this, fail_load](const std::string&, LoadTimings*) -> Result<std::unique_ptr<Model>> {
      if (fail_load) return Corrupt("model.safetensors: tensor 'x' truncated");
      auto m = std::make_unique<FakeModel>();
      model_ = m.get();
      return std::unique_ptr<Model>(std::move(m));
    };
    server_ = std::make_unique<ReplicaServer>(o, [](const std::string&) {});
    runner_ = std::thread([this] { exit_code_ = server_->Run(); });
  }
  void TearDown() override {
    if (server_) server_->Stop();
    if (runner_.joinable()) runner_.join();
    for (int fd : {cmd_[1], ev_[0], cmd_[0], ev_[1]}) {
      if (fd >= 0) close(fd);
    }
  }
  // Next control message matching pred (events and replies alike).
  json Next(const std::function<bool(const json&)>& pred) {
    for (;;) {
      size_t pos;
      while ((pos = buf_.find('\n')) != std::string::npos) {
        json j = json::parse(buf_.substr(0, pos));
        buf_.erase(0, pos + 1);
        if (pred(j)) return j;
      }
      char c[4096];
      ssize_t n = read(ev_[0], c, sizeof c);
      if (n <= 0) return nullptr;
      buf_.append(c, static_cast<size_t>(n));
    }
  }
  json WaitState(const std::string& s) {
    return Next([&](const json& j) { return j.value("event", "") == "state" && j.value("state", "") == s; });
  }
  json Call(const json& cmd) {
    std::string line = cmd.dump() + "\n";
    EXPECT_EQ(write(cmd_[1], line.data(), line.size()), static_cast<ssize_t>(line.size()));
    return Next([&](const json& j) { return j.contains("reply"); });
  }
  int port() { return server_->port(); }

  int cmd_[2] = {-1, -1}, ev_[2] = {-1, -1};
  std::string buf_;
  std::unique_ptr<ReplicaServer> server_;
  std::thread runner_;
  int exit_code_ = -1;
  FakeModel* model_ = nullptr;
};

TEST(Lifecycle, OnlyTheDesignedMoves) {
  using S = ReplicaState;
  EXPECT_TRUE(TransitionAllowed(S::kCold, S::kLoading));
  EXPECT_TRUE(TransitionAllowed(S::kWarm, S::kQuiescing));
  EXPECT_TRUE(TransitionAllowed(S::kFrozen, S::kRestored));
  EXPECT_TRUE(TransitionAllowed(S::kRestored, S::kVerifying));
  EXPECT_TRUE(TransitionAllowed(S::kVerifying, S::kWarm));
  EXPECT_FALSE(TransitionAllowed(S::kCold, S::kWarm));
  EXPECT_FALSE(TransitionAllowed(S::kRestored, S::kWarm));  // never ready unverified
  EXPECT_FALSE(TransitionAllowed(S::kLoading, S::kFrozen));
  EXPECT_FALSE(TransitionAllowed(S::kFailed, S::kWarm));
}

TEST_F(ServerFixture, BootsToWarmThenServes) {
  Start();
  json warm = WaitState("warm");
  ASSERT_FALSE(warm.is_null());
  EXPECT_EQ(warm["port"], port());
  EXPECT_EQ(Http(port(), http::verb::get, "/livez").status, 200);
  Resp rz = Http(port(), http::verb::get, "/readyz");
  EXPECT_EQ(rz.status, 200);
  EXPECT_EQ(json::parse(rz.body)["state"], "warm");
  Resp g = Http(port(), http::verb::post, "/v1/generate", R"({"prompt":"hi","max_tokens":5})");
  ASSERT_EQ(g.status, 200) << g.body;
  json j = json::parse(g.body);
  EXPECT_EQ(j["tokens"].size(), 5u);
  EXPECT_EQ(j["text"].get<std::string>().size(), 5u);
  EXPECT_EQ(j["prompt_tokens"], 3);  // bos + 2 bytes
  // Deterministic.
  EXPECT_EQ(json::parse(Http(port(), http::verb::post, "/v1/generate", R"({"prompt":"hi","max_tokens":5})").body)["tokens"],
            j["tokens"]);
  Resp m = Http(port(), http::verb::get, "/metrics");
  EXPECT_EQ(m.status, 200);
  for (const char* phase : {"weight_read", "weight_convert", "compile_autotune", "warmup", "first_inference", "time_to_ready",
                            "process_start_to_listen"}) {
    EXPECT_NE(m.body.find(std::string("phase=\"") + phase + "\""), std::string::npos) << phase;
  }
  EXPECT_NE(m.body.find("hotboot_state{state=\"warm\"} 1"), std::string::npos);
  EXPECT_NE(m.body.find("shape=\"short_b4\""), std::string::npos);
}

TEST_F(ServerFixture, BadRequestsGetClearErrors) {
  Start();
  WaitState("warm");
  struct Case {
    std::string body;
    const char* want;
  } cases[] = {{"not json", "JSON object"},
               {R"({"max_tokens":3})", "prompt"},
               {R"({"prompt":5})", "prompt"},
               {R"({"prompt":"x","max_tokens":0})", "max_tokens"},
               {R"({"prompt":"x","max_tokens":"many"})", "max_tokens"},
               {R"({"prompt":"x","max_tokens":100000})", "max_tokens"},
               {R"({"prompt":")" + std::string(100, 'x') + R"(","max_tokens":10})", "context"}};
  for (const auto& c : cases) {
    Resp r = Http(port(), http::verb::post, "/v1/generate", c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_NE(r.body.find(c.want), std::string::npos) << r.body;
  }
  EXPECT_EQ(Http(port(), http::verb::get, "/nope").status, 404);
  EXPECT_EQ(Http(port(), http::verb::get, "/v1/generate").status, 405);
  EXPECT_EQ(Http(port(), http::verb::post, "/readyz").status, 405);
  // A declared body over the limit is refused before it is read.
  asio::io_context ioc;
  beast::tcp_stream s(ioc);
  s.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port())));
  std::string head = "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n{";
  asio::write(s, asio::buffer(head));
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(s, buf, res);
  EXPECT_EQ(res.result_int(), 413u);
}

TEST_F(ServerFixture, FailedLoadIsReportedAndExits) {
  Start(/*fail_load=*/true);
  json failed = WaitState("failed");
  ASSERT_FALSE(failed.is_null());
  EXPECT_NE(failed["error"].get<std::string>().find("truncated"), std::string::npos);
  runner_.join();
  EXPECT_EQ(exit_code_, 1);
}

TEST_F(ServerFixture, CaptureCycle) {
  Start();
  WaitState("warm");
  const int old_port = port();
  json r = Call({{"cmd", "before_capture"}});
  ASSERT_TRUE(r["ok"].get<bool>()) << r.dump();
  EXPECT_EQ(r["digest"], "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(model_->released, 1);
  // No listener any more: the old port refuses connections.
  EXPECT_EQ(Http(old_port, http::verb::get, "/livez").status, -1);
  // Illegal now.
  EXPECT_FALSE(Call({{"cmd", "mark_ready"}})["ok"].get<bool>());
  EXPECT_FALSE(Call({{"cmd", "before_capture"}})["ok"].get<bool>());

  // A port that is taken fails cleanly and leaves the replica restorable.
  asio::io_context ioc;
  asio::ip::tcp::acceptor taken(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const int taken_port = taken.local_endpoint().port();
  json bad = Call({{"cmd", "after_restore"}, {"port", taken_port}, {"instance", "r-new"}, {"seed", 5}});
  EXPECT_FALSE(bad["ok"].get<bool>());
  EXPECT_NE(bad["error"].get<std::string>().find("in use"), std::string::npos) << bad.dump();

  asio::ip::tcp::acceptor probe(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const int new_port = probe.local_endpoint().port();
  probe.close();
  json ok = Call({{"cmd", "after_restore"}, {"port", new_port}, {"instance", "r-new"}, {"seed", 5}});
  ASSERT_TRUE(ok["ok"].get<bool>()) << ok.dump();
  EXPECT_EQ(ok["port"], new_port);
  // Verifying: not ready, but the canary is served.
  EXPECT_EQ(Http(new_port, http::verb::get, "/readyz").status, 503);
  Resp g = Http(new_port, http::verb::post, "/v1/generate", R"({"prompt":"canary","max_tokens":3})");
  EXPECT_EQ(g.status, 200);
  EXPECT_EQ(json::parse(g.body)["instance"], "r-new");
  EXPECT_TRUE(Call({{"cmd", "mark_ready"}})["ok"].get<bool>());
  EXPECT_EQ(Http(new_port, http::verb::get, "/readyz").status, 200);
  EXPECT_NE(Http(new_port, http::verb::get, "/metrics").body.find("boot=\"restored\""), std::string::npos);
}

// Uniqueness (CONTROL.md): a restored replica's request ids come from the
// entropy after_restore hands it, not from the state the snapshot froze.
class UniqueFixture : public ServerFixture {
 protected:
  // One capture cycle with `extra` merged into after_restore; the request ids
  // of `n` generate calls right after it.
  std::vector<std::string> CycleIds(const json& extra, int n = 3) {
    std::vector<std::string> ids;
    json frozen = Call({{"cmd", "before_capture"}});
    EXPECT_TRUE(frozen["ok"].get<bool>()) << frozen.dump();
    asio::io_context ioc;
    asio::ip::tcp::acceptor probe(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const int new_port = probe.local_endpoint().port();
    probe.close();
    json cmd = {{"cmd", "after_restore"}, {"port", new_port}};
    cmd.update(extra);
    json ok = Call(cmd);
    EXPECT_TRUE(ok["ok"].get<bool>()) << ok.dump();
    for (int i = 0; i < n; ++i) ids.push_back(GenerateId(new_port));
    GenerateId(new_port);  // one more draw: the state the next capture freezes moved on
    EXPECT_TRUE(Call({{"cmd", "mark_ready"}})["ok"].get<bool>());
    return ids;
  }
  static std::string GenerateId(int port) {
    Resp g = Http(port, http::verb::post, "/v1/generate", R"({"prompt":"hi","max_tokens":2})");
    EXPECT_EQ(g.status, 200) << g.body;
    json j = json::parse(g.body, nullptr, false);
    return j.is_object() ? j.value("id", "") : "";
  }
};

const std::string kEntropyA(64, 'a');
const std::string kEntropyB = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

TEST_F(UniqueFixture, AfterRestoreEntropyReseedsTheRequestIds) {
  Start();
  WaitState("warm");
  std::vector<std::string> before = {GenerateId(port()), GenerateId(port())};
  const auto a1 = CycleIds({{"instance", "r-one"}, {"entropy", kEntropyA}});
  // The same entropy, after other draws and another cycle: the same ids. The
  // state is replaced whole; nothing of what the process drew before is left.
  const auto a2 = CycleIds({{"instance", "r-two"}, {"entropy", kEntropyA}});
  const auto b = CycleIds({{"instance", "r-three"}, {"entropy", kEntropyB}});
  ASSERT_EQ(a1.size(), 3u);
  for (const auto& id : a1) EXPECT_EQ(id.size(), 16u) << id;
  EXPECT_EQ(a1, a2);  // determinism given the input
  EXPECT_NE(a1, b);   // other entropy, other ids
  for (const auto& id : before) {
    EXPECT_EQ(std::count(a1.begin(), a1.end(), id), 0) << id;
    EXPECT_EQ(std::count(b.begin(), b.end(), id), 0) << id;
  }
  EXPECT_EQ(json::parse(Http(server_->port(), http::verb::get, "/readyz").body)["instance"], "r-three");
}

TEST_F(UniqueFixture, SeedOnlyFromAnOlderRestorerAndNeitherFromTheKernel) {
  Start();
  WaitState("warm");
  const auto s1 = CycleIds({{"instance", "r-s"}, {"seed", 5}});
  const auto s2 = CycleIds({{"instance", "r-s"}, {"seed", 5}});
  EXPECT_EQ(s1, s2);
  // Without entropy or seed the server draws its own: never the frozen state.
  const auto k1 = CycleIds({{"instance", "r-k"}});
  const auto k2 = CycleIds({{"instance", "r-k"}});
  EXPECT_NE(k1, k2);
  EXPECT_NE(k1, s1);
}

TEST_F(UniqueFixture, BadEntropyIsRefusedAndLeavesTheReplicaRestorable) {
  Start();
  WaitState("warm");
  ASSERT_TRUE(Call({{"cmd", "before_capture"}})["ok"].get<bool>());
  for (const json& bad : {json(std::string(63, 'a')), json(std::string(63, 'a') + "g"), json(12345),
                          json(std::string(64, 'a') + "00")}) {
    json r = Call({{"cmd", "after_restore"}, {"port", 0}, {"entropy", bad}});
    EXPECT_FALSE(r["ok"].get<bool>()) << bad.dump();
    EXPECT_NE(r.value("error", "").find("64 hex digits"), std::string::npos) << r.dump();
  }
  EXPECT_FALSE(Call({{"cmd", "after_restore"}, {"port", 0}, {"seed", -1}})["ok"].get<bool>());
  EXPECT_FALSE(Call({{"cmd", "after_restore"}, {"port", 0}, {"instance", 7}})["ok"].get<bool>());
  EXPECT_EQ(Call({{"cmd", "status"}})["state"], "frozen");
  json ok = Call({{"cmd", "after_restore"}, {"port", 0}, {"instance", "r-ok"}, {"entropy", kEntropyB}});
  EXPECT_TRUE(ok["ok"].get<bool>()) << ok.dump();
  EXPECT_EQ(ok["instance"], "r-ok");
}

TEST_F(ServerFixture, ResumeAfterAFailedBuild) {
  Start();
  WaitState("warm");
  ASSERT_TRUE(Call({{"cmd", "before_capture"}})["ok"].get<bool>());
  json r = Call({{"cmd", "resume"}});
  ASSERT_TRUE(r["ok"].get<bool>()) << r.dump();
  EXPECT_EQ(Http(r["port"], http::verb::get, "/readyz").status, 200);
}

TEST_F(ServerFixture, DeviceMemoryFollowsTheCaptureCycle) {
  Start();
  WaitState("warm");
  EXPECT_NE(Http(port(), http::verb::get, "/metrics").body.find("weight_upload"), std::string::npos);
  ASSERT_TRUE(Call({{"cmd", "before_capture"}})["ok"].get<bool>());
  EXPECT_FALSE(model_->device_resident);
  asio::io_context ioc;
  asio::ip::tcp::acceptor probe(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const int new_port = probe.local_endpoint().port();
  probe.close();
  json ok = Call({{"cmd", "after_restore"}, {"port", new_port}, {"instance", "r-gpu"}, {"seed", 1}});
  ASSERT_TRUE(ok["ok"].get<bool>()) << ok.dump();
  EXPECT_TRUE(model_->device_resident);
  EXPECT_EQ(model_->device_restores, 1);
  const std::string metrics = Http(new_port, http::verb::get, "/metrics").body;
  EXPECT_NE(metrics.find("phase=\"restore_device\"}"), std::string::npos) << metrics;
  // The model's own part of it, in seconds like every phase.
  EXPECT_NE(metrics.find("phase=\"restore_weight_upload\"} 0.002"), std::string::npos) << metrics;
}

TEST_F(ServerFixture, DeviceReleaseFailureKeepsServing) {
  Start();
  WaitState("warm");
  model_->fail_device_release = true;
  json r = Call({{"cmd", "before_capture"}});
  EXPECT_FALSE(r["ok"].get<bool>());
  EXPECT_NE(r["error"].get<std::string>().find("resumed serving"), std::string::npos) << r.dump();
  EXPECT_EQ(Http(port(), http::verb::get, "/readyz").status, 200);
}

TEST_F(ServerFixture, DeviceRestoreFailureIsNotServed) {
  Start();
  WaitState("warm");
  ASSERT_TRUE(Call({{"cmd", "before_capture"}})["ok"].get<bool>());
  model_->fail_device_restore = true;
  asio::io_context ioc;
  asio::ip::tcp::acceptor probe(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const int new_port = probe.local_endpoint().port();
  probe.close();
  json bad = Call({{"cmd", "after_restore"}, {"port", new_port}, {"instance", "r-gpu"}, {"seed", 1}});
  EXPECT_FALSE(bad["ok"].get<bool>());
  EXPECT_NE(bad["error"].get<std::string>().find("restoring device memory"), std::string::npos) << bad.dump();
  EXPECT_EQ(Http(new_port, http::verb::get, "/livez").status, -1);  // nothing listens
}

// ---------------------------------------------------------------- weights handoff

class HandoffFixture : public ServerFixture {
 protected:
  static constexpr uint64_t kImage = 6u << 20;
  const std::string kFile = "gpu-weights-00112233445566778899aabbccddeeff.bin";
  // A server whose model has device weights, captured.
  void Frozen(bool gpu = true) {
    Start();
    WaitState("warm");
    if (gpu) {
      model_->image_bytes = kImage;
      model_->files = {"/dev/shm/hotboot-weights/" + kFile};
    }
    ASSERT_TRUE(Call({{"cmd", "before_capture"}})["ok"].get<bool>());
  }
  int FreePort() {
    asio::io_context ioc;
    asio::ip::tcp::acceptor probe(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return probe.local_endpoint().port();
  }
  json Handoff() { return {{"pid", 4242}, {"fd", 9}, {"bytes", kImage}, {"file", kFile}}; }
  json AfterRestore(const json& dw) {
    return Call({{"cmd", "after_restore"}, {"port", FreePort()}, {"seed", 1}, {"device_weights", dw}});
  }
};

TEST_F(HandoffFixture, TheDeviceWeightsAreAdoptedAndTimed) {
  Frozen();
  json r = AfterRestore(Handoff());
  ASSERT_TRUE(r["ok"].get<bool>()) << r.dump();
  EXPECT_EQ(model_->device_adopts, 1);
  EXPECT_EQ(model_->device_restores, 0);  // no upload from the file
  EXPECT_EQ(model_->adopted.pid, 4242);
  EXPECT_EQ(model_->adopted.fd, 9);
  EXPECT_EQ(model_->adopted.bytes, kImage);
  EXPECT_EQ(model_->adopted.file, kFile);
  const json& t = r["timings_ms"];
  EXPECT_EQ(t["weight_adopt"], 1.5) << r.dump();
  EXPECT_FALSE(t.contains("weight_upload")) << r.dump();
  EXPECT_EQ(t["graph_capture"], 0.5);
  EXPECT_EQ(t["device_restore"], 4.5);
  for (const char* k : {"digest", "listen", "total"}) EXPECT_TRUE(t[k].is_number()) << k << " " << r.dump();
  EXPECT_FALSE(r.contains("device_weights_error"));
  const std::string metrics = Http(r["port"], http::verb::get, "/metrics").body;
  EXPECT_NE(metrics.find("phase=\"restore_weight_adopt\"} 0.0015"), std::string::npos) << metrics;
}

TEST_F(HandoffFixture, WithoutAHandoffTheWeightsComeFromTheFile) {
  Frozen();
  json r = Call({{"cmd", "after_restore"}, {"port", FreePort()}, {"seed", 1}});
  ASSERT_TRUE(r["ok"].get<bool>()) << r.dump();
  EXPECT_EQ(model_->device_restores, 1);
  EXPECT_EQ(r["timings_ms"]["weight_upload"], 2.0) << r.dump();
  EXPECT_FALSE(r["timings_ms"].contains("weight_adopt"));
}

TEST_F(HandoffFixture, AFailedTakeFallsBackToTheFileAndSaysWhy) {
  Frozen();
  model_->fail_adopt = true;
  json r = AfterRestore(Handoff());
  ASSERT_TRUE(r["ok"].get<bool>()) << r.dump();
  EXPECT_EQ(model_->device_restores, 1);
  EXPECT_NE(r["device_weights_error"].get<std::string>().find("has no fd 9"), std::string::npos) << r.dump();
  EXPECT_EQ(r["timings_ms"]["weight_upload"], 2.0) << r.dump();
}

TEST_F(HandoffFixture, ACpuServerRefusesDeviceWeights) {
  Frozen(/*gpu=*/false);
  json r = AfterRestore(Handoff());
  EXPECT_FALSE(r["ok"].get<bool>());
  EXPECT_NE(r["error"].get<std::string>().find("this server holds no device weights"), std::string::npos) << r.dump();
  EXPECT_EQ(Call({{"cmd", "status"}})["state"], "frozen");  // refused before anything moved
}

TEST_F(HandoffFixture, EveryBadFieldIsRefusedByName) {
  Frozen();
  struct Case {
    const char* field;
    json value;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"pid", 1, "device_weights.pid"},          {"pid", -5, "device_weights.pid"},
      {"pid", "4242", "device_weights.pid"},     {"pid", nullptr, "device_weights.pid"},
      {"fd", -1, "device_weights.fd"},           {"fd", 1.5, "device_weights.fd"},
      {"fd", 4294967296LL, "device_weights.fd"}, {"bytes", -1, "device_weights.bytes"},
      {"bytes", kImage + 1, "device_weights.bytes is"},
      {"file", "gpu-weights-ffffffffffffffffffffffffffffffff.bin", "device_weights.file"},
      {"file", 7, "device_weights.file"},
  };
  for (const Case& c : cases) {
    json dw = Handoff();
    if (c.value.is_null()) {
      dw.erase(c.field);
    } else {
      dw[c.field] = c.value;
    }
    json r = AfterRestore(dw);
    EXPECT_FALSE(r["ok"].get<bool>()) << dw.dump();
    EXPECT_NE(r.value("error", "").find(c.says), std::string::npos) << dw.dump() << " -> " << r.dump();
  }
  json r = AfterRestore("fd 9 of 4242");
  EXPECT_FALSE(r["ok"].get<bool>());
  EXPECT_NE(r.value("error", "").find("device_weights must be an object"), std::string::npos) << r.dump();
  EXPECT_EQ(model_->device_adopts, 0);
  EXPECT_EQ(Call({{"cmd", "status"}})["state"], "frozen");
  // And after all that, a good one still works.
  EXPECT_TRUE(AfterRestore(Handoff())["ok"].get<bool>());
  EXPECT_EQ(model_->device_adopts, 1);
}

TEST_F(ServerFixture, GarbageCommandsAreAnsweredNotFatal) {
  Start();
  WaitState("warm");
  std::string junk = "{{{ not json\n";
  ASSERT_EQ(write(cmd_[1], junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  json r = Next([](const json& j) { return j.contains("reply"); });
  EXPECT_FALSE(r["ok"].get<bool>());
  EXPECT_FALSE(Call({{"cmd", "dance"}})["ok"].get<bool>());
  EXPECT_FALSE(Call({{"cmd", "after_restore"}})["ok"].get<bool>());
  EXPECT_EQ(Call({{"cmd", "status"}})["state"], "warm");
}

TEST_F(ServerFixture, ControlEofBeforeDetachExits) {
  Start();
  WaitState("warm");
  close(cmd_[1]);
  cmd_[1] = -1;
  runner_.join();  // Run returns by itself
  EXPECT_EQ(exit_code_, 0);
}

TEST_F(ServerFixture, DetachedReplicaOutlivesItsDriver) {
  Start();
  WaitState("warm");
  EXPECT_TRUE(Call({{"cmd", "detach"}})["ok"].get<bool>());
  close(cmd_[1]);
  cmd_[1] = -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(Http(port(), http::verb::get, "/readyz").status, 200);
}

}  // namespace
}  // namespace hotboot
