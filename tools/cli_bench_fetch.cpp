// `hotboot bench fetch`: what a new host waits for when its snapshot lives
// in a registry. A network namespace the bench creates holds Debian's
// docker-registry and nginx; its loopback is shaped with tc (tbf) to each
// rate; every command that moves bytes runs inside it (`nsenter --net`). Per
// preset and rate, side by side: (a) curl the whole file, then restore it
// from disk; (b) `hotboot restore oci://...` streamed, as on a fresh host;
// (c) the same with the node cache and weights kept; (d) a cold boot of the
// server. A benchmark, not a test (STYLE.md 9): real processes, real bytes.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "bench_env.h"
#include "cli_common.h"
#include "commands.h"
#include "hotboot/manifest.h"
#include "hotboot/presets.h"
#include "hotboot/snapshot_file.h"

namespace hotboot::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using namespace bench;  // NOLINT: the pieces every bench shares (bench_env.h)

constexpr int kFirstReplicaPort = 18600;

struct FetchBenchArgs {
  std::vector<std::string> presets{"small", "1b"};
  std::vector<double> rates{1, 5, 10};
  int repeat = 1;
  std::string workdir;  // default $HOTBOOT_HOME/bench-fetch
  bool plain_http = false;
  bool json_out = false;
  bool keep_going = false;
  bool keep = false;
  bool rebuild = false;
};

// ---- the bench's directories and snapshots -----------------------------------

// The run (bench_env.h: directories, logs, the namespace with docker-registry
// and nginx), and what only this bench has.
struct Ctx : Run {
  Ctx() { next_port = kFirstReplicaPort; }

  const FetchBenchArgs* args = nullptr;
  Binaries bin;  // hotboot and hotboot-server, copied into the bench directory
  std::string cache, downloads, www;
  bool oci = false;  // hotboot push / restore oci:// exist

  std::string Ref(const std::string& preset) const { return "oci://" + ep.registry() + "/hotboot-bench/" + preset + ":v1"; }
};

// The preset's snapshot under the bench directory (bench_env.h).
Result<std::string> EnsureSnapshot(Ctx& c, const std::string& preset) {
  return bench::EnsureSnapshot(c.bin, c.home, c.weights, preset, c.args->rebuild, c.Log("build-" + preset));
}

// ---- what is measured ---------------------------------------------------------

// One `hotboot restore` inside the namespace, timed by the bench from just
// before it starts the process to the ready line (its time to ready counts
// from the process's start, which is the same instant within a clock tick;
// both are kept). Then it is stopped: SIGTERM to the supervising restore,
// which stops its replica and waits for it, as `hotboot demo` does.
struct RestoreRun {
  double wall_s = 0;
  double reported_s = 0;
  uint64_t bytes_fetched = 0, bytes_from_cache = 0;
  json timings_ms;
};

Result<RestoreRun> Restore(Ctx& c, const std::string& source, const std::vector<std::string>& extra,
                           const std::string& what) {
  const std::vector<std::string> argv = RestoreArgv(c.bin.hotboot, source, c.next_port++, extra);
  const std::string log = c.Log(what);
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(auto child, Child::Start(c.ns->Exec(argv), log, true));
  auto line = child->ReadLine(kRestoreTimeout);
  RestoreRun r;
  r.wall_s = SecondsSince(t0);
  if (!line.ok()) return line.status().Prefixed(what);
  auto report = ParseRestoreLine(*line, log);
  if (!report.ok()) {
    child->Stop();
    return report.status().Prefixed(what);
  }
  r.reported_s = report->time_to_ready_s;
  r.timings_ms = report->timings_ms;
  r.bytes_fetched = report->bytes_fetched;
  r.bytes_from_cache = report->bytes_from_cache;
  // 0: it stopped its replica; 143: SIGTERM came before it began supervising
  // (the replica exits when its control channel closes, server/CONTROL.md).
  if (const int st = child->Stop(); !WIFEXITED(st) || (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 128 + SIGTERM)) {
    Note("warning: " + what + ": hotboot restore " + Child::Describe(st) + " when stopped (log: " + log + ")");
  }
  WaitForReplicasGone(c, what);
  return r;
}

// curl of a whole file from nginx inside the namespace; its wall time.
Result<double> Download(Ctx& c, const std::string& name, const std::string& to, const std::string& what) {
  std::vector<std::string> argv = {"curl", "-sS", "--fail", "-o", to};
  for (const auto& o : c.ep.curl_tls()) argv.push_back(o);
  argv.push_back(c.ep.file_url(name));
  const auto t0 = Clock::now();
  HB_RETURN_IF_ERROR(RunCommand(c.ns->Exec(argv), c.Log(what)).status());
  return SecondsSince(t0);
}

// The reference server started cold inside the namespace, timed from just
// before it is started to the first 200 from GET /readyz (polled every
// 10 ms, as `hotboot demo` does), then stopped.
Result<double> ColdBoot(Ctx& c, const std::string& model, const std::string& what) {
  const int port = c.next_port++;
  const auto t0 = Clock::now();
  HB_ASSIGN_OR_RETURN(auto child,
                      Child::Start(c.ns->Exec({c.bin.server, "--model", model, "--port", std::to_string(port)}),
                                   c.Log(what), false));
  auto ready_s = WaitReadyz(*c.ns, port, *child, t0);
  child->Stop();
  WaitForReplicasGone(c, what);
  if (!ready_s.ok()) return ready_s.status().Prefixed(what);
  return ready_s;
}

// One preset at one rate, once.
struct Sample {
  uint64_t snapshot_bytes = 0;
  double local_restore_s = 0, local_cached_s = 0;
  double download_s = 0, downloaded_restore_s = 0;
  std::optional<double> streamed_s, cached_s;
  std::optional<double> streamed_https_s;  // restore https://... (nginx, Range), fresh host
  uint64_t bytes_fetched_https = 0;
  uint64_t bytes_fetched = 0, bytes_fetched_cached = 0, bytes_from_cache_cached = 0;
  double cold_s = 0, model_download_s = 0;
};

struct Preset {
  std::string name, snapshot, model;
  uint64_t snapshot_bytes = 0, model_bytes = 0;
};

// Restores from a local file: the stage (a) runs after its download, with an
// empty weights directory, then again with the weights in place.
Status MeasureLocal(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_ASSIGN_OR_RETURN(RestoreRun local, Restore(c, p.snapshot, {}, tag + "-local"));
  HB_ASSIGN_OR_RETURN(RestoreRun warm, Restore(c, p.snapshot, {}, tag + "-local-cached"));
  s->local_restore_s = local.wall_s;
  s->local_cached_s = warm.wall_s;
  Note("  restore from a local file: " + Fixed(local.wall_s) + " s, weights in place " + Fixed(warm.wall_s) + " s");
  return Status::Ok();
}

// (a): curl the whole file, then restore it from disk (empty weights directory).
Status MeasureDownloadThenRestore(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  const std::string file = c.downloads + "/" + p.name + ".hbsnap";
  std::error_code ec;
  fs::remove(file, ec);
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_ASSIGN_OR_RETURN(s->download_s, Download(c, p.name + ".hbsnap", file, tag + "-curl"));
  HB_ASSIGN_OR_RETURN(uint64_t got, FileSize(file));
  if (got != p.snapshot_bytes) {
    return Internal("curl wrote " + std::to_string(got) + " bytes to " + file + ", the snapshot has " +
                    std::to_string(p.snapshot_bytes));
  }
  HB_ASSIGN_OR_RETURN(RestoreRun r, Restore(c, file, {}, tag + "-downloaded"));
  s->downloaded_restore_s = r.wall_s;
  fs::remove(file, ec);
  Note("  (a) curl " + Fixed(s->download_s) + " s (" + Fixed(p.snapshot_bytes * 8 / s->download_s / 1e9) +
       " Gbit/s) + restore " + Fixed(r.wall_s) + " s");
  return Status::Ok();
}

// (b) and (c): restore oci://... as on a fresh host (empty node cache, empty
// weights directory), then again with both kept.
Status MeasureStreamed(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_RETURN_IF_ERROR(EmptyDir(c.cache));
  std::vector<std::string> remote = c.ep.hotboot_remote();
  remote.insert(remote.end(), {"--cache-dir", c.cache});
  HB_ASSIGN_OR_RETURN(RestoreRun fresh, Restore(c, c.Ref(p.name), remote, tag + "-streamed"));
  HB_ASSIGN_OR_RETURN(RestoreRun cached, Restore(c, c.Ref(p.name), remote, tag + "-cached"));
  s->streamed_s = fresh.wall_s;
  s->bytes_fetched = fresh.bytes_fetched;
  s->cached_s = cached.wall_s;
  s->bytes_fetched_cached = cached.bytes_fetched;
  s->bytes_from_cache_cached = cached.bytes_from_cache;
  Note("  (b) streamed " + Fixed(fresh.wall_s) + " s (" + HumanBytes(fresh.bytes_fetched) + " fetched); (c) cached " +
       Fixed(cached.wall_s) + " s (" + HumanBytes(cached.bytes_fetched) + " fetched)");
  return Status::Ok();
}

// (b) from the file server: restore https://... (Range requests to nginx)
// as on a fresh host; the same server (a) downloads from.
Status MeasureStreamedHttps(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  HB_RETURN_IF_ERROR(EmptyDir(c.cache));
  std::vector<std::string> remote = c.ep.hotboot_remote();
  remote.insert(remote.end(), {"--cache-dir", c.cache});
  HB_ASSIGN_OR_RETURN(RestoreRun r, Restore(c, c.ep.file_url(p.name + ".hbsnap"), remote, tag + "-streamed-https"));
  s->streamed_https_s = r.wall_s;
  s->bytes_fetched_https = r.bytes_fetched;
  Note("  (b) from nginx: streamed " + Fixed(r.wall_s) + " s (" + HumanBytes(r.bytes_fetched) + " fetched)");
  return Status::Ok();
}

// (d), with what a fresh host pays first: the model's download at the rate.
Status MeasureModelDownload(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  const std::string file = c.downloads + "/" + p.name + ".safetensors";
  HB_ASSIGN_OR_RETURN(s->model_download_s, Download(c, p.name + ".safetensors", file, tag + "-curl-model"));
  std::error_code ec;
  fs::remove(file, ec);
  return Status::Ok();
}

// ---- results ------------------------------------------------------------------

struct Case {
  std::string preset;
  double rate = 0;
  std::vector<Sample> samples;
  std::vector<std::string> errors;
};

// The derived numbers of one sample (or of the medians).
struct Derived {
  double transfer_s, lower_bound_s, download_then_restore_s, overlap_efficiency, cached_vs_local;
};

Derived Derive(double rate, double local_restore_s, double local_cached_s, double download_then_restore_s,
               std::optional<double> streamed_s, std::optional<double> cached_s, uint64_t bytes_fetched) {
  Derived d{};
  d.transfer_s = static_cast<double>(bytes_fetched) * 8 / (rate * 1e9);
  d.lower_bound_s = std::max(d.transfer_s, local_restore_s);
  d.download_then_restore_s = download_then_restore_s;
  d.overlap_efficiency = streamed_s && *streamed_s > 0 ? d.lower_bound_s / *streamed_s : 0;
  d.cached_vs_local = cached_s && local_cached_s > 0 ? *cached_s / local_cached_s : 0;
  return d;
}

ojson SampleJson(const Case& k, const Sample& s) {
  // Without a streamed restore, its bytes are the file's: what (a) fetched.
  const uint64_t fetched = s.streamed_s ? s.bytes_fetched : s.snapshot_bytes;
  const Derived d = Derive(k.rate, s.local_restore_s, s.local_cached_s, s.download_s + s.downloaded_restore_s,
                           s.streamed_s, s.cached_s, fetched);
  ojson j = {{"bytes_fetched", fetched},
             {"transfer_s", d.transfer_s},
             {"local_restore_s", s.local_restore_s},
             {"lower_bound_s", d.lower_bound_s},
             {"download_s", s.download_s},
             {"downloaded_restore_s", s.downloaded_restore_s},
             {"download_then_restore_s", d.download_then_restore_s},
             {"streamed_s", s.streamed_s ? json(*s.streamed_s) : json(nullptr)},
             {"overlap_efficiency", s.streamed_s ? json(d.overlap_efficiency) : json(nullptr)},
             {"streamed_https_s", s.streamed_https_s ? json(*s.streamed_https_s) : json(nullptr)},
             {"https_bytes_fetched", s.bytes_fetched_https},
             {"cached_s", s.cached_s ? json(*s.cached_s) : json(nullptr)},
             {"cached_bytes_fetched", s.bytes_fetched_cached},
             {"local_cached_s", s.local_cached_s},
             {"cold_s", s.cold_s},
             {"model_download_s", s.model_download_s}};
  return j;
}

// The medians over the repeats, with the derived numbers from them.
ojson CaseJson(const Case& k, const FetchBenchArgs& a) {
  auto med = [&](const std::function<double(const Sample&)>& f) {
    std::vector<double> xs;
    for (const auto& s : k.samples) xs.push_back(f(s));
    return Median(xs);
  };
  const bool streamed = !k.samples.empty() && k.samples[0].streamed_s.has_value();
  const uint64_t fetched = static_cast<uint64_t>(
      med([&](const Sample& s) { return static_cast<double>(streamed ? s.bytes_fetched : s.snapshot_bytes); }));
  const double local = med([](const Sample& s) { return s.local_restore_s; });
  const double local_cached = med([](const Sample& s) { return s.local_cached_s; });
  const double dl = med([](const Sample& s) { return s.download_s; });
  const double dtr = med([](const Sample& s) { return s.download_s + s.downloaded_restore_s; });
  std::optional<double> st, ca;
  if (streamed) {
    st = med([](const Sample& s) { return s.streamed_s.value_or(0); });
    ca = med([](const Sample& s) { return s.cached_s.value_or(0); });
  }
  const Derived d = Derive(k.rate, local, local_cached, dtr, st, ca, fetched);
  // What the link reached in practice (curl from nginx to a file: on a small
  // machine TLS and the disk, not tbf, may set the pace): the bound again at
  // that rate.
  const uint64_t snap_bytes = k.samples.empty() ? 0 : k.samples[0].snapshot_bytes;
  const double link = dl > 0 ? static_cast<double>(snap_bytes) * 8 / dl / 1e9 : 0.0;
  const double bound_measured = link > 0 ? std::max(static_cast<double>(fetched) * 8 / (link * 1e9), local) : 0.0;
  std::optional<double> https;
  if (!k.samples.empty() && k.samples[0].streamed_https_s) {
    https = med([](const Sample& s) { return s.streamed_https_s.value_or(0); });
  }
  const uint64_t https_bytes =
      static_cast<uint64_t>(med([](const Sample& s) { return static_cast<double>(s.bytes_fetched_https); }));
  const double https_bound = std::max(static_cast<double>(https_bytes) * 8 / (k.rate * 1e9), local);
  const double cold = med([](const Sample& s) { return s.cold_s; });
  const double model_dl = med([](const Sample& s) { return s.model_download_s; });
  ojson j = {{"preset", k.preset},
             {"rate_gbit", k.rate},
             {"transport", a.plain_http ? "http" : "https"},
             {"repeat", k.samples.size()},
             {"snapshot_bytes", snap_bytes},
             {"bytes_fetched", fetched},
             {"bytes_fetched_is", streamed ? "streamed restore's fetch.bytes_fetched" : "the whole file (no oci restore)"},
             {"transfer_s", d.transfer_s},
             {"local_restore_s", local},
             {"lower_bound_s", d.lower_bound_s},
             {"download_s", dl},
             {"link_gbit_measured", link},
             {"lower_bound_measured_link_s", bound_measured},
             {"download_then_restore_s", d.download_then_restore_s},
             {"streamed_s", st ? json(*st) : json(nullptr)},
             {"overlap_efficiency", st ? json(d.overlap_efficiency) : json(nullptr)},
             {"streamed_target_met", st ? json(*st <= 1.15 * d.lower_bound_s) : json(nullptr)},
             {"overlap_efficiency_measured_link", st && *st > 0 ? json(bound_measured / *st) : json(nullptr)},
             {"streamed_https_s", https ? json(*https) : json(nullptr)},
             {"https_bytes_fetched", https_bytes},
             {"overlap_efficiency_https", https && *https > 0 ? json(https_bound / *https) : json(nullptr)},
             {"cached_s", ca ? json(*ca) : json(nullptr)},
             {"cached_bytes_fetched", static_cast<uint64_t>(med([](const Sample& s) {
                return static_cast<double>(s.bytes_fetched_cached);
              }))},
             {"local_cached_s", local_cached},
             {"cached_vs_local", ca ? json(d.cached_vs_local) : json(nullptr)},
             {"cached_target_met", ca ? json(*ca <= 1.2 * local_cached) : json(nullptr)},
             {"cold_s", cold},
             {"model_download_s", model_dl},
             {"cold_fresh_host_s", model_dl + cold}};
  ojson runs = ojson::array();
  for (const auto& s : k.samples) runs.push_back(SampleJson(k, s));
  j["runs"] = runs;
  if (!k.errors.empty()) j["errors"] = k.errors;
  return j;
}

std::string Cell(const ojson& j, const char* key, int digits = 2) {
  if (!j.contains(key) || j[key].is_null()) return "-";
  return Fixed(j[key].get<double>(), digits);
}

void PrintTable(FILE* out, const std::vector<ojson>& cases, const FetchBenchArgs& a, const std::string& netns) {
  std::fprintf(out, "hotboot bench fetch: docker-registry and nginx over %s in network namespace %s, its loopback shaped "
              "with tc tbf;\nmedians of %d; times to ready in seconds, each from the start of the process to the "
              "replica verified\n\n",
              a.plain_http ? "plain HTTP" : "HTTPS", netns.c_str(), a.repeat);
  std::fprintf(out, "%-6s %5s %10s %8s %8s %8s %10s %8s %6s %8s %8s %8s %6s %7s %6s %s\n", "preset", "Gbit", "fetched",
              "transfer", "local", "bound", "curl+rest", "streamed", "eff", "https", "cached", "local_c", "c/l",
              "cold", "link", "targets (b <= 1.15 bound, c <= 1.2 local_c)");
  for (const auto& j : cases) {
    std::string targets;
    if (j["streamed_s"].is_null()) {
      targets = "b, c not run (no oci restore)";
    } else {
      targets = std::string("b ") + (j["streamed_target_met"].get<bool>() ? "met" : "MISSED") + ", c " +
                (j["cached_target_met"].get<bool>() ? "met" : "MISSED");
    }
    if (j.contains("errors")) targets += "; " + std::to_string(j["errors"].size()) + " run(s) failed";
    std::fprintf(out, "%-6s %5s %10s %8s %8s %8s %10s %8s %6s %8s %8s %8s %6s %7s %6s %s\n",
                j["preset"].get<std::string>().c_str(), Fixed(j["rate_gbit"].get<double>(), 1).c_str(),
                HumanBytes(j["bytes_fetched"].get<uint64_t>()).c_str(), Cell(j, "transfer_s").c_str(),
                Cell(j, "local_restore_s").c_str(), Cell(j, "lower_bound_s").c_str(),
                Cell(j, "download_then_restore_s").c_str(), Cell(j, "streamed_s").c_str(),
                Cell(j, "overlap_efficiency").c_str(), Cell(j, "streamed_https_s").c_str(), Cell(j, "cached_s").c_str(),
                Cell(j, "local_cached_s").c_str(),
                Cell(j, "cached_vs_local").c_str(), Cell(j, "cold_s").c_str(), Cell(j, "link_gbit_measured").c_str(),
                targets.c_str());
  }
  std::fprintf(out, "\nfetched: bytes the streamed restore fetched (fetch.bytes_fetched); transfer = fetched * 8 / rate;\n"
              "local: restore from a local file, empty weights directory; bound = max(transfer, local);\n"
              "curl+rest: (a) curl of the whole file + restore from it; streamed: (b) restore oci://, empty node\n"
              "cache and weights directory; eff = bound / streamed; https: (b) from nginx, restore https://...;\n"
              "cached: (c) restore oci:// again, cache and weights kept; local_c: restore from a local file\n"
              "with the weights in place; c/l = cached / local_c;\n"
              "cold: the server's cold boot to GET /readyz 200 (model file local; add model_download_s in --json\n"
              "for a fresh host); link: Gbit/s curl achieved through the shaped loopback (below the rate: the\n"
              "machine, not the link, set the pace; --json has the bound and efficiency at that rate too).\n");
}

// ---- the run ------------------------------------------------------------------

Status PrepareDirs(Ctx& c, const FetchBenchArgs& a) {
  HB_RETURN_IF_ERROR(PrepareRunDirs(c, a.workdir, "bench-fetch"));
  HB_RETURN_IF_ERROR(MakeDirs(c.weights));
  // Every build, server and restore maps the weights from here (the snapshot
  // records it); the bench empties it to make a host look fresh.
  if (::setenv("HOTBOOT_WEIGHTS_DIR", c.weights.c_str(), 1) != 0) return ErrnoError("setenv", errno);
  c.cache = c.scratch + "/cache";
  c.downloads = c.scratch + "/downloads";
  c.www = c.scratch + "/www";
  for (const auto* d : {&c.cache, &c.downloads, &c.www}) HB_RETURN_IF_ERROR(MakeDirs(*d));
  return Status::Ok();
}

// nginx's docroot: the snapshot and the model, linked (same file system) or copied.
Status Publish(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::create_hard_link(from, to, ec);
  if (!ec) return Status::Ok();
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  return ec ? IoError("copy " + from + " to " + to + ": " + ec.message()) : Status::Ok();
}

Status PushSnapshot(Ctx& c, const Preset& p) {
  HB_ASSIGN_OR_RETURN(Pushed pushed, Push(c, c.bin.hotboot, p.snapshot, c.Ref(p.name), c.Log("push-" + p.name)));
  Note(p.name + ": pushed to " + c.Ref(p.name) + " in " + Fixed(pushed.seconds) + " s (" +
       HumanBytes(pushed.bytes_uploaded) + " uploaded)");
  return Status::Ok();
}

// The snapshots and models, made or found before anything is timed, and
// published in nginx's docroot.
Result<std::vector<Preset>> PreparePresets(Ctx& c) {
  std::vector<Preset> presets;
  for (const auto& name : c.args->presets) {
    Preset p;
    p.name = name;
    HB_ASSIGN_OR_RETURN(p.model, EnsureModel("", name));
    auto snap = EnsureSnapshot(c, name);
    if (!snap.ok()) return snap.status().Prefixed("snapshot of preset " + name);
    p.snapshot = *snap;
    HB_ASSIGN_OR_RETURN(p.snapshot_bytes, FileSize(p.snapshot));
    HB_ASSIGN_OR_RETURN(p.model_bytes, FileSize(p.model));
    HB_RETURN_IF_ERROR(Publish(p.snapshot, c.www + "/" + name + ".hbsnap"));
    HB_RETURN_IF_ERROR(Publish(p.model, c.www + "/" + name + ".safetensors"));
    presets.push_back(p);
  }
  return presets;
}

// One preset at the rate the loopback has now, once.
Status MeasureCase(Ctx& c, const Preset& p, const std::string& tag, Sample* s) {
  s->snapshot_bytes = p.snapshot_bytes;
  HB_RETURN_IF_ERROR(MeasureLocal(c, p, tag, s));
  HB_RETURN_IF_ERROR(MeasureDownloadThenRestore(c, p, tag, s));
  if (c.oci) {
    HB_RETURN_IF_ERROR(MeasureStreamed(c, p, tag, s));
    HB_RETURN_IF_ERROR(MeasureStreamedHttps(c, p, tag, s));
  }
  return MeasureModelDownload(c, p, tag, s);
}

// One repeat: the cold boots (they do not cross the link: once per preset,
// unshaped), then every rate and preset. A failed case is recorded when
// --keep-going, else returned.
Status RunRepeat(Ctx& c, const std::vector<Preset>& presets, int rep, std::vector<Case>* cases, bool* failed) {
  const FetchBenchArgs& a = *c.args;
  auto find = [&](const std::string& preset, double rate) -> Case& {
    return *std::find_if(cases->begin(), cases->end(),
                         [&](const Case& x) { return x.preset == preset && x.rate == rate; });
  };
  std::map<std::string, double> cold;
  for (const auto& p : presets) {
    Note(p.name + ": cold boot of the server (repeat " + std::to_string(rep + 1) + ")");
    auto t = ColdBoot(c, p.model, p.name + "-cold-r" + std::to_string(rep + 1));
    if (!t.ok()) {
      if (!a.keep_going) return t.status();
      NoteError(t.status().message());
      *failed = true;
      for (double r : a.rates) find(p.name, r).errors.push_back(t.status().message());
      continue;
    }
    cold[p.name] = *t;
    Note("  ready in " + Fixed(*t) + " s");
  }
  for (double rate : a.rates) {
    HB_RETURN_IF_ERROR(c.ns->Shape(rate).Prefixed("tc"));
    for (const auto& p : presets) {
      const std::string tag = p.name + "-" + Fixed(rate, 1) + "g-r" + std::to_string(rep + 1);
      Note(p.name + " at " + Fixed(rate, 1) + " Gbit/s, repeat " + std::to_string(rep + 1) + " of " +
           std::to_string(a.repeat));
      Sample s;
      s.cold_s = cold.count(p.name) ? cold[p.name] : 0;
      Case& k = find(p.name, rate);
      if (Status st = MeasureCase(c, p, tag, &s); !st.ok()) {
        if (!a.keep_going) return st.Prefixed(tag);
        NoteError(st.message());
        *failed = true;
        k.errors.push_back(st.message());
        continue;
      }
      k.samples.push_back(s);
    }
  }
  return Status::Ok();
}

int RunBenchFetch(const FetchBenchArgs& a) {
  if (Status s = Preflight("bench fetch", "network namespaces, tc, CRIU",
                           {"ip", "tc", "curl", "nginx", "docker-registry", "openssl"});
      !s.ok()) {
    return Failed(s);
  }
  Ctx c;
  c.args = &a;
  if (Status s = PrepareDirs(c, a); !s.ok()) return Failed(s);
  auto bin = PinBinaries(c.home);
  if (!bin.ok()) return Failed(bin.status().Prefixed("copying the executables"));
  c.bin = *bin;
  RunCleanup cleanup(c, a.keep, /*empty_weights=*/false, "logs, registry storage, certificates");
  Note("bench directory " + c.home + "; this run's files in " + c.scratch);
  // Without a push subcommand, `hotboot push --help` prints the top-level help and exits 0.
  auto push_help = RunCommand({c.bin.hotboot, "push", "--help"}, c.Log("push-help"), std::chrono::seconds(30));
  c.oci = push_help.ok() && push_help->find(" push [OPTIONS]") != std::string::npos;
  if (!c.oci) Note("warning: this hotboot has no `push`: cases (b) and (c) are not run");

  auto presets = PreparePresets(c);
  if (!presets.ok()) return Failed(presets.status());
  const std::string ns_name = "hotboot-bench-" + std::to_string(::getpid());
  auto servers = StartServers(c, ns_name, a.plain_http, c.www);
  if (!servers.ok()) return Failed(servers.status());
  if (c.oci) {
    for (const auto& p : *presets) {
      if (Status s = PushSnapshot(c, p); !s.ok()) return Failed(s.Prefixed("push " + p.name));
    }
  }
  std::vector<Case> cases;
  for (const auto& p : *presets) {
    for (double r : a.rates) cases.push_back({p.name, r, {}, {}});
  }
  bool failed = false;
  for (int rep = 0; rep < a.repeat; ++rep) {
    if (Status s = RunRepeat(c, *presets, rep, &cases, &failed); !s.ok()) return Failed(s);
  }

  std::vector<ojson> results;
  for (const auto& k : cases) results.push_back(CaseJson(k, a));
  if (a.json_out) {
    ojson arr = ojson::array();
    for (auto& j : results) arr.push_back(j);
    std::printf("%s\n", arr.dump(2).c_str());
    PrintTable(stderr, results, a, ns_name);  // for the person watching; stdout stays JSON
  } else {
    PrintTable(stdout, results, a, ns_name);
  }
  return failed ? kExitFailure : kExitOk;
}

}  // namespace

void AddBenchFetch(CLI::App& bench, Runner* run) {
  auto a = std::make_shared<FetchBenchArgs>();
  CLI::App* f = bench.add_subcommand(
      "fetch", "Restore from a registry, streamed, vs download-then-restore, the node cache and a cold boot, "
               "over a loopback shaped to each rate");
  f->footer(
      "Needs root. Builds (or reuses) the reference server's snapshot of each preset under the bench\n"
      "directory (--workdir, default $HOTBOOT_HOME/bench-fetch; every server maps its weights from its\n"
      "weights/ directory, HOTBOOT_WEIGHTS_DIR; every command runs the copies of hotboot and\n"
      "hotboot-server it keeps in its bin/, and a changed server means new snapshots), creates a\n"
      "network namespace hotboot-bench-PID with its\n"
      "loopback up, and runs Debian's docker-registry (127.0.0.1:5000) and nginx (127.0.0.1:8443,\n"
      "static files with Range) inside it, over TLS with a CA the bench makes with openssl (or plain\n"
      "HTTP with --plain-http), and pushes each snapshot (`hotboot push`). Then, for each rate, its\n"
      "loopback is shaped with `tc qdisc replace dev lo root tbf rate R burst max(1 MB, 1 ms of R)\n"
      "latency 50ms`, and every command below runs inside it (`nsenter --net`):\n"
      "  local     hotboot restore FILE, empty weights directory, then again with the weights in place\n"
      "  (a)       curl -o FILE of the whole snapshot from nginx, then hotboot restore FILE\n"
      "  (b)       hotboot restore oci://... with an empty --cache-dir and an emptied weights directory\n"
      "  (c)       the same again, node cache and weights kept\n"
      "  (d)       the server's cold boot (once per preset and repeat: it does not cross the link), and a\n"
      "            curl of its model file at the rate: what a fresh host would download first\n"
      "Times are wall clock from just before the bench starts the process to its ready line (restore)\n"
      "or the first 200 from GET /readyz (cold boot, polled every 10 ms); restores run with\n"
      "--no-latency-check (the canary still runs) and are stopped with SIGTERM once ready. The page\n"
      "cache is not dropped: the registry's disk and a downloaded file are warm, as on a host that\n"
      "just wrote them. transfer = bytes_fetched * 8 / rate; lower bound = max(transfer, local\n"
      "restore); overlap efficiency = lower bound / streamed. Targets: streamed within 15% of the\n"
      "lower bound, cached within 20% of the local restore with weights in place.\n"
      "Progress goes to stderr, commands' output to the run's logs/ (kept with --keep). The namespace\n"
      "and everything in it are removed at the end, on failure and on SIGINT/SIGTERM.");
  f->add_option("--presets", a->presets, "Presets to measure (comma-separated)")
      ->delimiter(',')
      ->check(CLI::IsMember(hotboot::PresetNames()))
      ->capture_default_str();
  f->add_option("--rates", a->rates, "Link rates in Gbit/s (comma-separated)")
      ->delimiter(',')
      ->check(CLI::Range(0.01, 100.0))
      ->capture_default_str();
  f->add_option("--repeat", a->repeat, "Runs of each case; medians are reported")
      ->check(CLI::Range(1, 50))
      ->capture_default_str();
  f->add_option("--workdir", a->workdir, "The bench directory (default $HOTBOOT_HOME/bench-fetch)");
  f->add_flag("--plain-http", a->plain_http, "Registry and file server over plain HTTP instead of TLS");
  f->add_flag("--rebuild", a->rebuild, "Build the snapshots again even when the bench directory has them");
  f->add_flag("--keep", a->keep, "Keep this run's directory (logs, registry storage, certificates)");
  f->add_flag("--keep-going", a->keep_going, "Record a failed case and go on with the next (exit 1 at the end)");
  f->add_flag("--json", a->json_out, "Print a JSON array, one object per preset and rate");
  *run = [a, f]() { return f->parsed() ? RunBenchFetch(*a) : -1; };
}

}  // namespace hotboot::cli
