#include "cli_remote.h"

#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "cli_common.h"
#include "hotboot/cache.h"

namespace hotboot::cli {

using json = nlohmann::json;

namespace {
std::mutex g_progress_mu;
}  // namespace

void AddRemoteOptions(CLI::App& app, RemoteArgs* a, bool with_cache) {
  app.add_option("--authfile", a->authfile,
                 "Registry credentials (containers-auth.json / docker config.json format; default: "
                 "$REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json)");
  app.add_option("--ca-cert", a->ca_cert, "PEM file of CAs to trust for TLS instead of the system store")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-verify", a->tls_verify, "Check the server's TLS certificate (default true)");
  app.add_flag("--plain-http", a->plain_http, "Talk to an oci:// registry over plain http (no TLS)");
  if (with_cache) {
    app.add_option("--cache-dir", a->cache_dir,
                   std::string("The node cache (default $HOTBOOT_CACHE_DIR, else ") + fetch::kDefaultCacheDir + ")");
    app.add_option("--connections", a->connections, "Parallel connections for fetching (1-64)")
        ->check(CLI::Range(1, 64));
  }
}

fetch::RemoteOptions RemoteOptionsOf(const RemoteArgs& a) {
  fetch::RemoteOptions o;
  o.tls.ca_cert = a.ca_cert;
  o.tls.verify = a.tls_verify;
  o.authfile = a.authfile;
  o.plain_http = a.plain_http;
  o.user_agent = std::string("hotboot/") + HOTBOOT_VERSION;
  return o;
}

bool IsRemoteSnapshot(const std::string& s) { return fetch::IsOciRef(s) || fetch::IsHttpUrl(s); }

fetch::ProgressFn ProgressPrinter(const std::string& label, bool json_events) {
  const bool tty = ::isatty(2) == 1;
  if (Quiet() || (!tty && !json_events)) return nullptr;
  auto last = std::make_shared<double>(-1);
  return [label, tty, json_events, last](const fetch::Progress& p) {
    std::lock_guard lk(g_progress_mu);
    // At most 5 lines a second, and the last one.
    if (p.elapsed_s - *last < 0.2 && p.done < p.total) return;
    *last = p.elapsed_s;
    const double rate = p.elapsed_s > 0 ? static_cast<double>(p.done) / p.elapsed_s : 0;
    const double eta = rate > 0 && p.total > p.done ? static_cast<double>(p.total - p.done) / rate : 0;
    if (json_events) {
      LogEvent({{"event", "progress"}, {"what", p.what}, {"bytes", p.done}, {"total", p.total},
                {"rate_bytes_per_s", static_cast<uint64_t>(rate)}, {"eta_s", eta}, {"elapsed_s", p.elapsed_s}});
      return;
    }
    if (!tty) return;
    char eta_text[32];
    std::snprintf(eta_text, sizeof eta_text, "ETA %.0f s", eta);
    StatusLine("fetch", label + " " + HumanBytes(p.done) + " / " + HumanBytes(p.total) + "  " +
                            HumanBytes(static_cast<uint64_t>(rate)) + "/s  " + eta_text);
  };
}

void EndProgress() { EndStatusLine(); }

Result<std::shared_ptr<fetch::RemoteSnapshot>> OpenRemote(const std::string& ref, const RemoteArgs& a,
                                                          bool json_events, std::shared_ptr<host::Job> job) {
  fetch::FetchOptions o;
  o.remote = RemoteOptionsOf(a);
  o.cache_dir = fetch::ResolveCacheDir(a.cache_dir);
  o.connections = a.connections;
  o.progress = ProgressPrinter("fetch", json_events);
  o.job = std::move(job);
  return fetch::RemoteSnapshot::Open(ref, o);
}

json FetchJson(const fetch::FetchStats& s) {
  json out = {{"source", s.source},       {"resolved", s.resolved},
          {"size", s.size},           {"bytes_fetched", s.bytes_fetched},
          {"bytes_from_cache", s.bytes_from_cache}, {"bytes_skipped", s.bytes_skipped},
          {"blobs_published", s.blobs_published},   {"fetch_ms", s.fetch_ms}};
  if (s.source == "oci") out["manifest_digest"] = s.resolved;
  return out;
}

}  // namespace hotboot::cli
