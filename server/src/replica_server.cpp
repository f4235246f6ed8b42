// ReplicaServer: lifecycle, boot (load + warm up), the inference worker, and
// the control channel around captures (server/CONTROL.md).
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <optional>
#include <set>
#include <sstream>

#include "server_impl.h"

namespace hotboot {

using json = nlohmann::json;

const char* StateName(ReplicaState s) {
  switch (s) {
    case ReplicaState::kCold: return "cold";
    case ReplicaState::kLoading: return "loading";
    case ReplicaState::kWarming: return "warming";
    case ReplicaState::kWarm: return "warm";
    case ReplicaState::kQuiescing: return "quiescing";
    case ReplicaState::kFrozen: return "frozen";
    case ReplicaState::kRestored: return "restored";
    case ReplicaState::kVerifying: return "verifying";
    case ReplicaState::kFailed: return "failed";
  }
  return "?";
}

bool TransitionAllowed(ReplicaState from, ReplicaState to) {
  using S = ReplicaState;
  if (to == S::kFailed) return from != S::kFailed;
  switch (from) {
    case S::kCold: return to == S::kLoading;
    case S::kLoading: return to == S::kWarming;
    case S::kWarming: return to == S::kWarm;
    case S::kWarm: return to == S::kQuiescing;
    case S::kQuiescing: return to == S::kFrozen || to == S::kWarm;  // warm: quiesce failed, resumed
    case S::kFrozen: return to == S::kRestored || to == S::kWarm;   // warm: resume after a failed build
    case S::kRestored: return to == S::kVerifying;
    case S::kVerifying: return to == S::kWarm;
    case S::kFailed: return false;
  }
  return false;
}

namespace {

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Inodes of this process's TCP sockets (/proc/self/net/tcp and tcp6).
std::set<std::string> TcpSocketInodes() {
  std::set<std::string> out;
  for (const char* table : {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string field;
      for (int i = 0; i < 10 && ls >> field; ++i) {
      }
      if (ls) out.insert(field);  // the 10th column: the inode
    }
  }
  return out;
}

// Our TCP sockets still open (the listener's and the sessions'). Sockets the
// libraries opened (the CUDA driver's Unix sockets) are not the server's to
// close: the driver's checkpoint and CRIU deal with them.
std::vector<std::string> OpenSockets() {
  const std::set<std::string> tcp = TcpSocketInodes();
  std::vector<std::string> out;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    char buf[PATH_MAX];
    ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
    const std::string target(buf, n > 0 ? static_cast<size_t>(n) : 0);
    // "socket:[INODE]"
    if (target.rfind("socket:[", 0) == 0 && tcp.count(target.substr(8, target.size() - 9))) {
      out.push_back(std::string(e->d_name) + " -> " + target);
    }
  }
  ::closedir(d);
  return out;
}

// Warmup shapes: the request kinds a recommendation service really sees.
struct WarmShape {
  const char* name;
  std::string prompt;
  int max_tokens;
  std::vector<int> batch_sizes;  // bounded by --max-batch
};

std::vector<WarmShape> WarmShapes(int max_seq_len) {
  std::string turn =
      "User: I watched a documentary about deep sea creatures last night and loved the part about bioluminescence. "
      "Assistant: Bioluminescence is light made by living things; many deep sea fish use it to hunt or hide. ";
  std::string long_prompt;
  while (long_prompt.size() < 1200) long_prompt += turn;
  // Short queries arrive in bursts (batched); long multi-turn prompts are
  // prefill-bound and run alone.
  std::vector<WarmShape> shapes = {
      {"short", "play jazz", 4, {1, 2, 4}},
      {"medium", "Recommend three science fiction novels for someone who liked Dune, with one sentence each.", 16, {1, 4}},
      {"long", long_prompt + "User: what should I watch next?", 4, {1}},
  };
  (void)max_seq_len;
  return shapes;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Eight words from the kernel (std::random_device reads getrandom(2) here).
std::vector<uint32_t> KernelSeedWords() {
  std::random_device rd;
  std::vector<uint32_t> w(8);
  for (auto& x : w) x = rd();
  return w;
}

// What a restored replica's RNGs start from (CONTROL.md "Uniqueness"): the
// restorer's "entropy" (32 bytes, 64 hex digits); from a restorer that
// predates it, its "seed"; with neither, the kernel's. Never the state the
// snapshot captured, which every replica of it would share.
Result<std::vector<uint32_t>> RestoreSeedWords(const json& cmd) {
  if (cmd.contains("entropy")) {
    const json& e = cmd["entropy"];
    if (!e.is_string() || e.get_ref<const std::string&>().size() != 64) {
      return InvalidArgument("after_restore: \"entropy\" must be a string of 64 hex digits (32 bytes)");
    }
    const std::string& hex = e.get_ref<const std::string&>();
    std::vector<uint32_t> w(8, 0);
    for (size_t i = 0; i < hex.size(); ++i) {
      const int v = HexDigit(hex[i]);
      if (v < 0) return InvalidArgument("after_restore: \"entropy\" must be a string of 64 hex digits (32 bytes)");
      w[i / 8] = w[i / 8] << 4 | static_cast<uint32_t>(v);
    }
    return w;
  }
  if (cmd.contains("seed")) {
    if (!cmd["seed"].is_number_unsigned()) return InvalidArgument("after_restore: \"seed\" must be an unsigned integer");
    const uint64_t seed = cmd["seed"].get<uint64_t>();
    return std::vector<uint32_t>{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  }
  return KernelSeedWords();
}

// The after_restore's "device_weights" (CONTROL.md "Weights handoff") as a
// checked record: every field typed and bounded, the size and the file
// those of this model's device weights. Absent: nullopt.
Result<std::optional<DeviceWeightsHandoff>> ParseDeviceWeights(const json& cmd, const Model& model) {
  if (!cmd.contains("device_weights")) return std::optional<DeviceWeightsHandoff>();
  const json& d = cmd["device_weights"];
  auto bad = [](const std::string& why) { return InvalidArgument("after_restore: device_weights" + why); };
  if (!d.is_object()) return bad(" must be an object {\"pid\", \"fd\", \"bytes\", \"file\"}");
  DeviceWeightsHandoff h;
  if (!d.contains("pid") || !d["pid"].is_number_integer() || d["pid"].get<int64_t>() <= 1 ||
      d["pid"].get<int64_t>() > INT_MAX) {
    return bad(".pid must be the restorer's process id, an integer > 1");
  }
  h.pid = static_cast<int>(d["pid"].get<int64_t>());
  if (!d.contains("fd") || !d["fd"].is_number_integer() || d["fd"].get<int64_t>() < 0 ||
      d["fd"].get<int64_t>() > INT_MAX) {
    return bad(".fd must be a file descriptor number, an integer >= 0");
  }
  h.fd = static_cast<int>(d["fd"].get<int64_t>());
  if (!d.contains("bytes") || !d["bytes"].is_number_unsigned()) return bad(".bytes must be an unsigned integer");
  h.bytes = d["bytes"].get<uint64_t>();
  if (!d.contains("file") || !d["file"].is_string()) return bad(".file must be a string (gpu-weights-<hex>.bin)");
  h.file = d["file"].get<std::string>();
  const uint64_t image = model.device_image_bytes();
  if (image == 0) return FailedPrecondition("after_restore: device_weights: this server holds no device weights");
  if (h.bytes != image) {
    return bad(".bytes is " + std::to_string(h.bytes) + ", this server's device weights image is " +
               std::to_string(image) + " bytes");
  }
  std::string registered;
  for (const std::string& f : model.weight_files()) {
    const std::string base = f.substr(f.find_last_of('/') + 1);
    if (base.rfind("gpu-weights-", 0) == 0) registered = base;
  }
  if (h.file != registered) {
    return bad(".file '" + h.file + "' is not this server's GPU weights file '" + registered + "'");
  }
  return std::optional<DeviceWeightsHandoff>(std::move(h));
}

}  // namespace

ReplicaServer::Impl::Impl(ServerOptions o, Logger l) : opts(std::move(o)), log(std::move(l)) {
  const std::vector<uint32_t> words = KernelSeedWords();
  std::seed_seq seq(words.begin(), words.end());
  rng.seed(seq);
  instance = "c-" + NewRequestId().substr(0, 12);
  metrics.keep_warm_interval_s = std::max(0.0, opts.keep_warm_interval_s);
}

std::string ReplicaServer::Impl::NewRequestId() {
  static const char* kHex = "0123456789abcdef";
  std::lock_guard lock(state_mu);
  std::string id;
  for (int i = 0; i < 16; ++i) id += kHex[rng() % 16];
  return id;
}

ReplicaState ReplicaServer::Impl::state() const {
  std::lock_guard lock(state_mu);
  return state_;
}

bool ReplicaServer::Impl::SetState(ReplicaState to, const std::string& why) {
  json ev;
  {
    std::lock_guard lock(state_mu);
    if (!TransitionAllowed(state_, to)) return false;
    state_ = to;
    if (to == ReplicaState::kFailed) fail_reason = why;
    ev = {{"event", "state"}, {"state", StateName(to)}, {"port", bound_port.load()},
          {"pid", ::getpid()}, {"instance", instance}};
    if (!why.empty()) ev["error"] = why;
  }
  Log(std::string("state ") + StateName(to) + (why.empty() ? "" : ": " + why));
  Emit(ev);
  if (to == ReplicaState::kWarm && opts.keep_warm_interval_s > 0) asio::post(ioc, [this] { StartKeepWarm(); });
  return true;
}

// ---------------------------------------------------------------- keep-warm
//
// A replica idle for longer than the interval sends itself one request of a
// warmup shape (in turn) through the inference queue real requests take. One
// at a time, and only when nothing else is queued or running, so a real
// request waits behind at most one of them. It runs only in `warm`: the
// timer stops at before_capture, and a restored replica starts it again when
// it becomes warm (mark_ready) -- with the idle clock restarted, since the
// monotonic clock of a restored process is the new host's.

void ReplicaServer::Impl::NoteRealRequest() {
  last_activity = Clock::now();
  std::lock_guard lock(metrics.mu);
  metrics.last_request = last_activity;
}

void ReplicaServer::Impl::StartKeepWarm() {
  last_activity = Clock::now();
  ArmKeepWarm(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.keep_warm_interval_s)));
}

void ReplicaServer::Impl::StopKeepWarm() {
  if (keep_warm_timer) keep_warm_timer->cancel();
}

void ReplicaServer::Impl::ArmKeepWarm(Clock::duration after) {
  if (!keep_warm_timer) keep_warm_timer = std::make_unique<asio::steady_timer>(ioc);
  keep_warm_timer->expires_after(after);
  keep_warm_timer->async_wait([this](boost::system::error_code ec) {
    if (!ec) KeepWarmTick();
  });
}

void ReplicaServer::Impl::KeepWarmTick() {
  if (opts.keep_warm_interval_s <= 0 || keep_warm_inflight || keep_warm_shapes.empty()) return;
  if (state() != ReplicaState::kWarm) return;  // StartKeepWarm runs again on the way back to warm
  const auto interval =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.keep_warm_interval_s));
  const auto idle = Clock::now() - last_activity;
  if (idle < interval) return ArmKeepWarm(interval - idle);
  {
    // A real request running longer than the interval: it keeps things warm.
    std::lock_guard lock(q_mu);
    if (inflight > 0) return ArmKeepWarm(interval);
  }
  const KeepWarmShape& shape = keep_warm_shapes[keep_warm_next++ % keep_warm_shapes.size()];
  GenJob job;
  job.prompt = shape.prompt;
  job.max_tokens = shape.max_tokens;
  const auto t0 = Clock::now();
  job.done = [this, t0, interval](Result<GenerateResult> r) {
    const double ms = MsBetween(t0, Clock::now());
    asio::post(ioc, [this, ms, interval, ok = r.ok(), why = r.ok() ? std::string() : r.status().message()] {
      keep_warm_inflight = false;
      last_activity = Clock::now();
      if (!ok) Log("keep-warm request failed: " + why);
      {
        std::lock_guard lock(metrics.mu);
        metrics.keep_warm_count++;
        metrics.keep_warm_last_ms = ms;
      }
      if (state() == ReplicaState::kWarm) ArmKeepWarm(interval);
    });
  };
  if (Submit(std::move(job))) keep_warm_inflight = true;
}

void ReplicaServer::Impl::Emit(const json& j) {
  if (opts.control_out_fd < 0 || !events_enabled) return;
  std::string line = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  std::lock_guard lock(out_mu);
  size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(opts.control_out_fd, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      events_enabled = false;  // the reader is gone; keep serving
      return;
    }
    off += static_cast<size_t>(n);
  }
}

Status ReplicaServer::Impl::Listen(const std::string& host, int port) {
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgument("bad listen address '" + host + "'");
  auto acc = std::make_unique<tcp::acceptor>(ioc);
  tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  acc->open(ep.protocol(), ec);
  if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc->bind(ep, ec);
  if (ec) {
    if (ec == asio::error::address_in_use) return FailedPrecondition("port " + std::to_string(port) + " on " + host + " is in use");
    return IoError("bind " + host + ":" + std::to_string(port) + ": " + ec.message());
  }
  acc->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return IoError("listen: " + ec.message());
  bound_port = acc->local_endpoint().port();
  acceptor = std::move(acc);
  DoAccept();
  Log("listening on " + host + ":" + std::to_string(bound_port.load()));
  return Status::Ok();
}

void ReplicaServer::Impl::DoAccept() {
  if (!acceptor) return;
  acceptor->async_accept([this](boost::system::error_code ec, tcp::socket s) {
    if (ec == asio::error::operation_aborted || !acceptor || !acceptor->is_open()) return;
    if (!ec) StartHttpSession(this, std::move(s));
    DoAccept();
  });
}

bool ReplicaServer::Impl::Submit(GenJob job) {
  std::lock_guard lock(q_mu);
  ReplicaState st = state();
  if (stopping || (st != ReplicaState::kWarm && st != ReplicaState::kVerifying)) return false;
  ++inflight;
  queue.push_back(std::move(job));
  q_cv.notify_all();
  return true;
}

void ReplicaServer::Impl::RunOnWorker(const std::function<void()>& fn) {
  std::promise<void> p;
  auto f = p.get_future();
  {
    std::lock_guard lock(q_mu);
    tasks.push_back([&] {
      fn();
      p.set_value();
    });
    q_cv.notify_all();
  }
  f.get();
}

bool ReplicaServer::Impl::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(q_mu);
  return idle_cv.wait_for(lock, timeout, [&] { return inflight == 0; });
}

void ReplicaServer::Impl::WorkerLoop() {
  for (;;) {
    std::vector<GenJob> batch;
    std::function<void()> task;
    {
      std::unique_lock lock(q_mu);
      q_cv.wait(lock, [&] { return stopping || !queue.empty() || !tasks.empty(); });
      if (!tasks.empty()) {
        task = std::move(tasks.front());
        tasks.pop_front();
      } else if (!queue.empty()) {
        // Requests waiting together run as one batch: one weight pass per step.
        while (!queue.empty() && static_cast<int>(batch.size()) < std::max(1, opts.max_batch)) {
          batch.push_back(std::move(queue.front()));
          queue.pop_front();
        }
      } else if (stopping) {
        return;
      }
    }
    if (task) {
      task();
      continue;
    }
    std::vector<GenerateRequest> reqs;
    for (auto& j : batch) reqs.push_back({j.prompt, j.max_tokens});
    auto results = model->Generate(reqs);
    for (size_t i = 0; i < batch.size(); ++i) {
      if (results.ok()) {
        batch[i].done((*results)[i]);
      } else {
        batch[i].done(results.status());
      }
    }
    std::lock_guard lock(q_mu);
    inflight -= static_cast<int>(batch.size());
    if (inflight == 0) idle_cv.notify_all();
  }
}

void ReplicaServer::Impl::Boot() {
  if (!BootSteps()) {
    if (exit_code == 0) exit_code = 1;
    asio::post(ioc, [this] { ioc.stop(); });  // a server that cannot boot exits
  }
}

bool ReplicaServer::Impl::BootSteps() {
  const auto t_boot = Clock::now();
  SetState(ReplicaState::kLoading);
  if (!opts.loader) {
    // A GPU-only model on a host that would run it on the CPU: refused from
    // its header, before 16 GB are read (exit code 3, main.cpp).
    if (Status s = CheckServable(opts.model_path, opts.device); !s.ok()) {
      Log("error: " + s.message());
      SetState(ReplicaState::kFailed, s.message());
      if (s.code() == Code::kFailedPrecondition) exit_code = kExitNotServableHere;
      return false;
    }
  }
  LoadTimings lt;
  auto loaded = opts.loader ? opts.loader(opts.model_path, &lt) : Model::Load(opts.model_path, LoadOptions{opts.threads, "", opts.device}, &lt);
  if (!loaded.ok()) {
    Log("error: " + loaded.status().message());
    SetState(ReplicaState::kFailed, loaded.status().message());
    return false;
  }
  model = std::move(loaded).value();
  const auto& cfg = model->config();
  Log("model loaded: " + std::to_string(model->parameter_count()) + " parameters, " + std::to_string(cfg.n_layers) +
      " layers, dim " + std::to_string(cfg.dim) + ", " + std::to_string(model->weight_bytes() >> 20) + " MiB resident; read " +
      std::to_string(static_cast<int>(lt.read_ms)) + " ms, convert " + std::to_string(static_cast<int>(lt.convert_ms)) + " ms");
  {
    std::lock_guard lock(metrics.mu);
    metrics.phase_ms["weight_read"] = lt.read_ms;
    metrics.phase_ms["weight_convert"] = lt.convert_ms;
    for (const auto& [phase, ms] : model->device_phases_ms()) metrics.phase_ms[phase] = ms;
  }
  Log("running on " + model->device());
  SetState(ReplicaState::kWarming);
  // Kernel plan autotuning for the batch sizes the server runs.
  const auto t_tune = Clock::now();
  std::vector<int> sizes;
  for (int b = 1; b <= std::max(1, opts.max_batch); b *= 2) sizes.push_back(b);
  if (Status s = model->Tune(sizes); !s.ok()) {
    SetState(ReplicaState::kFailed, "kernel tuning: " + s.message());
    return false;
  }
  const double tune_ms = MsBetween(t_tune, Clock::now()) + lt.tune_ms;
  Log("kernel plan tuned in " + std::to_string(static_cast<int>(tune_ms)) + " ms: " + model->PlanDescription());
  // Warmup over the real request shapes at several batch sizes.
  const auto t_warm = Clock::now();
  double first_inference_ms = -1;
  const Tokenizer& tok = model->tokenizer();
  for (const auto& shape : WarmShapes(cfg.max_seq_len)) {
    std::vector<int32_t> prompt = {tok.bos()};
    auto ids = tok.Encode(shape.prompt);
    prompt.insert(prompt.end(), ids.begin(), ids.end());
    const int room = cfg.max_seq_len - shape.max_tokens;
    if (static_cast<int>(prompt.size()) > room) prompt.resize(static_cast<size_t>(std::max(1, room)));
    keep_warm_shapes.push_back({prompt, shape.max_tokens});  // read on the io thread once warm
    for (int b : shape.batch_sizes) {
      if (b > std::max(1, opts.max_batch)) continue;
      std::vector<GenerateRequest> reqs(static_cast<size_t>(b), GenerateRequest{prompt, shape.max_tokens});
      Metrics::Shape m;
      const int iterations = 2;  // the first (cold) and one steady
      std::vector<double> steady;
      for (int it = 0; it < iterations; ++it) {
        const auto t = Clock::now();
        auto r = model->Generate(reqs);
        if (!r.ok()) {
          SetState(ReplicaState::kFailed, std::string("warmup ") + shape.name + ": " + r.status().message());
          return false;
        }
        const double ms = MsBetween(t, Clock::now());
        if (first_inference_ms < 0) first_inference_ms = MsBetween(t_boot, Clock::now());
        if (it == 0) {
          m.first_ms = ms;
        } else {
          steady.push_back(ms);
        }
      }
      std::sort(steady.begin(), steady.end());
      m.steady_ms = steady[steady.size() / 2];
      std::lock_guard lock(metrics.mu);
      metrics.warmup[std::string(shape.name) + "_b" + std::to_string(b)] = m;
    }
  }
  const double warm_ms = MsBetween(t_warm, Clock::now());
  {
    std::lock_guard lock(metrics.mu);
    metrics.phase_ms["compile_autotune"] = tune_ms;
    metrics.phase_ms["warmup"] = warm_ms;
    metrics.phase_ms["first_inference"] = first_inference_ms;
    metrics.phase_ms["time_to_ready"] = MsBetween(process_start, Clock::now());
  }
  Log("warmup done in " + std::to_string(static_cast<int>(warm_ms)) + " ms");
  if (opts.keep_warm_interval_s > 0) {
    char b[64];
    std::snprintf(b, sizeof b, "%g s", opts.keep_warm_interval_s);
    Log(std::string("keep-warm: one warmup-shaped request after ") + b + " without requests");
  }
  return SetState(ReplicaState::kWarm);
}

// ---------------------------------------------------------------- control

void ReplicaServer::Impl::ControlLoop() {
  std::string buf;
  char chunk[4096];
  for (;;) {
    pollfd fds[2] = {{opts.control_in_fd, POLLIN, 0}, {wake_pipe[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents) return;  // the server is being destroyed
    ssize_t n = ::read(opts.control_in_fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t pos;
    while ((pos = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, pos);
      buf.erase(0, pos + 1);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json cmd = json::parse(line, nullptr, false);
      json reply;
      if (!cmd.is_object() || !cmd.contains("cmd") || !cmd["cmd"].is_string()) {
        reply = {{"reply", "error"}, {"ok", false}, {"error", "control commands are JSON objects with a \"cmd\" string"}};
      } else {
        reply = HandleControl(cmd);
        reply["reply"] = cmd["cmd"];
      }
      Emit(reply);
    }
  }
  // EOF: whoever drove this replica is gone. A detached replica goes on
  // serving; any other (mid-build, mid-restore, supervised) must not outlive
  // its driver, or a half-restored replica could linger unverified.
  bool detached_now;
  {
    std::lock_guard lock(state_mu);
    detached_now = detached;
  }
  if (!detached_now) {
    Log("control channel closed before detach; exiting");
    exit_code = 0;
    asio::post(ioc, [this] { ioc.stop(); });
  }
}

json ReplicaServer::Impl::HandleControl(const json& cmd) {
  const std::string name = cmd["cmd"].get<std::string>();
  auto fail = [](const std::string& e) { return json{{"ok", false}, {"error", e}}; };
  const ReplicaState st = state();

  if (name == "status") {
    json r = {{"ok", true}, {"state", StateName(st)}, {"port", bound_port.load()}, {"pid", ::getpid()}};
    std::lock_guard lock(state_mu);
    r["instance"] = instance;
    r["detached"] = detached;
    return r;
  }
  if (name == "detach") {
    std::lock_guard lock(state_mu);
    detached = true;
    return {{"ok", true}};
  }
  if (name == "before_capture") {
    if (!SetState(ReplicaState::kQuiescing)) return fail(std::string("cannot capture in state ") + StateName(st));
    // Stop taking connections and close the listener.
    OnIo([&] {
      boost::system::error_code ec;
      if (acceptor) acceptor->close(ec);
      acceptor.reset();
      StopKeepWarm();  // a keep-warm request already queued is waited for below, like any other
    });
    // Let in-flight requests finish, then close every connection.
    if (!WaitIdle(std::chrono::seconds(60))) {
      Status s = OnIo([&] { return Listen(opts.host, bound_port.load()); });
      SetState(ReplicaState::kWarm);
      return fail("in-flight requests did not finish within 60 s; resumed serving" +
                  (s.ok() ? std::string() : " (but could not reopen the listener: " + s.message() + ")"));
    }
    OnIo([&] { CloseSessions(); });
    // Drop what is cheap to re-create: KV caches and scratch buffers, and
    // the weights' device memory (streamed back after a restore).
    Status released;
    std::string digest;
    RunOnWorker([&] {
      digest = model->Digest();  // while the weights are still on the device (a GPU model hashes them there)
      model->ReleaseScratch();
      released = model->ReleaseDevice();
    });
    if (released.ok() && !model->DeviceMemoryReport().empty()) Log(model->DeviceMemoryReport());
    if (!released.ok()) {
      Status s = OnIo([&] { return Listen(opts.host, bound_port.load()); });
      SetState(ReplicaState::kWarm);
      return fail("releasing device memory: " + released.message() + "; resumed serving" +
                  (s.ok() ? std::string() : " (but could not reopen the listener: " + s.message() + ")"));
    }
    // The sessions' sockets close on the io thread; make sure none is left.
    std::vector<std::string> socks;
    for (int i = 0; i < 100; ++i) {
      socks = OpenSockets();
      if (socks.empty()) break;
      OnIo([] {});
      ::usleep(10 * 1000);
    }
    if (!socks.empty()) {
      std::string list;
      for (const auto& s : socks) list += " " + s;
      return fail("sockets still open after closing every connection:" + list);
    }
    SetState(ReplicaState::kFrozen);
    // The agent API's registered regions: files the snapshot must carry.
    return {{"ok", true}, {"digest", digest}, {"instance", instance}, {"state", "frozen"},
            {"weights_files", model->weight_files()}};
  }
  if (name == "after_restore") {
    if (st != ReplicaState::kFrozen && st != ReplicaState::kRestored) {
      return fail(std::string("after_restore needs state frozen, not ") + StateName(st));
    }
    if (!cmd.contains("port") || !cmd["port"].is_number_integer()) return fail("after_restore needs an integer \"port\"");
    if (cmd.contains("instance") && (!cmd["instance"].is_string() || cmd["instance"].get_ref<const std::string&>().empty())) {
      return fail("after_restore: \"instance\" must be a non-empty string");
    }
    auto words = RestoreSeedWords(cmd);
    if (!words.ok()) return fail(words.status().message());
    auto handoff = ParseDeviceWeights(cmd, *model);
    if (!handoff.ok()) return fail(handoff.status().message());
    const auto t_restore = Clock::now();
    SetState(ReplicaState::kRestored);
    {
      // A new identity and new random state: everything else this process
      // holds is a copy of the build's, shared with every other replica.
      std::lock_guard lock(state_mu);
      boot_kind = "restored";
      if (cmd.contains("instance")) instance = cmd["instance"].get<std::string>();
      std::seed_seq seq(words->begin(), words->end());
      rng.seed(seq);
      detached = false;
    }
    // Device memory first: nothing is served before the weights are back.
    // From the restorer's device memory when it handed it over; from the
    // weights file when it did not, or when taking it failed (the reply's
    // device_weights_error says why: the handoff is an optimisation, the
    // file is on this host either way).
    Result<double> uploaded = 0.0;
    std::string handoff_error;
    RunOnWorker([&] {
      if (*handoff) {
        uploaded = model->AdoptDevice(**handoff);
        if (uploaded.ok()) return;
        handoff_error = uploaded.status().message();
      }
      uploaded = model->RestoreDevice();
    });
    if (!handoff_error.empty()) Log("weights handoff failed, uploaded from the file instead: " + handoff_error);
    if (!uploaded.ok()) return fail("restoring device memory: " + uploaded.status().message());
    const auto t_listen = Clock::now();
    const std::string host = cmd.value("host", opts.host);
    const int port = cmd["port"].get<int>();
    Status s = OnIo([&] { return Listen(host, port); });
    if (!s.ok()) return fail(s.message());
    opts.host = host;
    const double listen_ms = MsBetween(t_listen, Clock::now());
    // Re-check itself: the warm state must hash to what the build recorded.
    const auto t_digest = Clock::now();
    const std::string digest = model->Digest();
    const double digest_ms = MsBetween(t_digest, Clock::now());
    // This command's own steps, for the restorer's table (it reports them as
    // server_<name>): how the weights came back and what followed.
    json timings = json::object();
    if (*uploaded > 0) {
      timings["device_restore"] = *uploaded;
      for (const auto& [phase, ms] : model->device_phases_ms()) {
        if (phase.rfind("restore_", 0) == 0) timings[phase.substr(8)] = ms;
      }
    }
    timings["listen"] = listen_ms;
    timings["digest"] = digest_ms;
    timings["total"] = MsBetween(t_restore, Clock::now());
    {
      std::lock_guard lock(metrics.mu);
      metrics.phase_ms["restore_digest"] = digest_ms;
      metrics.phase_ms["restore_rebind_and_digest"] = MsBetween(t_restore, Clock::now());
      if (*uploaded > 0) {
        // The whole device restore, then the model's own parts of it (weight upload, graph capture...).
        metrics.phase_ms["restore_device"] = *uploaded;
        for (const auto& [phase, ms] : model->device_phases_ms()) {
          if (phase.rfind("restore_", 0) == 0) metrics.phase_ms[phase] = ms;
        }
      }
      restore_started = t_restore;
      // This host's monotonic clock: the build host's readings mean nothing here.
      metrics.last_request = Clock::now();
    }
    SetState(ReplicaState::kVerifying);
    json reply = {{"ok", true}, {"digest", digest}, {"port", bound_port.load()}, {"instance", instance},
                  {"timings_ms", timings}};
    if (!handoff_error.empty()) reply["device_weights_error"] = handoff_error;
    return reply;
  }
  if (name == "mark_ready") {
    if (st != ReplicaState::kVerifying) return fail(std::string("mark_ready needs state verifying, not ") + StateName(st));
    {
      std::lock_guard lock(metrics.mu);
      metrics.phase_ms["restore_to_ready"] = MsBetween(restore_started, Clock::now());
    }
    SetState(ReplicaState::kWarm);
    return {{"ok", true}};
  }
  if (name == "resume") {
    if (st != ReplicaState::kFrozen) return fail(std::string("resume needs state frozen, not ") + StateName(st));
    Result<double> uploaded = 0.0;
    RunOnWorker([&] { uploaded = model->RestoreDevice(); });
    if (!uploaded.ok()) return fail("restoring device memory: " + uploaded.status().message());
    const int port = cmd.value("port", bound_port.load());
    Status s = OnIo([&] { return Listen(opts.host, port); });
    if (!s.ok()) return fail(s.message());
    SetState(ReplicaState::kWarm);
    return {{"ok", true}, {"port", bound_port.load()}};
  }
  return fail("unknown command '" + name + "'");
}

// ---------------------------------------------------------------- public

ReplicaServer::ReplicaServer(ServerOptions opts, Logger log) : impl_(std::make_unique<Impl>(std::move(opts), std::move(log))) {}

ReplicaServer::~ReplicaServer() {
  Stop();
  auto& i = *impl_;
  if (i.control_thread.joinable()) {
    char c = 1;
    (void)!::write(i.wake_pipe[1], &c, 1);
    i.control_thread.join();
    ::close(i.wake_pipe[0]);
    ::close(i.wake_pipe[1]);
  }
  if (i.boot_thread.joinable()) i.boot_thread.join();
  {
    std::lock_guard lock(i.q_mu);
    i.stopping = true;
    i.q_cv.notify_all();
  }
  if (i.worker.joinable()) i.worker.join();
}

int ReplicaServer::port() const { return impl_->bound_port.load(); }
ReplicaState ReplicaServer::state() const { return impl_->state(); }

void ReplicaServer::Stop() {
  asio::post(impl_->ioc, [this] { impl_->ioc.stop(); });
}

int ReplicaServer::Run() {
  auto& i = *impl_;
  Status s = i.Listen(i.opts.host, i.opts.port);
  if (!s.ok()) {
    i.Log("error: " + s.message());
    i.SetState(ReplicaState::kFailed, s.message());
    return 2;
  }
  {
    std::lock_guard lock(i.metrics.mu);
    i.metrics.phase_ms["process_start_to_listen"] = MsBetween(i.process_start, Clock::now());
  }
  asio::signal_set signals(i.ioc, SIGTERM, SIGINT);
  signals.async_wait([&](boost::system::error_code ec, int sig) {
    if (ec) return;
    i.Log(std::string("got ") + strsignal(sig) + ", stopping");
    boost::system::error_code ignored;
    if (i.acceptor) i.acceptor->close(ignored);
    i.CloseSessions();
    i.ioc.stop();
  });
  i.worker = std::thread([&] { i.WorkerLoop(); });
  i.boot_thread = std::thread([&] { i.Boot(); });
  if (i.opts.control_in_fd >= 0 && !i.control_thread.joinable()) {
    // Blocked in poll() most of its life, also while the process is frozen
    // and dumped; woken through wake_pipe when the server is destroyed.
    if (::pipe2(i.wake_pipe, O_CLOEXEC) != 0) {
      i.Log("error: pipe: " + std::string(strerror(errno)));
      return 2;
    }
    i.control_thread = std::thread([&] { i.ControlLoop(); });
  }
  i.ioc.run();
  {
    std::lock_guard lock(i.q_mu);
    i.stopping = true;
    i.q_cv.notify_all();
  }
  if (i.boot_thread.joinable()) i.boot_thread.join();
  if (i.worker.joinable()) i.worker.join();
  return i.exit_code.load();
}

}  // namespace hotboot
