// Internals of ReplicaServer shared by its translation units.
#pragma once

#include <atomic>
#include <utility>  // before Boost 1.74 asio: it uses std::exchange
#include <boost/asio.hpp>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "hotboot/replica_server.h"

namespace hotboot {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Boot and request measurements, exported by /metrics (Prometheus text).
struct Metrics {
  std::mutex mu;
  std::map<std::string, double> phase_ms;  // phase -> milliseconds
  struct Shape {
    double first_ms = 0;
    double steady_ms = 0;
  };
  std::map<std::string, Shape> warmup;  // "short_b1" -> latencies
  std::map<int, uint64_t> responses;    // HTTP status -> count
  uint64_t generate_count = 0;
  double generate_ms_sum = 0;
  uint64_t tokens_generated = 0;
  // Keep-warm (ServerOptions::keep_warm_interval_s). Its synthetic requests
  // are counted here only, never in responses/generate_*/tokens_generated.
  double keep_warm_interval_s = 0;
  uint64_t keep_warm_count = 0;
  double keep_warm_last_ms = -1;                  // < 0: none yet
  Clock::time_point last_request = Clock::now();  // last real /v1/generate (arrival or answer)
  std::string Render(const std::string& state, const std::string& instance, const std::string& boot_kind);
};

// One generate job for the inference worker.
struct GenJob {
  std::vector<int32_t> prompt;
  int max_tokens = 0;
  std::function<void(Result<GenerateResult>)> done;  // called on the worker thread
};

class HttpSession;

struct ReplicaServer::Impl {
  Impl(ServerOptions o, Logger l);

  ServerOptions opts;
  Logger log;
  asio::io_context ioc{1};
  std::unique_ptr<tcp::acceptor> acceptor;
  std::atomic<int> bound_port{0};
  const Clock::time_point process_start = Clock::now();

  mutable std::mutex state_mu;
  ReplicaState state_ = ReplicaState::kCold;
  std::string fail_reason;
  std::string instance;
  std::string boot_kind = "cold";
  std::mt19937_64 rng;
  bool detached = false;

  std::unique_ptr<Model> model;
  Metrics metrics;

  // Inference worker.
  std::thread worker;
  std::mutex q_mu;
  std::condition_variable q_cv;
  std::deque<GenJob> queue;
  std::deque<std::function<void()>> tasks;  // run on the worker between batches
  int inflight = 0;                          // jobs queued or running
  std::condition_variable idle_cv;
  bool stopping = false;

  // Live HTTP sessions, closed before a capture.
  std::mutex sessions_mu;
  std::set<std::weak_ptr<HttpSession>, std::owner_less<std::weak_ptr<HttpSession>>> sessions;

  std::thread boot_thread;
  std::thread control_thread;
  int wake_pipe[2] = {-1, -1};
  std::mutex out_mu;  // control_out_fd writes
  std::atomic<bool> events_enabled{true};
  std::atomic<int> exit_code{0};

  ReplicaState state() const;
  // Moves to `to` when the lifecycle allows it; emits a state event.
  bool SetState(ReplicaState to, const std::string& why = "");
  void Emit(const nlohmann::json& j);
  void Log(const std::string& s) { if (log) log(s); }

  Status Listen(const std::string& host, int port);  // on the io thread
  void DoAccept();
  void CloseSessions();
  void Boot();
  bool BootSteps();
  void WorkerLoop();
  // Queues a job; false when the server is not taking requests.
  bool Submit(GenJob job);
  // Runs fn on the worker thread between batches and waits for it.
  void RunOnWorker(const std::function<void()>& fn);
  bool WaitIdle(std::chrono::milliseconds timeout);

  // Control channel.
  void ControlLoop();
  nlohmann::json HandleControl(const nlohmann::json& cmd);
  // Runs fn on the io thread and waits for its result.
  template <typename F>
  auto OnIo(F fn) -> decltype(fn());

  std::string NewRequestId();

  // Keep-warm. Everything here lives on the io thread.
  struct KeepWarmShape {
    std::vector<int32_t> prompt;
    int max_tokens;
  };
  std::vector<KeepWarmShape> keep_warm_shapes;  // the warmup shapes at batch 1, set by the boot
  std::unique_ptr<asio::steady_timer> keep_warm_timer;
  bool keep_warm_inflight = false;
  size_t keep_warm_next = 0;
  Clock::time_point last_activity = Clock::now();  // a real request, or a keep-warm one, came or ended
  // A real request came or was answered: resets the idle clock.
  void NoteRealRequest();
  // Entered warm (boot, mark_ready, resume): the idle clock starts now, the
  // timer is armed. Posted to the io thread by SetState.
  void StartKeepWarm();
  void StopKeepWarm();
  void ArmKeepWarm(Clock::duration after);
  void KeepWarmTick();
  Clock::time_point restore_started = Clock::now();
};

template <typename F>
auto ReplicaServer::Impl::OnIo(F fn) -> decltype(fn()) {
  std::promise<decltype(fn())> p;
  auto fut = p.get_future();
  asio::post(ioc, [&] {
    if constexpr (std::is_void_v<decltype(fn())>) {
      fn();
      p.set_value();
    } else {
      p.set_value(fn());
    }
  });
  return fut.get();
}

// Starts an HTTP session on an accepted socket.
void StartHttpSession(ReplicaServer::Impl* srv, tcp::socket socket);

}  // namespace hotboot
