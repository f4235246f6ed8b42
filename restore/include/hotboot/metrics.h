// What an operator watches of one `hotboot restore`: its outcome, phases,
// fetched bytes and the supervised replica, as Prometheus text (exposition
// format 0.0.4). In both capture modes: a transparent server has no /metrics
// of ours, so the supervisor serves these (MetricsServer) or writes them as a
// node-exporter textfile (WriteMetricsTextfile).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "hotboot/status.h"

namespace hotboot {

// Every outcome a restore can have, in the order they are rendered; each is a
// sample of hotboot_restore_outcome, 1 for the current one and 0 for the rest.
// "restoring" while it runs.
inline constexpr const char* kRestoreOutcomes[] = {"restoring", "ready",   "not_ready", "incompatible",
                                                   "corrupt",   "untrusted", "timeout", "failed"};

struct RestoreMetrics {
  std::string outcome = "restoring";  // one of kRestoreOutcomes
  double start_time_unix_s = 0;       // when the restoring process started (wall clock)
  double time_to_ready_s = -1;        // < 0: not ready (yet)
  std::map<std::string, double> phase_s;  // phase name -> seconds
  std::string current_phase;              // the phase under way ("" once done)
  // The snapshot, as an info metric.
  std::string snapshot;  // what was given (path or reference)
  std::string digest;    // warm-state digest, or the manifest digest of a registry snapshot
  std::string capture_mode;  // "cooperative" | "transparent" | "" when unknown (not opened)
  std::string source;        // "file" | "oci" | "https"
  std::string replica_mode;  // "restored" | "cold"
  std::string instance;
  // Fetched bytes of a remote snapshot (all zero for a local file).
  bool fetched = false;
  uint64_t fetch_network_bytes = 0, fetch_cache_bytes = 0, fetch_skipped_bytes = 0;
  // The supervised replica.
  bool replica_up = false;
  int port = 0;
  double keep_warm_interval_s = 0;  // 0: off
  uint64_t keep_warm_requests = 0;
  uint64_t keep_warm_failures = 0;
  double keep_warm_last_latency_s = -1;  // < 0: none sent yet
  double idle_s = -1;                    // seconds since the replica was last seen busy (< 0: not observed)
};

// The outcome name for a failed restore's status code ("failed" for codes
// without a name of their own); `not_ready` when the message says the
// readiness verification failed.
std::string OutcomeFor(Code code, const std::string& message);

// Prometheus text exposition format 0.0.4, every family with HELP and TYPE.
std::string RenderPrometheus(const RestoreMetrics& m);
// A label value escaped as the format wants it: backslash, double quote and
// newline as \\, \" and \n.
std::string EscapeLabelValue(const std::string& v);

// Writes `text` to `path` atomically: a temporary beside it (O_EXCL |
// O_NOFOLLOW, "<path>.tmp.<pid>", which node-exporter's *.prom glob skips),
// fsync, rename. The file is world-readable (0644).
Status WriteMetricsTextfile(const std::string& path, const std::string& text);

// GET /metrics on host:port, served by one thread of its own (Boost.Beast),
// `render` called per request (it must be thread-safe). Any other path is
// 404, another method 405. Stops (and joins) on destruction.
class MetricsServer {
 public:
  static Result<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port,
                                                      std::function<std::string()> render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  int port() const;  // the bound port (useful with port 0)
  uint64_t requests() const;

  struct Impl;

 private:
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hotboot
