// The reference inference server: a Boost.Beast HTTP front (/livez, /readyz,
// /v1/generate, /metrics) over the model runtime, the replica lifecycle, and
// the control channel hotboot uses around a capture (server/CONTROL.md).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "hotboot/model.h"
#include "hotboot/status.h"

namespace hotboot {

enum class ReplicaState { kCold, kLoading, kWarming, kWarm, kQuiescing, kFrozen, kRestored, kVerifying, kFailed };
const char* StateName(ReplicaState s);
// The lifecycle's legal moves (DESIGN.md "Replica lifecycle").
bool TransitionAllowed(ReplicaState from, ReplicaState to);

struct ServerOptions {
  std::string model_path;
  std::string host = "127.0.0.1";
  int port = 0;  // 0: an ephemeral port (reported in the log and state events)
  int threads = 0;
  std::string device = "auto";  // LoadOptions::device
  int max_batch = 4;
  int max_tokens_limit = 256;
  size_t max_body_bytes = 1 << 20;
  // Control commands as JSON lines on control_in_fd, replies/events on
  // control_out_fd (normally 0 and 1); -1: no control channel.
  int control_in_fd = -1;
  int control_out_fd = -1;
  // Keep-warm: when no request has come for this long (seconds), the server
  // sends itself one synthetic request of a warmup shape through the
  // inference queue, so its caches (and a GPU's clocks) do not go cold.
  // 0: off. Never while captured (quiescing/frozen/restored/verifying).
  double keep_warm_interval_s = 0;
  // Loads the model; tests inject a fake. Default: Model::Load.
  std::function<Result<std::unique_ptr<Model>>(const std::string&, LoadTimings*)> loader;
};

using Logger = std::function<void(const std::string& line)>;

// Run's exit code when the model cannot be served on this host's device (a
// GPU-only model with --device cpu, or auto without a usable GPU); 1 is any
// other boot failure, 2 a listener that could not bind.
inline constexpr int kExitNotServableHere = 3;

class ReplicaServer {
 public:
  ReplicaServer(ServerOptions opts, Logger log);
  ~ReplicaServer();
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // Binds the listener (errors: port in use...), starts the boot (load,
  // warm up) in the background and serves until Stop() or SIGTERM/SIGINT.
  // Returns the process exit code.
  int Run();
  // Thread-safe; Run returns soon after.
  void Stop();

  // For tests: the bound port once Run has started listening (0 before).
  int port() const;
  ReplicaState state() const;

  struct Impl;  // server/src/server_impl.h

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace hotboot
