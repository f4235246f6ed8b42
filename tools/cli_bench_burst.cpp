// `hotboot bench burst`: an autoscale burst onto one fresh host. In one run:
// the snapshot built (or taken) and pushed to Debian's docker-registry in a
// network namespace of the bench's (bench_env.h), then, each case on a fresh
// host (an empty node cache and an emptied weights directory, shared by the
// replicas of that case as on one node): (1) one `hotboot restore oci://...`
// alone; (2) N of them started at once; (3) N cold boots of the same server
// at once. Replicas are processes, each in a cgroup of the bench's job
// (host/job.h), ended with it on every exit path. A benchmark, not a test
// (STYLE.md 9): real processes, real bytes.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_env.h"
#include "cli_common.h"
#include "commands.h"
#include "hotboot/job.h"
#include "hotboot/manifest.h"
#include "hotboot/presets.h"
#include "hotboot/snapshot_file.h"
#include "timeline.h"

namespace hotboot::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using namespace bench;  // NOLINT: the pieces every bench shares (bench_env.h)

constexpr int kFirstPort = 18700;
constexpr double kTargetRatio = 2.0;  // issue 14: N concurrent restores <= 2x the time of one

struct BurstArgs {
  int replicas = 8;
  int one_runs = 3;  // (1) is run this many times; the median counts
  std::string preset = "small";
  std::string snapshot;  // empty: built (or reused) under the bench directory
  std::string workdir;   // default $HOTBOOT_HOME/bench-burst
  double rate_gbit = 0;  // 0: the loopback unshaped
  std::string timeline;  // an SVG of every lane, when set
  bool plain_http = false;
  bool json_out = false;
  bool keep = false;
  bool rebuild = false;
};

// The run (bench_env.h: directories, logs, the namespace with docker-registry),
// and what only this bench has.
struct Ctx : Run {
  Ctx() { next_port = kFirstPort; }

  const BurstArgs* args = nullptr;
  Binaries bin;
  std::string snapshot, model;
  uint64_t snapshot_bytes = 0;
  std::shared_ptr<host::Job> job;

  std::string Ref() const { return "oci://" + ep.registry() + "/hotboot-bench/burst-" + args->preset + ":v1"; }
};

// One replica of a case: its process (the supervising `hotboot restore`, or
// the server booting cold) in a cgroup of its own, and what it reported.
struct Replica {
  std::shared_ptr<host::Cgroup> cgroup;  // null where containment is reduced
  std::unique_ptr<Child> child;
  int port = 0;
  double start_s = 0;  // from the case's start to just before its process started
  double ready_s = 0;  // from the case's start to ready (restore: its result line; cold: /readyz 200)
  double cpu_s = 0;    // its cgroup's CPU time (every process in it) when it was ready
  uint64_t bytes_fetched = 0, bytes_from_cache = 0;
  json timings_ms = json::object();
  std::string error;
};

// Seconds of CPU the cgroup's processes used (cpu.stat usage_usec, kept by
// every cgroup v2 whether or not the cpu controller is enabled); 0 unknown.
double CgroupCpuSeconds(const host::Cgroup* cg) {
  if (!cg) return 0;
  std::ifstream in(cg->path() + "/cpu.stat");
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value) {
    if (key == "usage_usec") return static_cast<double>(value) / 1e6;
  }
  return 0;
}

// ---- processes of a case --------------------------------------------------------

// argv inside the namespace, in a new cgroup of the job.
Status StartContained(Ctx& c, const std::vector<std::string>& argv, const std::string& log, bool capture,
                      Replica* r) {
  HB_ASSIGN_OR_RETURN(r->cgroup, c.job->NewCgroup());
  if (r->cgroup) {
    std::lock_guard<std::mutex> lock(Pending().mu);
    Pending().cgroups.insert(r->cgroup->path());
  }
  HB_ASSIGN_OR_RETURN(r->child, Child::Start(c.ns->Exec(argv), log, capture, r->cgroup ? r->cgroup->procs_fd() : -1));
  return Status::Ok();
}

// Stops every replica (SIGTERM to each at once, then a wait for each), then
// ends its cgroup, with whatever is left in it.
void StopAll(Ctx& c, std::vector<Replica>& rs) {
  for (auto& r : rs) {
    if (r.child && !r.child->Exited()) ::kill(r.child->pid(), SIGTERM);
  }
  for (auto& r : rs) {
    if (r.child) r.child->Stop();
    if (r.cgroup) {
      // A restore that was killed leaves its replica's cgroup inside ours.
      if (Status s = KillCgroupTree(r.cgroup->path(), /*remove_self=*/false); !s.ok()) Note("warning: " + s.message());
      if (Status s = c.job->EndCgroup(*r.cgroup); !s.ok()) Note("warning: " + s.message());
      std::lock_guard<std::mutex> lock(Pending().mu);
      Pending().cgroups.erase(r.cgroup->path());
    }
  }
}

// A case that could not start all its replicas: those started are stopped.
Status Abandon(Ctx& c, std::vector<Replica>& rs, const Status& why) {
  StopAll(c, rs);
  WaitForReplicasGone(c, "abandoned case");
  return why;
}

// A fresh host for a case: the weights directory emptied, a new empty node
// cache (returned).
Result<std::string> FreshHost(Ctx& c, const std::string& tag) {
  HB_RETURN_IF_ERROR(EmptyDir(c.weights));
  const std::string cache = c.scratch + "/cache-" + tag;
  HB_RETURN_IF_ERROR(MakeDirs(cache, 0700));
  return cache;
}

// n replicas of a case started at once onto a fresh host, each with
// argv(port, node cache) in a cgroup of its own and watched by until_ready on
// a thread of its own (which sets ready_s and cpu_s, what it reported, or
// error); all are stopped once the last is ready (or failed). `noun` names a
// replica in an error ("replica", "server").
using ArgvFor = std::function<std::vector<std::string>(int port, const std::string& cache)>;
using UntilReady = std::function<void(Replica& r, Clock::time_point t0)>;

Result<std::vector<Replica>> RunCase(Ctx& c, int n, const std::string& tag, const std::string& noun, bool capture,
                                     const ArgvFor& argv, const UntilReady& until_ready) {
  HB_ASSIGN_OR_RETURN(std::string cache, FreshHost(c, tag));
  std::vector<Replica> rs(static_cast<size_t>(n));
  const auto t0 = Clock::now();
  Status started;
  for (int i = 0; i < n && started.ok(); ++i) {
    Replica& r = rs[static_cast<size_t>(i)];
    r.port = c.next_port++;
    std::vector<std::string> args = argv(r.port, cache);
    r.start_s = SecondsSince(t0);
    started = StartContained(c, args, c.Log(tag + "-" + std::to_string(i + 1)), capture, &r);
  }
  if (!started.ok()) return Abandon(c, rs, started.Prefixed(tag));
  std::vector<std::thread> watchers;
  for (auto& r : rs) {
    if (r.child) watchers.emplace_back([&r, &until_ready, t0] { until_ready(r, t0); });
  }
  for (auto& w : watchers) w.join();
  StopAll(c, rs);
  WaitForReplicasGone(c, tag);
  for (size_t i = 0; i < rs.size(); ++i) {
    if (!rs[i].error.empty()) {
      return FailedPrecondition(tag + ", " + noun + " " + std::to_string(i + 1) + ": " + rs[i].error);
    }
  }
  return rs;
}

// `hotboot restore oci://...` x n at once onto a fresh host: each timed from
// the case's start to its result line (printed once its replica is verified
// ready).
Result<std::vector<Replica>> RunRestores(Ctx& c, int n, const std::string& tag) {
  auto argv = [&c](int port, const std::string& cache) {
    std::vector<std::string> extra = {"--cache-dir", cache};
    for (const auto& o : c.ep.hotboot_remote()) extra.push_back(o);
    return RestoreArgv(c.bin.hotboot, c.Ref(), port, extra);
  };
  auto until_ready = [](Replica& r, Clock::time_point t0) {
    auto line = r.child->ReadLine(kRestoreTimeout);
    r.ready_s = SecondsSince(t0);
    r.cpu_s = CgroupCpuSeconds(r.cgroup.get());
    if (!line.ok()) {
      r.error = line.status().message();
      return;
    }
    auto report = ParseRestoreLine(*line, r.child->log());
    if (!report.ok()) {
      r.error = report.status().message();
      return;
    }
    r.timings_ms = report->timings_ms;
    r.bytes_fetched = report->bytes_fetched;
    r.bytes_from_cache = report->bytes_from_cache;
  };
  return RunCase(c, n, tag, "replica", /*capture=*/true, argv, until_ready);
}

// (1): one restore alone, `runs` times, each on a fresh host (a single
// sample on a shared machine is noise): the median run, first; then the others.
Result<std::vector<Replica>> RunAlone(Ctx& c, int runs) {
  std::vector<Replica> all;
  for (int i = 0; i < runs; ++i) {
    HB_ASSIGN_OR_RETURN(auto r, RunRestores(c, 1, "one-" + std::to_string(i + 1)));
    all.push_back(std::move(r[0]));
  }
  std::sort(all.begin(), all.end(), [](const Replica& a, const Replica& b) { return a.ready_s < b.ready_s; });
  std::rotate(all.begin(), all.begin() + static_cast<long>((all.size() - 1) / 2),
              all.begin() + static_cast<long>((all.size() - 1) / 2) + 1);
  return all;
}

// The reference server on the same model x n at once, cold, onto a fresh
// host (its weights directory emptied: each server converts the model into
// it, as a new node would): each timed from the case's start to its first
// 200 from GET /readyz (polled every 10 ms).
Result<std::vector<Replica>> RunColdBoots(Ctx& c, int n, const std::string& tag) {
  auto argv = [&c](int port, const std::string& /*cache*/) {
    return std::vector<std::string>{c.bin.server, "--model", c.model, "--port", std::to_string(port)};
  };
  auto until_ready = [&c](Replica& r, Clock::time_point t0) {
    auto ready = WaitReadyz(*c.ns, r.port, *r.child, t0);
    if (!ready.ok()) {
      r.error = ready.status().message();
      return;
    }
    r.ready_s = *ready;
    r.cpu_s = CgroupCpuSeconds(r.cgroup.get());
  };
  return RunCase(c, n, tag, "server", /*capture=*/false, argv, until_ready);
}

// ---- setup ------------------------------------------------------------------------

// The snapshot (--snapshot, or the preset's, built under the bench
// directory) and the model the cold boots load. Every build, server and
// restore maps the weights from the snapshot's weights directory, which the
// bench empties before each case: one of its own, never another's.
Status PrepareSnapshot(Ctx& c) {
  const BurstArgs& a = *c.args;
  if (!a.snapshot.empty()) {
    auto reader = snapfile::SnapshotReader::Open(a.snapshot);
    if (!reader.ok()) return reader.status().Prefixed(a.snapshot);
    auto m = ParseManifest((*reader)->manifest_json());
    if (!m.ok()) return m.status().Prefixed(a.snapshot);
    const fs::path dir = fs::path(m->process.weights_dir).lexically_normal();
    const std::string home = fs::path(c.home).lexically_normal().string() + "/";
    if (!m->process.weights_dir.empty() && dir.string().rfind(home, 0) != 0) {
      return FailedPrecondition(a.snapshot + " maps its weights from " + m->process.weights_dir +
                                ", outside the bench directory " + c.home + ": the bench empties that directory " +
                                "before every case, so it takes only snapshots built with HOTBOOT_WEIGHTS_DIR=" +
                                c.weights + " (or leave out --snapshot and let it build one)");
    }
    if (!m->process.weights_dir.empty()) c.weights = dir.string();
    c.snapshot = fs::absolute(a.snapshot).string();
  }
  HB_RETURN_IF_ERROR(MakeDirs(c.weights));
  if (::setenv("HOTBOOT_WEIGHTS_DIR", c.weights.c_str(), 1) != 0) return ErrnoError("setenv", errno);
  HB_ASSIGN_OR_RETURN(c.model, EnsureModel("", a.preset));
  if (c.snapshot.empty()) {
    HB_ASSIGN_OR_RETURN(c.snapshot,
                        EnsureSnapshot(c.bin, c.home, c.weights, a.preset, a.rebuild, c.Log("build-" + a.preset)));
  }
  HB_ASSIGN_OR_RETURN(c.snapshot_bytes, FileSize(c.snapshot));
  return Status::Ok();
}

// The namespace, the registry in it (bench_env.h; and the link shaped, when
// asked), the snapshot pushed.
Result<Servers> StartRegistryAndPush(Ctx& c, const std::string& ns_name) {
  HB_ASSIGN_OR_RETURN(Servers s, StartServers(c, ns_name, c.args->plain_http));
  if (c.args->rate_gbit > 0) HB_RETURN_IF_ERROR(c.ns->Shape(c.args->rate_gbit).Prefixed("tc"));
  Note("loopback " + (c.args->rate_gbit > 0 ? "shaped to " + Fixed(c.args->rate_gbit, 1) + " Gbit/s" : "unshaped"));
  auto pushed = Push(c, c.bin.hotboot, c.snapshot, c.Ref(), c.Log("push"));
  if (!pushed.ok()) return pushed.status().Prefixed("push");
  Note("pushed " + c.snapshot + " to " + c.Ref() + " in " + Fixed(pushed->seconds) + " s");
  return s;
}

// ---- results ----------------------------------------------------------------------

struct Spread {
  double first = 0, p50 = 0, p95 = 0, last = 0, cpu = 0;
  uint64_t fetched = 0;
};

Spread SpreadOf(const std::vector<Replica>& rs) {
  std::vector<double> t;
  Spread s;
  for (const auto& r : rs) {
    t.push_back(r.ready_s);
    s.cpu += r.cpu_s;
    s.fetched += r.bytes_fetched;
  }
  if (t.empty()) return s;
  s.first = *std::min_element(t.begin(), t.end());
  s.last = *std::max_element(t.begin(), t.end());
  s.p50 = Quantile(t, 0.5);
  s.p95 = Quantile(t, 0.95);
  return s;
}

ojson ReplicaJson(const Replica& r, bool restore) {
  ojson j = {{"port", r.port}, {"start_s", r.start_s}, {"ready_s", r.ready_s}, {"cpu_s", r.cpu_s}};
  if (restore) {
    j["bytes_fetched"] = r.bytes_fetched;
    j["bytes_from_cache"] = r.bytes_from_cache;
    j["timings_ms"] = r.timings_ms;
  }
  return j;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one.empty() ? "unknown" : one + " " + five + " " + fifteen;
}

ojson ResultJson(const Ctx& c, const std::vector<Replica>& ones, const std::vector<Replica>& burst,
                 const std::vector<Replica>& cold, const std::string& load_before) {
  const Replica& one = ones[0];  // the median run
  ojson one_runs = ojson::array();
  for (const auto& r : ones) one_runs.push_back(r.ready_s);
  const Spread b = SpreadOf(burst), k = SpreadOf(cold);
  const double ratio = one.ready_s > 0 ? b.last / one.ready_s : 0;
  ojson per = ojson::array(), per_cold = ojson::array();
  for (const auto& r : burst) per.push_back(ReplicaJson(r, true));
  for (const auto& r : cold) per_cold.push_back(ReplicaJson(r, false));
  return {{"replicas", burst.size()},
          {"preset", c.args->preset},
          {"snapshot", c.snapshot},
          {"snapshot_bytes", c.snapshot_bytes},
          {"replicas_are", "processes: hotboot restore (and its restored replica) / hotboot-server, each in a cgroup "
                           "of the bench's, in one network namespace; not containers"},
          {"transport", c.args->plain_http ? "http" : "https"},
          {"rate_gbit", c.args->rate_gbit > 0 ? json(c.args->rate_gbit) : json(nullptr)},
          {"cores", std::thread::hardware_concurrency()},
          {"loadavg_before", load_before},
          {"one_s", one.ready_s},
          {"one_runs_s", one_runs},
          {"first_s", b.first},
          {"p50_s", b.p50},
          {"p95_s", b.p95},
          {"last_s", b.last},
          {"ratio_last_one", ratio},
          {"target_ratio", kTargetRatio},
          {"target_met", ratio > 0 && ratio <= kTargetRatio},
          {"cold_first_s", k.first},
          {"cold_p50_s", k.p50},
          {"cold_p95_s", k.p95},
          {"cold_last_s", k.last},
          {"one_bytes_fetched", one.bytes_fetched},
          {"bytes_fetched_total", b.fetched},
          {"bytes_fetched_in_snapshots", c.snapshot_bytes ? static_cast<double>(b.fetched) / c.snapshot_bytes : 0.0},
          {"one_cpu_s", one.cpu_s},
          {"cpu_s_total", b.cpu},
          // No schedule finishes the burst sooner than its CPU seconds spread
          // over every core: on a small host that, not the download, bounds it.
          {"cpu_floor_s", b.cpu / std::max(1u, std::thread::hardware_concurrency())},
          {"cpu_floor_ratio", one.ready_s > 0 ? b.cpu / std::max(1u, std::thread::hardware_concurrency()) / one.ready_s : 0.0},
          {"cold_cpu_s_total", k.cpu},
          {"one", ReplicaJson(one, true)},
          {"burst", per},
          {"cold", per_cold}};
}

void PrintTable(FILE* out, const ojson& j, const std::string& netns) {
  const int n = j["replicas"].get<int>();
  std::fprintf(out,
               "hotboot bench burst: preset %s, %d replicas onto one fresh host (an empty node cache and weights\n"
               "directory per case, shared by its replicas); docker-registry over %s in network namespace %s,\n"
               "loopback %s; replicas are processes, not containers; %u cores, load average %s before.\n"
               "Seconds from the case's start to ready (restore: verified; cold: GET /readyz 200).\n\n",
               j["preset"].get<std::string>().c_str(), n, j["transport"].get<std::string>() == "https" ? "HTTPS" : "HTTP",
               netns.c_str(),
               j["rate_gbit"].is_null() ? "unshaped" : ("shaped to " + Fixed(j["rate_gbit"].get<double>(), 1) + " Gbit/s").c_str(),
               j["cores"].get<unsigned>(), j["loadavg_before"].get<std::string>().c_str());
  std::fprintf(out, "%-24s %7s %7s %7s %7s %9s %10s\n", "case", "first", "p50", "p95", "last", "cpu_s", "fetched");
  const std::string one = Fixed(j["one_s"].get<double>());
  const size_t runs = j["one_runs_s"].size();
  const std::string one_label = runs > 1 ? "1 alone (median of " + std::to_string(runs) + ")" : "1 restore alone";
  std::fprintf(out, "%-24s %7s %7s %7s %7s %9s %10s\n", one_label.c_str(), one.c_str(), one.c_str(), one.c_str(),
               one.c_str(), Fixed(j["one_cpu_s"].get<double>()).c_str(),
               HumanBytes(j["one_bytes_fetched"].get<uint64_t>()).c_str());
  std::fprintf(out, "%-24s %7s %7s %7s %7s %9s %10s\n", (std::to_string(n) + " restores at once").c_str(),
               Fixed(j["first_s"].get<double>()).c_str(), Fixed(j["p50_s"].get<double>()).c_str(),
               Fixed(j["p95_s"].get<double>()).c_str(), Fixed(j["last_s"].get<double>()).c_str(),
               Fixed(j["cpu_s_total"].get<double>()).c_str(), HumanBytes(j["bytes_fetched_total"].get<uint64_t>()).c_str());
  std::fprintf(out, "%-24s %7s %7s %7s %7s %9s %10s\n", (std::to_string(n) + " cold boots at once").c_str(),
               Fixed(j["cold_first_s"].get<double>()).c_str(), Fixed(j["cold_p50_s"].get<double>()).c_str(),
               Fixed(j["cold_p95_s"].get<double>()).c_str(), Fixed(j["cold_last_s"].get<double>()).c_str(),
               Fixed(j["cold_cpu_s_total"].get<double>()).c_str(), "-");
  std::fprintf(out, "\nlast / one = %s (target <= %sx): %s\n", Fixed(j["ratio_last_one"].get<double>()).c_str(),
               Fixed(kTargetRatio, 0).c_str(), j["target_met"].get<bool>() ? "met" : "NOT met");
  std::fprintf(out, "cpu floor: %s s = the burst's %s CPU seconds over %u cores; no schedule beats it (%sx one)\n",
               Fixed(j["cpu_floor_s"].get<double>()).c_str(), Fixed(j["cpu_s_total"].get<double>()).c_str(),
               j["cores"].get<unsigned>(), Fixed(j["cpu_floor_ratio"].get<double>()).c_str());
  std::fprintf(out, "network: %s fetched by the %d restores together, %s snapshot(s) of %s\n",
               HumanBytes(j["bytes_fetched_total"].get<uint64_t>()).c_str(), n,
               Fixed(j["bytes_fetched_in_snapshots"].get<double>()).c_str(),
               HumanBytes(j["snapshot_bytes"].get<uint64_t>()).c_str());
  std::fprintf(out, "cpu_s: CPU seconds of every process of the case until each was ready (its cgroup's cpu.stat)\n");
}

// ---- the picture ------------------------------------------------------------------

// A restore's phases from its --json timings (timeline.h RestoreLane: the
// steps in the order restore runs them, what ran beside them on a second
// track), offset by the moment its process started, then what came after its
// own report until the bench saw it ready.
Lane BurstRestoreLane(const std::string& label, const Replica& r) {
  std::map<std::string, double> timings;
  for (const auto& [k, v] : r.timings_ms.items()) {
    if (v.is_number()) timings[k] = v.get<double>();
  }
  Lane lane = RestoreLane(label, timings);
  for (auto& p : lane.phases) p.start_s += r.start_s, p.end_s += r.start_s;
  const double reported = r.start_s + lane.total_s;
  if (r.ready_s > reported) lane.phases.push_back({"report", reported, r.ready_s});
  lane.total_s = std::max(r.ready_s, reported);
  return lane;
}

Lane ColdLane(const std::string& label, const Replica& r) {
  Lane lane;
  lane.label = label;
  lane.phases.push_back({"cold boot", r.start_s, r.ready_s});
  lane.total_s = r.ready_s;
  return lane;
}

Status WriteTimeline(const std::string& path, const ojson& j, const Replica& one, const std::vector<Replica>& burst,
                     const std::vector<Replica>& cold) {
  std::vector<Lane> lanes;
  lanes.push_back(BurstRestoreLane("restore alone", one));
  for (size_t i = 0; i < burst.size(); ++i) lanes.push_back(BurstRestoreLane("burst restore " + std::to_string(i + 1), burst[i]));
  for (size_t i = 0; i < cold.size(); ++i) lanes.push_back(ColdLane("cold boot " + std::to_string(i + 1), cold[i]));
  TimelineOptions o;
  o.title = "hotboot bench burst: " + std::to_string(burst.size()) + " replicas onto one fresh host";
  o.subtitle = "preset " + j["preset"].get<std::string>() + "; last/one = " + Fixed(j["ratio_last_one"].get<double>()) +
               " (target <= 2x); each lane from its case's start";
  return WriteTimelineFile(path, RenderTimelineSvg(lanes, o));
}

// ---- the run ----------------------------------------------------------------------

// With --json a failure is a JSON object on stdout too.
int FailedJson(const Status& s, bool json_out) {
  while (Pending().stopping.load()) ::sleep(1);
  return FailJson(s, json_out);
}

int RunBenchBurst(const BurstArgs& a) {
  auto Failed = [&a](const Status& s) { return FailedJson(s, a.json_out); };
  if (Status s = Preflight("bench burst", "network namespaces, CRIU, cgroups",
                           {"ip", "tc", "curl", "docker-registry", "openssl"});
      !s.ok()) {
    return Failed(s);
  }
  const std::string load_before = LoadAverage();
  Ctx c;
  c.args = &a;
  if (Status s = PrepareRunDirs(c, a.workdir, "bench-burst"); !s.ok()) return Failed(s);
  RunCleanup cleanup(c, a.keep, /*empty_weights=*/true, "logs, registry storage, node caches");
  auto job = host::Job::Start({.kind = "bench"});
  if (!job.ok()) return Failed(job.status().Prefixed("job"));
  c.job = *job;
  if (!c.job->contained()) Note("warning: " + c.job->warning());
  auto bin = PinBinaries(c.home);
  if (!bin.ok()) return Failed(bin.status().Prefixed("copying the executables"));
  c.bin = *bin;
  if (Status s = PrepareSnapshot(c); !s.ok()) return Failed(s);
  if (!a.keep) {
    std::lock_guard<std::mutex> lock(Pending().mu);
    Pending().emptied = c.weights;
  }
  const std::string ns_name = "hotboot-burst-" + std::to_string(::getpid());
  auto servers = StartRegistryAndPush(c, ns_name);
  if (!servers.ok()) return Failed(servers.status());

  Note("(1) one restore alone, fresh host, " + std::to_string(a.one_runs) + " time(s); the median counts");
  auto one = RunAlone(c, a.one_runs);
  if (!one.ok()) return Failed(one.status());
  Note("  ready in " + Fixed((*one)[0].ready_s) + " s (" + HumanBytes((*one)[0].bytes_fetched) + " fetched)");
  Note("(2) " + std::to_string(a.replicas) + " restores at once, fresh host");
  auto burst = RunRestores(c, a.replicas, "burst");
  if (!burst.ok()) return Failed(burst.status());
  Note("  last ready in " + Fixed(SpreadOf(*burst).last) + " s");
  Note("(3) " + std::to_string(a.replicas) + " cold boots at once, fresh host");
  auto cold = RunColdBoots(c, a.replicas, "cold");
  if (!cold.ok()) return Failed(cold.status());
  Note("  last ready in " + Fixed(SpreadOf(*cold).last) + " s");

  ojson j = ResultJson(c, *one, *burst, *cold, load_before);
  j["netns"] = ns_name;  // removed by the time this is printed
  if (!a.timeline.empty()) {
    if (Status s = WriteTimeline(a.timeline, j, (*one)[0], *burst, *cold); !s.ok()) return Failed(s);
    Note("timeline: " + a.timeline);
  }
  if (a.json_out) {
    std::printf("%s\n", j.dump(2).c_str());
    PrintTable(stderr, j, ns_name);  // for the person watching; stdout stays JSON
  } else {
    PrintTable(stdout, j, ns_name);
  }
  return kExitOk;
}

}  // namespace

void AddBenchBurst(CLI::App& bench, Runner* run) {
  auto a = std::make_shared<BurstArgs>();
  CLI::App* b = bench.add_subcommand(
      "burst", "An autoscale burst: N restores from a registry at once onto one fresh host, against one alone "
               "and N cold boots");
  b->footer(
      "Needs root. Builds (or reuses) the reference server's snapshot of the preset under the bench\n"
      "directory (--workdir, default $HOTBOOT_HOME/bench-burst; every command runs the copies of\n"
      "hotboot and hotboot-server in its bin/, and every server maps its weights from its weights/,\n"
      "HOTBOOT_WEIGHTS_DIR), creates a network namespace hotboot-burst-PID with its loopback up\n"
      "(shaped with tc tbf to --rate when given), runs Debian's docker-registry (127.0.0.1:5000,\n"
      "TLS with a CA the bench makes, or --plain-http) inside it and pushes the snapshot. Then, each\n"
      "case on a fresh host (the weights directory emptied, a new empty node cache, both shared by\n"
      "the case's replicas as on one node):\n"
      "  (1) one    hotboot restore oci://... --no-latency-check alone (--one-runs times, median)\n"
      "  (2) burst  N of them started at once\n"
      "  (3) cold   N cold boots of hotboot-server on the preset's model at once, each its own port\n"
      "Times are wall clock from the case's start (just before its first process) to the restore's\n"
      "result line (printed once its replica is verified ready; the canary runs, its latency bound\n"
      "is not held on a shared host) or the first 200 from GET /readyz (polled every 10 ms). All of\n"
      "a case's replicas run until the last is ready, then are stopped. Replicas are processes, each\n"
      "in a cgroup of the bench's job (host/job.h), in the namespace: not containers. Target: last /\n"
      "one <= 2 (one download, shared). Everything it starts is stopped and removed at the end, on\n"
      "failure and on SIGINT/SIGTERM (the weights directory is emptied; snapshots and bin/ kept).");
  b->add_option("--replicas", a->replicas, "Replicas started at once")->check(CLI::Range(1, 64))->capture_default_str();
  b->add_option("--one-runs", a->one_runs, "Runs of the single restore (1); the median counts")
      ->check(CLI::Range(1, 20))
      ->capture_default_str();
  b->add_option("--preset", a->preset, "Model preset (the snapshot's and the cold boots')")
      ->check(CLI::IsMember(hotboot::PresetNames()))
      ->capture_default_str();
  b->add_option("--snapshot", a->snapshot,
                "A snapshot to push instead of the preset's (its weights directory must be in the bench directory)")
      ->check(CLI::ExistingFile);
  b->add_option("--rate", a->rate_gbit, "Shape the namespace's loopback to this many Gbit/s (default: unshaped)")
      ->check(CLI::Range(0.01, 100.0));
  b->add_option("--workdir", a->workdir, "The bench directory (default $HOTBOOT_HOME/bench-burst)");
  b->add_option("--timeline", a->timeline, "Draw every replica's restore and cold boot as lanes into this SVG file");
  b->add_flag("--plain-http", a->plain_http, "Registry over plain HTTP instead of TLS");
  b->add_flag("--rebuild", a->rebuild, "Build the snapshot again even when the bench directory has one");
  b->add_flag("--keep", a->keep, "Keep this run's directory (logs, registry storage, node caches)");
  b->add_flag("--json", a->json_out, "Print the result as a JSON object (the table goes to stderr)");
  *run = [a, b]() { return b->parsed() ? RunBenchBurst(*a) : -1; };
}

}  // namespace hotboot::cli
