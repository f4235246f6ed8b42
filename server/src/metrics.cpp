#include <sstream>

#include "server_impl.h"

namespace hotboot {

std::string Metrics::Render(const std::string& state, const std::string& instance, const std::string& boot_kind) {
  static const char* kStates[] = {"cold", "loading", "warming", "warm", "quiescing", "frozen", "restored", "verifying", "failed"};
  std::lock_guard lock(mu);
  std::ostringstream o;
  o << "# HELP hotboot_info Replica identity.\n# TYPE hotboot_info gauge\n";
  o << "hotboot_info{instance=\"" << instance << "\",boot=\"" << boot_kind << "\",version=\"" HOTBOOT_VERSION "\"} 1\n";
  o << "# HELP hotboot_state Current lifecycle state (1 for the current one).\n# TYPE hotboot_state gauge\n";
  for (const char* s : kStates) o << "hotboot_state{state=\"" << s << "\"} " << (state == s ? 1 : 0) << "\n";
  o << "# HELP hotboot_boot_phase_seconds Time spent in each boot phase.\n# TYPE hotboot_boot_phase_seconds gauge\n";
  for (const auto& [k, v] : phase_ms) o << "hotboot_boot_phase_seconds{phase=\"" << k << "\"} " << v / 1000 << "\n";
  o << "# HELP hotboot_warmup_latency_seconds Warmup latency per request shape and batch size.\n"
       "# TYPE hotboot_warmup_latency_seconds gauge\n";
  for (const auto& [k, v] : warmup) {
    o << "hotboot_warmup_latency_seconds{shape=\"" << k << "\",iteration=\"first\"} " << v.first_ms / 1000 << "\n";
    o << "hotboot_warmup_latency_seconds{shape=\"" << k << "\",iteration=\"steady\"} " << v.steady_ms / 1000 << "\n";
  }
  o << "# HELP hotboot_http_responses_total HTTP responses by status code.\n# TYPE hotboot_http_responses_total counter\n";
  for (const auto& [k, v] : responses) o << "hotboot_http_responses_total{code=\"" << k << "\"} " << v << "\n";
  o << "# HELP hotboot_generate_seconds Latency of /v1/generate.\n# TYPE hotboot_generate_seconds summary\n";
  o << "hotboot_generate_seconds_sum " << generate_ms_sum / 1000 << "\n";
  o << "hotboot_generate_seconds_count " << generate_count << "\n";
  o << "# HELP hotboot_tokens_generated_total Tokens generated.\n# TYPE hotboot_tokens_generated_total counter\n";
  o << "hotboot_tokens_generated_total " << tokens_generated << "\n";
  o << "# HELP hotboot_seconds_since_last_request Seconds since the last real /v1/generate came or was answered "
       "(keep-warm requests do not count; restarts at a restore).\n# TYPE hotboot_seconds_since_last_request gauge\n";
  o << "hotboot_seconds_since_last_request "
    << std::chrono::duration<double>(Clock::now() - last_request).count() << "\n";
  o << "# HELP hotboot_keep_warm_interval_seconds Idle time after which the server sends itself a keep-warm request "
       "(0: off).\n# TYPE hotboot_keep_warm_interval_seconds gauge\n";
  o << "hotboot_keep_warm_interval_seconds " << keep_warm_interval_s << "\n";
  o << "# HELP hotboot_keep_warm_requests_total Synthetic keep-warm requests run (not in the request counters).\n"
       "# TYPE hotboot_keep_warm_requests_total counter\n";
  o << "hotboot_keep_warm_requests_total " << keep_warm_count << "\n";
  if (keep_warm_last_ms >= 0) {
    o << "# HELP hotboot_keep_warm_last_latency_seconds Latency of the last keep-warm request.\n"
         "# TYPE hotboot_keep_warm_last_latency_seconds gauge\n";
    o << "hotboot_keep_warm_last_latency_seconds " << keep_warm_last_ms / 1000 << "\n";
  }
  return o.str();
}

}  // namespace hotboot
