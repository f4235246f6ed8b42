// What push, pull and restore share for snapshots kept elsewhere: the
// registry/TLS/cache options, the fetching source, the progress line.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "hotboot/fetch.h"

namespace hotboot::cli {

struct RemoteArgs {
  std::string authfile;
  std::string ca_cert;
  bool tls_verify = true;
  bool plain_http = false;
  std::string cache_dir;
  int connections = 8;
};

// --authfile, --ca-cert, --tls-verify, --plain-http; with_cache adds
// --cache-dir and --connections.
void AddRemoteOptions(CLI::App& app, RemoteArgs* a, bool with_cache);
fetch::RemoteOptions RemoteOptionsOf(const RemoteArgs& a);
// True for oci://... and http(s)://... (a snapshot that is not a local file).
bool IsRemoteSnapshot(const std::string& s);

// Progress of a transfer on stderr: on a terminal one line redrawn (bytes,
// rate, ETA); with json_events one JSON object per line
// ({"event":"progress",...}) at most 5 times a second; otherwise nothing
// until the end. Never on stdout (that is the result's).
fetch::ProgressFn ProgressPrinter(const std::string& label, bool json_events);
// Ends a redrawn line.
void EndProgress();

// Opens `ref` for reading while it arrives (node cache: a.cache_dir or its default).
// Its temporaries are registered with `job` (host/job.h).
Result<std::shared_ptr<fetch::RemoteSnapshot>> OpenRemote(const std::string& ref, const RemoteArgs& a,
                                                          bool json_events, std::shared_ptr<host::Job> job);
nlohmann::json FetchJson(const fetch::FetchStats& s);

}  // namespace hotboot::cli
